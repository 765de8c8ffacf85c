"""
``kb-ros eval``: the real chunk pipeline offline, scored against references.

One mixture (``evaluate``: the DESIGN.md JSON contract), or many examples of a test split for
the results table (``evaluate_examples``, driven by ``kb_ros.cli.results``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kb_ros.audio.clock import CHUNK_FRAMES, CHUNK_MS, SAMPLE_RATE
from kb_ros.audio.metrics import pesq_wb, si_snr, si_snr_improvement, stoi
from kb_ros.audio.wav import read_wav
from kb_ros.boosting.engine import ChunkEngine
from kb_ros.boosting.offline import run_pipeline
from kb_ros.models.checkpoint import load_model
from kb_ros.models.filterbank import OUTPUT_DELAY_SAMPLES
from kb_ros.models.model import StreamingModel
from kb_ros.models.shipped import load_model_and_manifest
from kb_ros.transport.emulated_link import LinkProfile


def si_snri(est: np.ndarray, ref: np.ndarray, mix: np.ndarray) -> float:
    """SI-SNR improvement in dB of a model output, undoing the model's fixed output delay."""
    n = min(len(est) - OUTPUT_DELAY_SAMPLES, len(ref), len(mix))
    return float(si_snr_improvement(est[OUTPUT_DELAY_SAMPLES:OUTPUT_DELAY_SAMPLES + n],
                                    ref[:n], mix[:n]))


def evaluate(mix: np.ndarray, ref: np.ndarray, delay_chunks: int, *, kb_model: str = "kb",
             large_model: str = "large", small_model: str = "small") -> dict:
    """
    Scores of small alone, boosted, large alone and the boosted model's no-hint path.

    Boosted gets its hints ``delay_chunks`` late; each runs through the per-chunk engine.
    """
    mix2 = mix[:, None] if mix.ndim == 1 else mix
    mono_mix = mix2.mean(axis=1)
    kb, _ = load_model_and_manifest(kb_model)
    large, large_manifest = load_model_and_manifest(large_model)
    small, _ = load_model_and_manifest(small_model)
    boosted = run_pipeline(mix2, ChunkEngine(kb), ChunkEngine(large),
                           link=LinkProfile(delay_ms=delay_chunks * CHUNK_MS),
                           hint_producer=large_manifest["model_id"])
    no_hint = run_pipeline(mix2, ChunkEngine(kb))
    alone = run_pipeline(mix2, ChunkEngine(small))
    return {
        "si_snri_db": {"small": si_snri(alone.enhanced[:, 0], ref, mono_mix),
                       "boosted": si_snri(boosted.enhanced[:, 0], ref, mono_mix),
                       "large": si_snri(boosted.hints[:, 0], ref, mono_mix),
                       "no_hint": si_snri(no_hint.enhanced[:, 0], ref, mono_mix)},
        "hint_hit_rate": boosted.counters.hit_rate,
        "delay_chunks": delay_chunks,
        "hints": boosted.counters.as_dict(),
        "compute_ms": boosted.compute_ms,
    }


MIN_SCORED_SAMPLES = CHUNK_FRAMES + OUTPUT_DELAY_SAMPLES  # one chunk past the look-ahead
SILENCE_RMS = 1e-5  # -100 dBFS: below this a signal holds nothing to score against


def evaluate_files(mix_path: Path, ref_path: Path, delay_chunks: int,
                   warn: Callable[[str], None] = print) -> dict:
    """
    ``evaluate`` on two WAVs, refusing what cannot give a meaningful score.

    Empty, too short or silent files are errors (SI-SNR of silence is 0 dB or noise, not a
    score); files of different lengths are scored over the shorter, with a warning.
    """
    mix, _ = read_wav(mix_path)
    ref, _ = read_wav(ref_path, mono=True)
    for path, audio in ((mix_path, mix), (ref_path, ref)):
        if len(audio) < MIN_SCORED_SAMPLES:
            raise ValueError(f"{path}: {len(audio)} samples at 16 kHz; scoring needs at least "
                             f"{MIN_SCORED_SAMPLES} (one chunk past the look-ahead)")
        if np.sqrt(np.mean(np.square(audio, dtype=np.float64))) < SILENCE_RMS:
            raise ValueError(f"{path}: silent (RMS under -100 dBFS): nothing to score")
    if len(mix) != len(ref):
        warn(f"--mix lasts {len(mix) / SAMPLE_RATE:.3f} s and --ref "
             f"{len(ref) / SAMPLE_RATE:.3f} s: scoring the first "
             f"{min(len(mix), len(ref)) / SAMPLE_RATE:.3f} s")
    return evaluate(mix, ref[:, 0], delay_chunks)


def _pesq_or_none(est: np.ndarray, ref: np.ndarray) -> float | None:
    """PESQ-WB, or None where PESQ finds no speech to compare (a silent reference)."""
    try:
        return pesq_wb(est, ref)
    except RuntimeError:  # pesq.PesqError, e.g. NoUtterancesError
        return None


def score_output(est: np.ndarray, ref: np.ndarray, mix: np.ndarray,
                 delay: int = OUTPUT_DELAY_SAMPLES) -> dict[str, float | None]:
    """
    SI-SNRi, PESQ-WB and STOI of one output, averaged over its sources.

    ``est [frames, S]`` is delayed by ``delay`` samples (a model's output delay); ``ref
    [n, S]``, ``mix [n]`` the mono mixture. With several sources each estimate is paired with
    the reference the permutation of best mean SI-SNR gives it (PIT), as in training.
    """
    n = min(len(est) - delay, len(ref), len(mix))
    est, ref, mix = est[delay:delay + n].T, ref[:n].T, mix[:n]
    orders = list(itertools.permutations(range(len(ref))))
    best = max(orders, key=lambda order: float(np.mean(si_snr(est[list(order)], ref))))
    est = est[list(best)]
    pesq = [_pesq_or_none(e, r) for e, r in zip(est, ref)]
    mixes = np.broadcast_to(mix, ref.shape)
    return {"si_snri_db": float(np.mean(si_snr_improvement(est, ref, mixes))),
            "pesq_wb": None if None in pesq else float(np.mean(pesq)),
            "stoi": float(np.mean([stoi(e, r) for e, r in zip(est, ref)]))}


class OfflineOutput:
    """
    A model's full-sequence output, handed out one chunk per ``process`` call.

    It stands where the large model's ``ChunkEngine`` would in ``run_pipeline``: the models are
    causal and their full-sequence output equals the streamed one (test_models), so the large
    model runs once per example at full-sequence speed. Clipped to full scale as the engine's.
    """

    def __init__(self, audio: np.ndarray) -> None:
        """``audio [frames, sources]``, finite."""
        if not np.isfinite(audio).all():
            raise ValueError("the model output is not finite")
        self.audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
        self.sources = audio.shape[1]
        self._next_chunk = 0

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Return the output chunk for the next input chunk (``[CHUNK_FRAMES, sources]``)."""
        start = self._next_chunk * CHUNK_FRAMES
        self._next_chunk += 1
        return self.audio[start:start + CHUNK_FRAMES]


@torch.inference_mode()
def full_sequence_outputs(model: StreamingModel, mix: np.ndarray, batch: int = 8) -> np.ndarray:
    """Run ``model`` on mixtures ``[N, L]``, padded to whole chunks: ``[N, frames, S]``."""
    mix = np.pad(mix, ((0, 0), (0, -mix.shape[-1] % CHUNK_FRAMES)))
    outputs = [model(torch.from_numpy(mix[i:i + batch, None]).float())[0].numpy()
               for i in range(0, len(mix), batch)]
    return np.concatenate(outputs).transpose(0, 2, 1)


@dataclass(frozen=True)
class ExampleTask:
    """
    Examples of a test split to score in one way; picklable, for a process pool.

    Without ``model`` the outputs are scored directly: the large model's (``outputs``) or, with
    neither, the unprocessed mixture. With ``model`` each example runs through
    ``run_pipeline``, with ``outputs`` as hints ``age`` chunks late when ``age`` is given.
    """

    data: Path  # a test split's .npz (mix [N, L], clean [N, L] or [N, S, L])
    indices: tuple[int, ...]
    model: Path | None = None
    outputs: Path | None = None  # .npy [N, frames, S]
    age: int | None = None
    producer: str | None = None


def evaluate_examples(task: ExampleTask) -> list[dict[str, float | None]]:
    """Scores (``score_output``) and hint hit rate of each example of ``task``."""
    with np.load(task.data) as data:
        mixes, cleans = data["mix"][list(task.indices)], data["clean"][list(task.indices)]
    refs = cleans[:, None] if cleans.ndim == 2 else cleans  # [n, S, L]
    outputs = np.load(task.outputs, mmap_mode="r") if task.outputs is not None else None
    engine = ChunkEngine(load_model(task.model)) if task.model is not None else None
    results = []
    for index, mix, ref in zip(task.indices, mixes, refs):
        hit_rate = None
        if engine is None and outputs is None:
            est, delay = np.repeat(mix[:, None], len(ref), axis=1), 0
        elif engine is None:
            est, delay = np.clip(outputs[index], -1.0, 1.0), OUTPUT_DELAY_SAMPLES
        else:
            engine.reset()
            hints = OfflineOutput(outputs[index]) if task.age is not None else None
            result = run_pipeline(mix[:, None], engine, hints,
                                  link=LinkProfile(delay_ms=(task.age or 0) * CHUNK_MS),
                                  hint_producer=task.producer, same_chunk_hints=task.age == 0)
            est, delay = result.enhanced, OUTPUT_DELAY_SAMPLES
            hit_rate = result.counters.hit_rate if result.counters else None
        results.append({**score_output(est, ref.T, mix, delay), "hint_hit_rate": hit_rate})
    return results
