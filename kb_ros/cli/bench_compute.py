"""
Per-chunk compute of the shipped models, where a step's time goes, and what fits the budget.

The shipped models run through ``ChunkEngine`` exactly as the nodes run them (TorchScript step,
one thread, limiter) on the shipped speech sample; the boosted model gets the large model's real
output as its hint, ``HINT_AGE`` chunks old. Where the time goes comes from per-module timing of
the eager model and op counts of the traced step; what a model within the device budget has to
look like comes from timing real ``StreamingModel`` variants (random weights: compute does not
depend on training) and the fixed cost of one frequency-LSTM call.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from kb_ros.audio.clock import CHUNK_FRAMES, CHUNK_MS
from kb_ros.audio.wav import read_wav
from kb_ros.boosting.engine import ChunkEngine
from kb_ros.boosting.hint_matcher import MatchedHint
from kb_ros.cli.bench_stats import time_calls
from kb_ros.cli.evaluate import full_sequence_outputs
from kb_ros.models.complexity import count_macs, time_streaming_step
from kb_ros.models.config import PRESETS, get_config
from kb_ros.models.filterbank import N_FREQS
from kb_ros.models.model import StreamingModel
from kb_ros.models.shipped import load_model_and_manifest
from kb_ros.models.onnx_step import OnnxStep, OnnxUnavailable
from kb_ros.models.stream import BoundOnnxStream
from kb_ros.models.traced import TracedStep
from kb_ros.resources import demo_sample_path

HINT_AGE = 4  # chunks: the boosted model's hint in the compute and quality figures
# Anchors from the literature (REFERENCE.md): MACs per 8 ms chunk of the paper's models,
# measured on its code, and DTLN's time per 8 ms block on a desktop CPU.
PAPER_MACS_PER_CHUNK = {"small": 2.18e6, "kb": 2.68e6, "large": 38.7e6}
DTLN_MS_PER_BLOCK = (0.27, 0.65)
# (JSON key, shipped model, fed a hint)
SHIPPED_ROLES = (("small_compute_ms", "small", False), ("boosted_compute_ms", "kb", True),
                 ("large_compute_ms", "large", False))
# Model variants timed for the budget: (label, preset, config overrides)
BUDGET_VARIANTS = (
    ("kb as shipped: 3 blocks, 2 fusions", "kb", {}),
    ("kb: 2 blocks, 1 fusion", "kb", {"n_blocks": 2, "fusion_after": (0,)}),
    ("kb: 1 block, 1 fusion", "kb", {"n_blocks": 1, "fusion_after": (0,)}),
    ("small as shipped: 3 blocks", "small", {}),
    ("small: 1 block", "small", {"n_blocks": 1}),
    ("no block: filterbank and convs only", "small", {"n_blocks": 0}),
    ("kb_gc (GroupComm)", "kb_gc", {}),
)
# enough for the fit's 3 terms and the parts' op counts (budget_summary relies on this order)
QUICK_VARIANTS = ("kb as shipped: 3 blocks, 2 fusions", "no block: filterbank and convs only",
                  "small: 1 block", "kb: 1 block, 1 fusion")
FREQUENCY_SCAN_BINS = (N_FREQS, 49, 25, 13)


@dataclass
class DemoAudio:
    """The shipped sample cut to whole chunks, and the large model's output for it."""

    mix: np.ndarray  # [frames, 1]
    clean: np.ndarray  # [frames]
    large_out: np.ndarray  # [frames, 1], the hint audio (clipped, as the engine's)
    large_id: str

    @property
    def n_chunks(self) -> int:
        return len(self.mix) // CHUNK_FRAMES

    def chunk(self, index: int) -> np.ndarray:
        return self.mix[index * CHUNK_FRAMES:(index + 1) * CHUNK_FRAMES]

    def large_chunk(self, index: int) -> np.ndarray:
        """Return the large model's output for chunk ``index``: that chunk's hint audio."""
        return self.large_out[index * CHUNK_FRAMES:(index + 1) * CHUNK_FRAMES]

    def hint(self, index: int, age: int = HINT_AGE) -> MatchedHint | None:
        """Return the hint chunk ``index`` gets at ``age`` chunks (None before the first one)."""
        return MatchedHint(0, self.large_chunk(index - age), age) if index >= age else None


def load_demo(seconds: float | None = None) -> DemoAudio:
    """Read the shipped sample (the first ``seconds`` of it) and run the large model on it."""
    mix = read_wav(demo_sample_path("mix"), mono=True)[0]
    clean = read_wav(demo_sample_path("clean"), mono=True)[0][:, 0]
    frames = len(mix) if seconds is None else min(len(mix), int(seconds * 16000))
    frames -= frames % CHUNK_FRAMES
    large, manifest = load_model_and_manifest("large")
    large_out = full_sequence_outputs(large.eval(), mix[:frames, 0][None])[0]
    return DemoAudio(mix[:frames], clean[:frames], np.clip(large_out, -1.0, 1.0),
                     manifest["model_id"])


def shipped_compute(demo: DemoAudio, chunks: int) -> dict[str, dict]:
    """Per-chunk compute of the shipped small, boosted and large models, as the nodes run them."""
    results = {}
    for key, name, hinted in SHIPPED_ROLES:
        model, manifest = load_model_and_manifest(name)
        engine = ChunkEngine(model, threads=1)

        def step(i: int, engine: ChunkEngine = engine, hinted: bool = hinted) -> None:
            index = i % demo.n_chunks
            engine.process(demo.chunk(index), demo.hint(index) if hinted else None)

        samples = time_calls(step, chunks, warmup=min(50, chunks))
        macs = count_macs(model, with_hint=hinted)
        results[key] = {**samples.summary(), "model_id": manifest["model_id"],
                        "runtime": engine.runtime,
                        "params": macs["params"], "macs_per_chunk": macs["macs_per_chunk"],
                        "paper_macs_per_chunk": PAPER_MACS_PER_CHUNK[name],
                        "ops_per_chunk": TracedStep(model).op_count(hinted)}
    return results


def module_breakdown(model: StreamingModel, demo: DemoAudio, steps: int) -> dict[str, Any]:
    """
    Thread-CPU time per module of one eager streaming step with a hint (median over steps).

    Eager, because only the eager model has module boundaries to time: its total is larger than
    the traced step's (Python dispatch per op), the shares are what to read. Rows are the
    model's top-level modules, with the frequency LSTMs and attentions inside them.
    """
    starts: dict[str, int] = {}
    times: dict[str, list[int]] = defaultdict(list)

    def before(name: str) -> Callable[..., None]:
        return lambda *_: starts.__setitem__(name, time.thread_time_ns())

    def after(name: str) -> Callable[..., None]:
        return lambda *_: times[name].append(time.thread_time_ns() - starts[name])

    hooks = []
    for name, module in model.named_modules():
        top_level = bool(name) and name.count(".") <= 1 and not name.startswith("hint_encoder.")
        if top_level or isinstance(module, nn.LSTM) or type(module).__name__ == "LocalAttention":
            hooks += [module.register_forward_pre_hook(before(name)),
                      module.register_forward_hook(after(name))]
    cfg = model.config
    age = torch.full((1, 1), HINT_AGE if cfg.uses_hints else -1)
    hint = torch.zeros(1, cfg.n_sources, CHUNK_FRAMES)
    state, totals = None, []
    try:
        with torch.inference_mode():
            for i in range(steps):
                index = i % demo.n_chunks
                mix = torch.from_numpy(demo.chunk(index).T.copy())[None]
                matched = demo.hint(index)
                if matched is not None:
                    hint[0] = torch.from_numpy(matched.audio.T)
                start = time.thread_time_ns()
                _, state = model(mix, hint if cfg.uses_hints else None,
                                 age if cfg.uses_hints else None, state)
                totals.append(time.thread_time_ns() - start)
    finally:
        for handle in hooks:
            handle.remove()
    skip = min(20, steps // 4)
    rows = [{"module": name, "cpu_ms_p50": round(float(np.median(v[skip:])) / 1e6, 4)}
            for name, v in times.items()]
    return {"eager_step_cpu_ms_p50": round(float(np.median(totals[skip:])) / 1e6, 4),
            "modules": rows}


class _BoundRunner:
    """``BoundOnnxStream`` (what ``ChunkEngine`` runs) called like a ``FlatStep``."""

    def __init__(self, stream: BoundOnnxStream) -> None:
        self.stream = stream

    def __call__(self, mix: torch.Tensor, hint: torch.Tensor | None, age: torch.Tensor | None,
                 state: None) -> tuple[torch.Tensor, None]:
        out = self.stream(mix[0].T.numpy(), None if hint is None else hint[0].T.numpy(),
                          None if age is None else int(age))
        return torch.from_numpy(out.T.copy())[None], None


def freeze_ablation(model: StreamingModel, demo: DemoAudio, steps: int) -> dict[str, Any]:
    """Time eager, traced, frozen, optimized and ONNX steps with a hint; check they agree."""
    cfg = model.config
    runners: dict[str, Any] = {
        "eager": model, "traced": TracedStep(model),
        "traced_frozen": TracedStep(model, freeze=True),
        "traced_frozen_optimize_for_inference": TracedStep(model, optimize=True)}
    try:
        runners["onnxruntime"] = OnnxStep(model)
        runners["onnxruntime_bound"] = _BoundRunner(BoundOnnxStream(runners["onnxruntime"]))
    except OnnxUnavailable:
        pass  # the engine falls back to TorchScript too; the table just has no ONNX row
    results, outputs = {}, {}
    for name, step in runners.items():
        state, outs = None, []

        def call(i: int, step: Any = step) -> None:
            nonlocal state
            index = i % demo.n_chunks
            matched = demo.hint(index)
            mix = torch.from_numpy(demo.chunk(index).T.copy())[None]
            hint = age = None
            if cfg.uses_hints and matched is not None:
                hint = torch.from_numpy(matched.audio.T.copy())[None]
                age = torch.full((1, 1), matched.age_chunks)
            out, state = step(mix, hint, age, state)
            outs.append(out)

        with torch.inference_mode():
            samples = time_calls(call, steps, warmup=10)  # TorchScript optimizes first calls
        outputs[name] = torch.cat(outs, dim=-1)
        results[name] = {"cpu_p50": round(float(np.median(samples.cpu_ms)), 4),
                         "cpu_p99": round(float(np.percentile(samples.cpu_ms, 99)), 4),
                         "max_abs_diff_vs_eager": float(
                             (outputs[name] - outputs["eager"]).abs().max())}
    return results


def budget_variants(steps: int, labels: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Ops, MACs and thread-CPU time per step of model variants (or ``labels`` of them)."""
    rows = []
    for label, preset, overrides in BUDGET_VARIANTS:
        if preset not in PRESETS or (labels is not None and label not in labels):
            continue
        config = get_config(preset, **overrides)
        torch.manual_seed(0)
        model = StreamingModel(config).eval()
        hinted = config.uses_hints
        timing = time_streaming_step(model, steps=steps, warmup=min(50, steps), threads=1,
                                     with_hint=hinted, traced=True)
        macs = count_macs(model, with_hint=hinted)
        rows.append({"variant": label, "preset": preset, "n_blocks": config.n_blocks,
                     "fusions": len(config.fusion_after), "emb_dim": config.emb_dim,
                     "lstm_hidden": config.lstm_hidden, "groups": getattr(config, "groups", 1),
                     "params": macs["params"], "macs_per_chunk": macs["macs_per_chunk"],
                     "ops_per_chunk": TracedStep(model).op_count(hinted),
                     "cpu_p50": round(timing["cpu_median_ms"], 4),
                     "cpu_p99": round(timing["cpu_p99_ms"], 4),
                     "wall_p50": round(timing["median_ms"], 4),
                     "wall_p99": round(timing["p99_ms"], 4)})
    torch.set_num_threads(1)
    return rows


def op_cost_fit(rows: list[dict[str, Any]]) -> dict[str, float]:
    """
    Fit ``cpu_p50 = fixed + per_op * ops + per_scan * frequency-LSTM calls``, all terms >= 0.

    Each grid block makes one frequency-LSTM call, far dearer than a plain op; the rest of a
    step is many tiny ops of nearly equal cost. The two costs bound any step within the budget.
    """
    design = np.array([[1.0, r["ops_per_chunk"], r["n_blocks"]] for r in rows], np.float64)
    cpu = np.array([r["cpu_p50"] for r in rows], np.float64)
    if len(rows) < 3 or np.linalg.matrix_rank(design) < 3:
        return {"fixed_ms": float("nan"), "per_op_us": float("nan"),
                "per_frequency_scan_ms": float("nan"), "p99_over_p50": float("nan")}
    fixed, per_op, per_scan = nnls(design, cpu)[0]
    return {"fixed_ms": round(float(fixed), 4), "per_op_us": round(float(per_op) * 1e3, 3),
            "per_frequency_scan_ms": round(float(per_scan), 4),
            "p99_over_p50": round(float(np.median([r["cpu_p99"] / r["cpu_p50"] for r in rows])),
                                  3)}


def frequency_scan_cost(steps: int, hidden: int = 16) -> list[dict[str, Any]]:
    """
    Thread-CPU time of one bidirectional LSTM call over F bins, as each grid block makes.

    Separates the call's fixed cost (oneDNN setup) from its per-bin cost. The bin counts take
    turns call by call, so a busy spell on a shared machine weighs on all of them alike.
    """
    torch.manual_seed(0)
    lstm = nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True)
    inputs = [torch.randn(1, bins, hidden) for bins in FREQUENCY_SCAN_BINS]
    with torch.inference_mode():
        samples = time_calls(lambda i: lstm(inputs[i % len(inputs)]),
                             steps * len(inputs), warmup=20 * len(inputs))
    cpu = np.array(samples.cpu_ms).reshape(steps, len(inputs))  # warmup is a whole number
    return [{"bins": bins, "hidden": hidden, "cpu_p50": round(float(np.median(cpu[:, k])), 4)}
            for k, bins in enumerate(FREQUENCY_SCAN_BINS)]


def dense_mac_rate(steps: int, size: int = 256) -> float:
    """Measure the MACs per ms of a dense ``size``-cube matmul here: what compute could reach."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    with torch.inference_mode():
        samples = time_calls(lambda _: torch.mm(a, b), steps, warmup=10)
    return size ** 3 / float(np.median(samples.cpu_ms))


def _variant(rows: list[dict[str, Any]], label: str) -> dict[str, Any]:
    return next(r for r in rows if r["variant"] == label)


def budget_summary(rows: list[dict[str, Any]], fit: dict[str, float], dense_macs_per_ms: float,
                   budget_p99_ms: float = 1.0) -> dict[str, Any]:
    """
    Say what meets a thread-CPU p99 of ``budget_p99_ms`` here, from the fit and the variants.

    ``max_ops_projected`` is the op count whose projected p99 (p50 times the variants' typical
    p99/p50) meets the budget, for steps with 0 and with 1 frequency-LSTM call. ``part_ops``
    are the ops of the model's parts, as differences between variants.
    """
    budget_p50 = budget_p99_ms / fit["p99_over_p50"]
    per_op_ms = fit["per_op_us"] / 1e3
    max_ops = {}
    for scans in (0, 1):
        spare_ms = budget_p50 - fit["fixed_ms"] - scans * fit["per_frequency_scan_ms"]
        # a fit that puts no cost on ops (short, noisy runs) projects no op count
        ops = spare_ms / per_op_ms if per_op_ms > 0 else float("nan")
        max_ops[f"{scans}_frequency_scans"] = int(ops) if np.isfinite(ops) and ops > 0 else 0
    floor, block, hinted = (_variant(rows, label) for label in QUICK_VARIANTS[1:])
    kb = _variant(rows, QUICK_VARIANTS[0])
    return {"budget_p99_ms": budget_p99_ms, "budget_ratio": budget_p99_ms / CHUNK_MS,
            "max_ops_projected": max_ops,
            "part_ops": {"filterbank_and_convs": floor["ops_per_chunk"],
                         "grid_block": block["ops_per_chunk"] - floor["ops_per_chunk"],
                         "hint_encoder_and_fusion": (hinted["ops_per_chunk"]
                                                     - block["ops_per_chunk"])},
            "dense_gmac_per_s": round(dense_macs_per_ms / 1e6, 3),
            "kb_gmac_per_s": round(kb["macs_per_chunk"] / kb["cpu_p50"] / 1e6, 3),
            "variants_meeting_budget": [r["variant"] for r in rows
                                        if r["cpu_p99"] < budget_p99_ms]}


def compute_section(demo: DemoAudio, quick: bool, notify: Callable[[str], None]
                    ) -> dict[str, Any]:
    """Everything above, sized for ``quick`` or a full run."""
    chunks = 100 if quick else 400
    notify("shipped models")
    shipped = shipped_compute(demo, chunks)
    kb, _ = load_model_and_manifest("kb")
    notify("where the kb step's time goes")
    breakdown = module_breakdown(kb.eval(), demo, 30 if quick else 150)
    ablation = freeze_ablation(kb, demo, 30 if quick else 150)
    notify("model variants for the budget")
    variants = budget_variants(30, QUICK_VARIANTS) if quick else budget_variants(120)
    fit = op_cost_fit(variants)
    return {**shipped, "kb_modules": breakdown, "kb_trace_ablation": ablation,
            "budget_variants": variants, "op_cost_fit": fit,
            "budget": budget_summary(variants, fit, dense_mac_rate(20 if quick else 100)),
            "frequency_lstm_call": frequency_scan_cost(50 if quick else 200),
            "dtln_ms_per_block": list(DTLN_MS_PER_BLOCK), "hint_age_chunks": HINT_AGE}
