"""
``kb-ros eval --table`` and ``--complexity``: the results document, generated, never typed.

Every quality row runs the real chunk pipeline (``run_pipeline``: large model -> emulated link ->
HintMatcher -> small model in its ChunkEngine) over the held-out test split and scores SI-SNRi,
PESQ-WB and STOI. The large model runs once per example as a full-sequence forward, which
equals streaming for these causal models, and is served to the pipeline chunk by chunk. Rows
are cached by checkpoint id, test data and hint age, so a rerun evaluates only what changed; a
row whose checkpoint does not exist yet says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from kb_ros.audio.clock import CHUNK_MS
from kb_ros.cli.evaluate import ExampleTask, evaluate_examples, full_sequence_outputs
from kb_ros.data.corpus import check_disjoint
from kb_ros.data.mixtures import HUMAN_SPLIT
from kb_ros.models.checkpoint import load_checkpoint
from kb_ros.models.complexity import count_macs, time_streaming_step
from kb_ros.models.config import PRESETS
from kb_ros.models.model import StreamingModel
from kb_ros.models.shipped import resolve_model_path

EVAL_VERSION = 1  # bump when scoring or the pipeline changes: invalidates cached rows
BOOSTED_AGES = (0, 1, 2, 4, 6, 8)
GC_AGES = (0, 6)  # kb_gc: the paper's D = 0 bound and the acceptance age; each row costs minutes
ACCEPTANCE_AGE = 6
METRICS = ("si_snri_db", "pesq_wb", "stoi")
METRIC_TITLES = {"si_snri_db": "SI-SNRi (dB)", "pesq_wb": "PESQ-WB", "stoi": "STOI"}
SHARD_EXAMPLES = 24  # examples per pool task: balances the workers, amortises model loading

# The paper (Srinivas et al., Interspeech 2024), from REFERENCE.md: SS models' params, MACs per
# 8 ms chunk, and the KB gain over a same-size model without KB at D = 6 chunks.
PAPER_COMPLEXITY = {"small": (23_960, 2.18e6), "medium": (37_382, 3.45e6),
                    "large": (518_771, 38.7e6), "kb": (36_536, 2.68e6)}
PAPER_GAIN_DB = {"se": 0.23, "ss": 2.31}


@dataclass(frozen=True)
class Row:
    """One line of the quality table: a model role, with hints of one age or none."""

    label: str
    role: str | None  # None: the unprocessed mixture
    age: int | None = None  # hint age in chunks; None: the model runs without hints


def table_rows() -> list[Row]:
    """Return the rows of the quality table, in order."""
    rows = [Row("mixture (unprocessed)", None), Row("small", "small"),
            Row("medium: same-size vanilla", "medium"), Row("small_gc: GroupComm", "small_gc"),
            Row("large (hint producer)", "large")]
    for role, ages in (("kb", BOOSTED_AGES), ("kb_gc", GC_AGES)):
        rows += [Row(f"{role}, hint age {age}", role, age) for age in ages]
        rows.append(Row(f"{role}, no hint", role))
    rows.append(Row("kb_d4: fixed D = 4, age 4", "kb_d4", 4))
    return rows


@dataclass(frozen=True)
class Checkpoint:
    """A model the table evaluates: where it is and its manifest."""

    name: str
    path: Path
    manifest: dict[str, Any]

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def age_range(self) -> tuple[int, int] | None:
        ages = self.manifest.get("age_range")
        return tuple(ages) if ages else None


@dataclass
class RowResult:
    """Mean scores of a row over the test examples, or why it was not evaluated."""

    row: Row
    checkpoint: Checkpoint | None = None
    status: str = "ok"
    means: dict[str, float | None] = field(default_factory=dict)
    hint_hit_rate: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class ResultsOptions:
    """What ``kb-ros eval --table`` evaluates and where it writes."""

    data_dir: Path
    out: Path
    examples: int | None = None  # the first N test examples; None = all
    workers: int = 2
    models: dict[str, str] = field(default_factory=dict)  # role -> shipped name or path
    cache_dir: Path | None = None  # default <data_dir>/eval_cache
    timing_steps: int = 1000  # 0: count params and MACs only
    command: str = ""


def parse_model_overrides(items: list[str]) -> dict[str, str]:
    """``ROLE=MODEL`` pairs (``--model kb=checkpoints/kb/best``) as a dict."""
    pairs = [item.split("=", 1) for item in items]
    if any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise ValueError(f"--model takes ROLE=MODEL, got {items}")
    return dict(pairs)


def resolve_checkpoint(name_or_path: str) -> Checkpoint | None:
    """Find a shipped model name or checkpoint path; None when there is none (yet)."""
    try:
        path = resolve_model_path(name_or_path)
    except FileNotFoundError:
        return None
    return Checkpoint(name_or_path, path, load_checkpoint(path)[1])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TestSet:
    """A held-out split a table is computed on: its arrays' file, recipe and identity."""

    def __init__(self, data_dir: Path, examples: int | None, split: str = "test") -> None:
        self.path = data_dir / f"{split}.npz"
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} missing: build it with kb-ros data --out "
                                    f"{data_dir} --train 0 --val 0 --{split} 96")
        self.split = split
        self.recipe = json.loads((data_dir / f"{split}.json").read_text())
        self.total = self.recipe["n_examples"]
        self.indices = tuple(range(min(examples or self.total, self.total)))
        self.sha256 = _sha256(self.path)
        self.task = self.recipe["task"]
        self.disjoint_from = ([s for s in check_disjoint(data_dir) if s != split]
                              if split == "test" else [])
        self.train_versions = self._versions(data_dir / "train.json")

    @staticmethod
    def _versions(path: Path) -> dict | None:
        return json.loads(path.read_text())["versions"] if path.exists() else None

    def mixtures(self) -> np.ndarray:
        with np.load(self.path) as data:
            return data["mix"][list(self.indices)]


class RowEvaluator:
    """Evaluates rows, with a cache of finished rows and of the large model's outputs."""

    def __init__(self, test: TestSet, options: ResultsOptions) -> None:
        self.test, self.options = test, options
        self.cache_dir = options.cache_dir or options.data_dir / "eval_cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def _key(self, row: Row, model: Checkpoint | None, producer: Checkpoint | None) -> str:
        key = json.dumps([EVAL_VERSION, self.test.sha256, len(self.test.indices),
                          row.role is None, model and model.model_id,
                          producer and producer.model_id, row.age])
        return hashlib.sha256(key.encode()).hexdigest()[:20]

    def large_outputs(self, large: Checkpoint) -> Path:
        """Return the large model's outputs on every test example, computed once per model."""
        name = f"outputs_{large.model_id}_{self.test.sha256[:12]}_{len(self.test.indices)}.npy"
        path = self.cache_dir / name
        if not path.exists():
            model, _ = load_checkpoint(large.path)
            torch.set_num_threads(1)  # a second thread mostly spins on a shared 2-core box
            start = time.monotonic()
            outputs = full_sequence_outputs(model, self.test.mixtures())
            np.save(path.with_suffix(".tmp.npy"), outputs)
            os.replace(path.with_suffix(".tmp.npy"), path)
            print(f"large model outputs: {time.monotonic() - start:.0f} s", file=sys.stderr)
        return path

    def evaluate(self, jobs: list[tuple[RowResult, Checkpoint | None]]) -> str:
        """
        Fill in each ``RowResult``, ``Checkpoint`` = its hint producer (None: no hints).

        Returns a line that says what this run computed and how long it took.
        """
        start = time.monotonic()
        pending: dict[int, list[ExampleTask]] = {}
        for number, (result, producer) in enumerate(jobs):
            cached = self._cache_path(result, producer)
            if cached.exists():
                self._fill(result, json.loads(cached.read_text()))
            else:
                pending[number] = self._tasks(result, producer)
        for number, scores in self._run(pending):  # cached as each row finishes
            result, producer = jobs[number]
            self._fill(result, scores)
            self._cache_path(result, producer).write_text(json.dumps(scores))
        workers = self.options.workers
        return (f"rows evaluated by this run: {len(pending)} ({workers} worker "
                f"process{'es' * (workers != 1)}, {(time.monotonic() - start) / 60:.0f} min); "
                f"read from the cache `{self.cache_dir}`: {len(jobs) - len(pending)}")

    def _cache_path(self, result: RowResult, producer: Checkpoint | None) -> Path:
        return self.cache_dir / f"row_{self._key(result.row, result.checkpoint, producer)}.json"

    def _tasks(self, result: RowResult, producer: Checkpoint | None) -> list[ExampleTask]:
        """Shards of the test set for one row: mixture, large outputs, or the pipeline."""
        model = outputs = None
        checkpoint = result.checkpoint
        if checkpoint is not None and checkpoint.manifest["config"]["kind"] == "large":
            outputs = self.large_outputs(checkpoint)  # scored as they are
        elif checkpoint is not None:
            model = checkpoint.path
            outputs = self.large_outputs(producer) if producer is not None else None
        return [ExampleTask(self.test.path, self.test.indices[i:i + SHARD_EXAMPLES], model,
                            outputs, result.row.age, producer and producer.model_id)
                for i in range(0, len(self.test.indices), SHARD_EXAMPLES)]

    def _run(self, pending: dict[int, list[ExampleTask]]) -> Iterator[tuple[int, list[dict]]]:
        """Run every job's tasks (in a process pool unless ``workers`` is 1); yield its scores."""
        if self.options.workers <= 1:
            for number, tasks in pending.items():
                yield number, [score for task in tasks for score in evaluate_examples(task)]
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.options.workers, mp_context=context) as pool:
            futures = {number: [pool.submit(evaluate_examples, task) for task in tasks]
                       for number, tasks in pending.items()}
            for number, items in futures.items():  # submitted in order, so finished in order
                yield number, [score for future in items for score in future.result()]

    @staticmethod
    def _fill(result: RowResult, scores: list[dict]) -> None:
        for metric in METRICS:
            values = [s[metric] for s in scores if s[metric] is not None]
            result.means[metric] = float(np.mean(values)) if values else None
        rates = [s["hint_hit_rate"] for s in scores if s["hint_hit_rate"] is not None]
        result.hint_hit_rate = float(np.mean(rates)) if rates else None


def plan_rows(checkpoints: dict[str, Checkpoint | None]
              ) -> list[tuple[RowResult, Checkpoint | None]]:
    """Every table row with its checkpoint and hint producer, or why it cannot be run."""
    large = checkpoints.get("large")
    jobs = []
    for row in table_rows():
        checkpoint = checkpoints.get(row.role) if row.role else None
        result = RowResult(row, checkpoint)
        producer = None
        if row.role is not None and checkpoint is None:
            result.status = "no checkpoint yet"
        elif row.age is not None:
            low, high = checkpoint.age_range or (0, -1)
            if not low <= row.age <= high:
                result.status = f"outside trained range {low}..{high}"
            elif large is None:
                result.status = "no hint producer (large)"
            else:
                producer = large
        jobs.append((result, producer))
    return jobs


def measure_complexity(timing_steps: int) -> list[dict[str, Any]]:
    """Params, MACs per chunk (with and without a hint) and, unless 0 steps, step time."""
    rows = []
    for name, config in PRESETS.items():
        torch.manual_seed(0)
        model = StreamingModel(config).eval()
        hinted = count_macs(model, with_hint=True)
        plain = count_macs(model, with_hint=False)
        timing = (time_streaming_step(model, steps=timing_steps, warmup=timing_steps // 10,
                                      traced=True) if timing_steps else {})
        rows.append({"preset": name, "kind": config.kind, "params": hinted["params"],
                     "macs_per_chunk": hinted["macs_per_chunk"],
                     "macs_per_chunk_no_hint": plain["macs_per_chunk"], **timing})
    return rows


def machine_description() -> str:
    """CPU model, cores, Python and torch versions: what the timings depend on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_complexity(rows: list[dict[str, Any]]) -> str:
    """Markdown table of ``measure_complexity`` rows, with the paper's figures beside."""
    lines = [f"| preset | kind | params | MACs / chunk | MACs, no hint | step median ms "
             f"(/ {CHUNK_MS:g} ms) | step p99 ms (/ {CHUNK_MS:g} ms) | CPU median / p99 ms "
             "| paper params / MACs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        paper = PAPER_COMPLEXITY.get(row["preset"])
        paper_text = f"{paper[0]:,} / {paper[1] / 1e6:.2f} M" if paper else "-"
        timing = "| - | - | - "
        if "median_ms" in row:
            timing = (f"| {row['median_ms']:.2f} ({row['median_ms'] / CHUNK_MS:.2f}) | "
                      f"{row['p99_ms']:.2f} ({row['p99_ms'] / CHUNK_MS:.2f}) | "
                      f"{row['cpu_median_ms']:.2f} / {row['cpu_p99_ms']:.2f} ")
        lines.append(
            f"| `{row['preset']}` | {row['kind']} | {row['params']:,} | "
            f"{row['macs_per_chunk'] / 1e6:.2f} M | {row['macs_per_chunk_no_hint'] / 1e6:.2f} M "
            f"{timing}| {paper_text} |")
    return "\n".join(lines)


def _worst(margins: list[float | None]) -> float | None:
    return None if not margins or None in margins else min(margins)


def _diff(a: float | None, b: float | None, offset: float = 0.0) -> float | None:
    return None if a is None or b is None else a - b - offset


def acceptance_checks(results: list[RowResult]) -> list[tuple[str, float | None, bool | None]]:
    """
    Issue 3's "done when" quality criteria as (criterion, margin in dB, passed).

    A criterion holds when its margin is >= 0 (> 0 for a strict "above"); ``passed`` is None
    while a row it needs is missing.
    """
    scores = {r.row.label: r.means.get("si_snri_db") if r.ok else None for r in results}
    small, medium = scores["small"], scores["medium: same-size vanilla"]
    large, no_hint = scores["large (hint producer)"], scores["kb, no hint"]
    boosted = {age: scores[f"kb, hint age {age}"] for age in BOOSTED_AGES}
    trained = [age for age in BOOSTED_AGES if age >= 1]
    criteria = [
        (f"age {ACCEPTANCE_AGE}: boosted >= small + 1.0 dB",
         _diff(boosted[ACCEPTANCE_AGE], small, 1.0), False),
        (f"age {ACCEPTANCE_AGE}: boosted > same-size vanilla (medium)",
         _diff(boosted[ACCEPTANCE_AGE], medium), True),
        ("ages 1..8: boosted >= small (worst age)",
         _worst([_diff(boosted[age], small) for age in trained]), False),
        ("no hint >= small - 0.3 dB", _diff(no_hint, small, -0.3), False),
        ("ages 1..8: large > boosted (closest age)",
         _worst([_diff(large, boosted[age]) for age in trained]), True),
    ]
    return [(text, margin, None if margin is None else (margin > 0 if strict else margin >= 0))
            for text, margin, strict in criteria]


def render_checkpoints(checkpoints: dict[str, Checkpoint | None]) -> str:
    """Markdown table: which checkpoint each role used, and how it was trained."""
    lines = ["| role | checkpoint | model id | age range | best step | trained steps "
             "| val SI-SNRi (dB) | hint producer in training |",
             "|---|---|---|---|---|---|---|---|"]
    for role, checkpoint in checkpoints.items():
        if checkpoint is None:
            lines.append(f"| {role} | not trained yet | - | - | - | - | - | - |")
            continue
        manifest = checkpoint.manifest
        metrics, recipe = manifest.get("metrics", {}), manifest.get("recipe", {})
        ages = checkpoint.age_range
        lines.append(
            f"| {role} | `{checkpoint.name}` | `{checkpoint.model_id}` | "
            f"{f'{ages[0]}..{ages[1]}' if ages else '-'} | {metrics.get('step', '-')} | "
            f"{recipe.get('trained_steps', 'not recorded')} | "
            f"{_fmt(metrics.get('val_si_snri'))} | "
            f"{', '.join(f'`{p}`' for p in recipe.get('hint_producers', [])) or '-'} |")
    return "\n".join(lines)


def render_quality(results: list[RowResult], task: str) -> str:
    """Markdown table of the quality rows."""
    lines = ["| row | model | SI-SNRi (dB) | PESQ-WB | STOI | hint hit rate | paper |",
             "|---|---|---|---|---|---|---|"]
    for result in results:
        model = f"`{result.checkpoint.model_id}`" if result.checkpoint else "-"
        paper = (f"KB gain over same-size: +{PAPER_GAIN_DB[task]:.2f} dB"
                 if result.row.label == f"kb, hint age {ACCEPTANCE_AGE}" and task in
                 PAPER_GAIN_DB else "")
        if not result.ok:
            lines.append(f"| {result.row.label} | {model} | {result.status} | | | | {paper} |")
            continue
        means = result.means
        rate = "-" if result.hint_hit_rate is None else f"{result.hint_hit_rate:.1%}"
        lines.append(f"| {result.row.label} | {model} | {_fmt(means['si_snri_db'])} | "
                     f"{_fmt(means['pesq_wb'])} | {_fmt(means['stoi'], 3)} | {rate} | {paper} |")
    return "\n".join(lines)


def render_checks(results: list[RowResult]) -> str:
    """Markdown list of the acceptance criteria with their margins."""
    lines = []
    for text, margin, passed in acceptance_checks(results):
        verdict = "not measured yet" if passed is None else ("pass" if passed else "FAIL")
        lines.append(f"- {text}: {verdict}" + ("" if margin is None else f" ({margin:+.2f} dB)"))
    return "\n".join(lines)


def render_human_setup(human: TestSet, run_note: str) -> str:
    """Say what the real-speech rows are and what they can show."""
    clips = human.recipe.get("human_clips", [])
    return (f"`{human.path}`: {len(human.indices)} of {human.total} examples of "
            f"{human.recipe['seconds']:g} s. The speech is real: the {len(clips)} recordings "
            "of a human voice that Debian's alsa-utils installs (`/usr/share/sounds/alsa`, "
            "\"Front Left\" and so on, 1.3-1.5 s each), in random order with pauses, over the "
            "test split's noises at the same SNRs. Every model learnt from TTS voices only. One "
            "speaker and eight phrases: this shows whether the models carry over to human "
            f"speech, not how well they do on people at large. Rows: {run_note}.")


def render_document(test: TestSet, options: ResultsOptions,
                    checkpoints: dict[str, Checkpoint | None], results: list[RowResult],
                    complexity: list[dict[str, Any]], plot_name: str | None,
                    run_note: str,
                    human: tuple[TestSet, str, list[RowResult]] | None = None) -> str:
    """Render the whole results page (markdown); ``human``: the real-speech split's rows."""
    recipe = test.recipe
    versions = recipe["versions"]
    tts_note = ""
    if test.train_versions and test.train_versions.get("tts_version") != versions["tts_version"]:
        tts_note = (f" The training split was synthesized with TTS version "
                    f"{test.train_versions.get('tts_version')}, this one with "
                    f"{versions['tts_version']}: the same engines and voices, a later version "
                    "of the synthesis code.")
    kb = checkpoints.get("kb")
    producers = kb.manifest.get("recipe", {}).get("hint_producers", []) if kb else []
    large = checkpoints.get("large")
    producer_note = ""
    if large and producers and large.model_id not in producers:
        producer_note = (f"\n\n**Note:** `kb` was trained with hints from {producers}, but the "
                         f"hints here come from `{large.model_id}`.")
    timing_threads = "1 thread, TorchScript step as the ChunkEngine runs it"
    parts = [
        "# Results",
        f"Generated by `{options.command}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; do not edit by hand.",
        "## Setup",
        f"- Machine: {machine_description()}.",
        f"- Test set: `{options.data_dir}/test.npz`, {len(test.indices)} of {test.total} "
        f"examples of {recipe['seconds']:g} s, task `{test.task}`, seed {recipe['seed']}, "
        f"SNR {recipe['levels']['snr_db']} dB, espeak-ng {versions.get('espeak-ng')}, festival "
        f"{versions.get('festival')}. Voices and sentences disjoint from "
        f"{' and '.join(test.disjoint_from) or 'no other split'} (checked from the recipes)."
        + tts_note,
        "- Pipeline: each row streams every example chunk by chunk through `run_pipeline` "
        "(emulated link with a delay of exactly the hint age, HintMatcher, the device model in "
        "its ChunkEngine). The large model's outputs are its full-sequence forward (equal to "
        "streaming), served as hints. Age 0 is the paper's D = 0: the hint of the chunk being "
        "processed, which needs a device that waits for the workstation (the nodes never do). "
        "Hit rates below 100 % are the first `age` chunks of each example, which have no hint "
        "yet. Scores are means over examples; outputs are aligned for the 4 ms output delay; "
        "SS scores use the best permutation.",
        f"- This page: {run_note}.",
        "### Checkpoints", render_checkpoints(checkpoints) + producer_note,
        "## Quality on the held-out test set", render_quality(results, test.task),
    ]
    if plot_name:
        parts.append(f"![SI-SNRi, PESQ-WB and STOI against hint age]({plot_name})")
    parts += ["## Issue 3 acceptance criteria", render_checks(results)]
    if human is not None:
        parts += ["## Quality on real human speech", render_human_setup(*human[:2]),
                  render_quality(human[2], human[0].task)]
    parts += ["## Compute per 8 ms chunk",
              f"Every preset, randomly initialised (compute does not depend on the weights): "
              f"parameters, multiply-accumulates of one streaming step counted by "
              f"`kb_ros.models.complexity.count_macs` (with a hint, and on the no-hint path), and "
              f"the wall time of one step ({timing_threads}, batch 1, "
              f"{options.timing_steps} steps), also as a ratio to the 8 ms chunk. Wall time "
              f"includes time the shared machine gave to other work (load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores when timed); thread CPU "
              "time does not.",
              render_complexity(complexity),
              "## The paper's figures, for reference",
              "Srinivas et al., *Knowledge boosting during low-latency inference*, Interspeech "
              "2024 (from REFERENCE.md; their tables were not available, only these figures): "
              "at D = 6 chunks (48 ms) KB gains over a same-size model without KB "
              "0.23 dB SI-SDR for SE, 2.31 dB for 2-speaker SS and 3.53 dB for TSE; their data "
              "are 100k simulated binaural mixtures of real speech, ours a small synthesized "
              "mono corpus, so only the differences between rows compare, not absolute values."]
    return "\n\n".join(parts) + "\n"


def plot_results(results: list[RowResult], path: Path) -> bool:
    """Plot each metric against hint age, with the models without hints as lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.ok and r.row.role is not None]
    if not ok:
        return False
    flat = [r for r in ok if r.row.age is None]  # models without hints: horizontal lines
    figure, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4))
    for axis, metric in zip(axes, METRICS):
        for color, (role, marker) in enumerate((("kb", "o"), ("kb_gc", "s"), ("kb_d4", "D"))):
            points = [(r.row.age, r.means[metric]) for r in ok
                      if r.row.role == role and r.row.age is not None and r.means[metric]]
            if points:
                axis.plot(*zip(*points), marker=marker, color=f"C{color}",
                          label=f"{role} with hints")
        for color, r in enumerate(flat, start=3):
            if r.means[metric] is not None:
                axis.axhline(r.means[metric], linestyle="--", linewidth=1, color=f"C{color}",
                             label=r.row.label)
        axis.set_xlabel("hint age (8 ms chunks)")
        axis.set_title(METRIC_TITLES[metric])
        axis.set_xticks(range(max(BOOSTED_AGES) + 1))
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def default_roles(task: str) -> dict[str, str]:
    """Shipped model names of each role: ``small`` etc., ``small_ss`` etc. for separation."""
    roles = ("small", "medium", "small_gc", "large", "kb", "kb_d4", "kb_gc")
    return {role: role if task == "se" else f"{role}_{task}" for role in roles}


def write_results(options: ResultsOptions) -> list[RowResult]:
    """Evaluate every row, measure compute, write the page and its plot; return the rows."""
    test = TestSet(options.data_dir, options.examples)
    roles = {**default_roles(test.task), **options.models}
    checkpoints = {role: resolve_checkpoint(name) for role, name in roles.items()}
    jobs = plan_rows(checkpoints)
    run_note = RowEvaluator(test, options).evaluate([(r, p) for r, p in jobs if r.ok])
    results = [result for result, _ in jobs]
    human = None
    if (options.data_dir / f"{HUMAN_SPLIT}.npz").exists():
        human_set = TestSet(options.data_dir, options.examples, HUMAN_SPLIT)
        human_jobs = plan_rows(checkpoints)
        human_note = RowEvaluator(human_set, options).evaluate(
            [(r, p) for r, p in human_jobs if r.ok])
        human = (human_set, human_note, [result for result, _ in human_jobs])
    complexity = measure_complexity(options.timing_steps)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    plot_path = options.out.with_suffix(".png")
    plotted = plot_results(results, plot_path)
    options.out.write_text(render_document(test, options, checkpoints, results, complexity,
                                           plot_path.name if plotted else None, run_note,
                                           human))
    return results


def run_results(args: argparse.Namespace) -> int:
    """``kb-ros eval --table`` / ``--complexity`` from parsed arguments."""
    command = shlex.join(["kb-ros", *sys.argv[1:]])
    if args.table:
        options = ResultsOptions(args.data, args.out, args.examples, args.workers,
                                 parse_model_overrides(args.model), command=command,
                                 timing_steps=args.timing_steps)
        for result in write_results(options):
            score = _fmt(result.means.get("si_snri_db")) if result.ok else result.status
            print(f"{result.row.label:<32} {score}")
        print(f"wrote {options.out}")
        return 0
    complexity = measure_complexity(args.timing_steps)
    print(json.dumps(complexity, indent=1) if args.json else render_complexity(complexity))
    return 0
