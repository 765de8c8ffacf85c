"""
Build a split of the synthetic corpus on disk.

``<split>.npz`` holds float32 ``mix`` and ``clean``; ``<split>.json`` is the recipe that says
exactly how every example was made.

Examples are independent (see ``mixtures``), so they are built by a process pool and the result
does not depend on the number of workers. TTS output is cached, so a rebuild mostly mixes.
``python3 -m kb_ros.data.corpus --help`` builds one from the command line.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import multiprocessing
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

import kb_ros
from kb_ros.data import human, mixtures, rooms, text, tts

RECIPE_VERSION = 1


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | int | None]:
    """Everything the audio depends on: engines, libraries, generator versions."""
    found: dict[str, str | int | None] = dict(tts.tool_versions())
    for package in ("numpy", "scipy", "pyroomacoustics"):
        found[package] = _package_version(package)
    found.update(kb_ros=kb_ros.__version__, text_version=text.TEXT_VERSION,
                 tts_version=tts.TTS_VERSION, recipe_version=RECIPE_VERSION)
    return found


def _progress(items: Iterable, total: int, label: str) -> Iterator:
    """Show progress with tqdm when installed, else a plain line to stderr every 5 %."""
    try:
        from tqdm import tqdm
    except ImportError:
        start, step = time.monotonic(), max(1, total // 20)
        for done, item in enumerate(items, 1):
            yield item
            if done % step == 0 or done == total:
                rate = done / max(time.monotonic() - start, 1e-9)
                print(f"{label}: {done}/{total} ({rate:.2f}/s)", file=sys.stderr, flush=True)
        return
    yield from tqdm(items, total=total, desc=label)


def build_corpus(out_dir: str | Path, split: str, n_examples: int, seconds: float, seed: int,
                 task: str = "se", reverb_prob: float = 0.0, workers: int = 2,
                 cache_dir: Path | None = None) -> Path:
    """
    Write ``out_dir/<split>.npz`` and ``out_dir/<split>.json``; returns the npz path.

    ``mix`` is ``[N, L]``; ``clean`` is ``[N, L]`` for task "se" and ``[N, 2, L]`` for "ss".
    Examples with the same ``(seed, split, index)`` are identical whatever ``n_examples``.
    """
    if split not in mixtures.SPLITS:
        raise ValueError(f"split must be one of {mixtures.SPLITS}, got {split!r}")
    if task not in mixtures.TASKS:
        raise ValueError(f"task must be one of {mixtures.TASKS}, got {task!r}")
    n = int(round(seconds * tts.SAMPLE_RATE))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mix = np.zeros((n_examples, n), np.float32)
    clean = np.zeros((n_examples, n) if task == "se" else (n_examples, 2, n), np.float32)
    metas: list[dict] = []
    build = functools.partial(mixtures.make_example, split, seed=seed, n=n, task=task,
                              reverb_prob=reverb_prob, cache_dir=cache_dir)
    start = time.monotonic()
    label = f"{split} ({task})"
    if workers > 1 and n_examples > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for i, ex in enumerate(_progress(pool.imap(build, range(n_examples)),
                                             n_examples, label)):
                mix[i], clean[i] = ex.mix, ex.clean
                metas.append(ex.meta)
    else:
        for i in _progress(range(n_examples), n_examples, label):
            ex = build(i)
            mix[i], clean[i] = ex.mix, ex.clean
            metas.append(ex.meta)
    elapsed = time.monotonic() - start

    npz_path = out_dir / f"{split}.npz"
    np.savez(npz_path, mix=mix, clean=clean)
    recipe = {
        "split": split, "task": task, "n_examples": n_examples, "seconds": seconds,
        "samples": n, "sample_rate": tts.SAMPLE_RATE, "seed": seed, "reverb_prob": reverb_prob,
        "reverb_available": rooms.available(), "build_seconds": round(elapsed, 1),
        "workers": workers, "versions": versions(),
        "levels": {"snr_db": mixtures.SNR_RANGE_DB[task], "level_dbfs": mixtures.LEVEL_RANGE_DBFS,
                   "sir_db": mixtures.SIR_RANGE_DB if task == "ss" else None},
        "split_voices": [voice.name for voice in tts.voices(mixtures.tts_split(split))],
        "examples": metas,
    }
    if split == mixtures.HUMAN_SPLIT:
        recipe["human_clips"] = [str(path) for path in human.clip_paths()]
    (out_dir / f"{split}.json").write_text(json.dumps(recipe, indent=1))
    return npz_path


def split_contents(recipe: dict) -> tuple[set[str], set[str]]:
    """Voices and sentence texts a built split uses: its talkers and babble talkers alike."""
    voices: set[str] = set()
    texts: set[str] = set()
    split = recipe["split"]
    for example in recipe["examples"]:
        voices.update(example["voices"])
        texts.update(text.sentence(split, i) for ids in example["text_ids"] for i in ids)
        for talker in example["noise"].get("babble", []):
            voices.add(talker["voice"])
            texts.add(text.sentence(split, talker["text_id"]))
    return voices, texts


def check_disjoint(data_dir: str | Path, splits: Iterable[str] = text.SPLITS) -> list[str]:
    """
    Check that the built splits in ``data_dir`` share no voice and no sentence.

    Returns the splits checked; raises ``ValueError`` naming what two splits share.
    """
    contents = {}
    for split in splits:
        path = Path(data_dir) / f"{split}.json"
        if path.exists():
            contents[split] = split_contents(json.loads(path.read_text()))
    names = sorted(contents)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            voices = contents[first][0] & contents[second][0]
            texts = contents[first][1] & contents[second][1]
            if voices or texts:
                raise ValueError(f"{data_dir}: {first} and {second} share {len(voices)} voices "
                                 f"({sorted(voices)[:3]}) and {len(texts)} sentences")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--split", choices=mixtures.SPLITS, required=True)
    parser.add_argument("-n", "--examples", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=mixtures.TASKS, default="se")
    parser.add_argument("--reverb-prob", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="TTS cache (default $KB_ROS_TTS_CACHE or ~/.cache/kb_ros/tts)")
    args = parser.parse_args(argv)
    path = build_corpus(args.out, args.split, args.examples, args.seconds, args.seed, args.task,
                        args.reverb_prob, args.workers, args.cache_dir)
    print(path)


if __name__ == "__main__":
    main()
