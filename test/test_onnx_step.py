"""The ONNX Runtime step: same outputs as the model, any batch, a cache that heals, a fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kb_ros.boosting.batched_engine import BatchedEngine
from kb_ros.boosting.engine import ChunkEngine
from kb_ros.models.config import get_config
from kb_ros.models.filterbank import HOP
from kb_ros.models.onnx_step import OnnxStep, OnnxUnavailable, build_step, graph_key
from kb_ros.models.stream import BoundOnnxStream, StoredStream
from kb_ros.models.traced import TracedStep
from test_models import VARIANTS, inputs, make_model, offline

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = get_config("small_fast", name="tiny_fast", emb_dim=8, freq_hidden=8, lstm_hidden=8)


def stream(step, mix: torch.Tensor, hint: torch.Tensor | None,
           ages: torch.Tensor | None) -> torch.Tensor:
    """Run ``step`` chunk by chunk (no hint where the age is -1), carrying its packed state."""
    outs, state = [], None
    with torch.inference_mode():
        for t in range(mix.shape[-1] // HOP):
            chunk = slice(t * HOP, (t + 1) * HOP)
            given = ages is not None and bool((ages[:, t] >= 0).all())
            out, state = step(mix[..., chunk], hint[..., chunk] if given else None,
                              ages[:, t:t + 1] if given else None, state)
            outs.append(out)
    return torch.cat(outs, dim=-1)


@pytest.mark.parametrize("name", ["small_fast", "kb_fast", "large_window4"])
def test_onnx_step_streams_like_the_full_sequence_model(name: str) -> None:
    config = VARIANTS[name]
    model = make_model(config, torch.float32)
    mix, hint, ages = inputs(config, 9, batch=1, dtype=torch.float32)
    mix[..., :2 * HOP] = 0.0  # digital silence: the compression's epsilon must survive export
    if ages is not None:
        ages[0, 3] = -1
    step = OnnxStep(model)
    assert step.runtime == "onnxruntime"
    torch.testing.assert_close(stream(step, mix, hint, ages), offline(model, mix, hint, ages),
                               rtol=0, atol=1e-5)


def test_batch_free_step_keeps_every_stream_to_itself() -> None:
    """One graph steps 1 or 3 streams; a row's output is what that stream alone would give."""
    config = VARIANTS["large_window4"]
    model = make_model(config, torch.float32)
    mix, _, _ = inputs(config, 6, batch=3, dtype=torch.float32)
    step = OnnxStep(model, batch=None)
    together = stream(_Batched(step, 3), mix, None, None)
    for row in range(3):
        alone = stream(step, mix[row:row + 1], None, None)
        torch.testing.assert_close(together[row:row + 1], alone, rtol=0, atol=1e-5)
        torch.testing.assert_close(alone, offline(model, mix[row:row + 1]), rtol=0, atol=1e-5)


class _Batched:
    """A batch-free step started from ``rows`` fresh streams."""

    def __init__(self, step: OnnxStep, rows: int) -> None:
        self.step, self.rows = step, rows

    def __call__(self, mix, hint, age, state):
        if state is None:
            state = tuple(torch.cat([t] * self.rows) for t in self.step.initial_state())
        return self.step(mix, hint, age, state)


def test_cache_is_reused_keyed_by_weights_and_a_bad_file_is_exported_again(tmp_path) -> None:
    model = make_model(TINY, torch.float32)
    assert OnnxStep(model, cache=tmp_path).exported == 1
    assert OnnxStep(model, cache=tmp_path).exported == 0
    (cached,) = tmp_path.iterdir()
    assert cached.name == f"{graph_key(model, 1, False)}.onnx"
    cached.write_bytes(b"not an onnx graph")
    healed = OnnxStep(model, cache=tmp_path)
    assert healed.exported == 1 and cached.read_bytes() != b"not an onnx graph"
    with torch.no_grad():
        next(model.decoder.parameters()).mul_(0.5)
    assert graph_key(model, 1, False) != cached.stem
    assert OnnxStep(model, cache=tmp_path).exported == 1
    assert len(list(tmp_path.iterdir())) == 2


def test_read_only_cache_still_runs_on_onnx(tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be")
    model = make_model(TINY, torch.float32)
    step = OnnxStep(model, cache=blocked)
    mix, _, _ = inputs(TINY, 3, batch=1, dtype=torch.float32)
    torch.testing.assert_close(stream(step, mix, None, None), offline(model, mix),
                               rtol=0, atol=1e-5)


def test_what_onnx_cannot_run_falls_back_to_torchscript_and_says_why() -> None:
    """A float64 model cannot run on ONNX Runtime here: ``auto`` traces it, ``onnx`` refuses."""
    model = make_model(TINY, torch.float64)
    step, note = build_step(model, "auto")
    assert isinstance(step, TracedStep) and "ONNX Runtime not used" in note
    with pytest.raises(OnnxUnavailable, match="float32"):
        build_step(model, "onnx")
    engine = BatchedEngine(make_model(TINY, torch.float32), 2, runtime="torchscript")
    assert engine.runtime == "torchscript" and engine.runtime_note == ""
    with pytest.raises(ValueError, match="runtime"):
        ChunkEngine(model, runtime="fast")


def test_engines_run_shipped_models_on_onnx_by_default() -> None:
    from kb_ros.models.shipped import load_model_and_manifest
    for name in ("small", "kb"):
        engine = ChunkEngine(load_model_and_manifest(name)[0])
        assert (engine.runtime, engine.runtime_note) == ("onnxruntime", "")
    large = BatchedEngine(load_model_and_manifest("large")[0], 2)
    assert (large.runtime, large.runtime_note) == ("onnxruntime", "")


def test_bound_stream_steps_like_the_stored_one_and_resets() -> None:
    """Buffers bound once (IOBinding, state ping-pong) give the step's own output, bit for bit."""
    config = VARIANTS["kb_fast"]
    model = make_model(config, torch.float32)
    mix, hint, ages = inputs(config, 9, batch=1, dtype=torch.float32)
    ages[0, 3] = -1
    step = OnnxStep(model)
    bound, stored = BoundOnnxStream(step), StoredStream(step)

    def run(stepper, frames: range) -> list:
        outs = []
        for t in frames:
            chunk = slice(t * HOP, (t + 1) * HOP)
            age = int(ages[0, t])
            outs.append(stepper(mix[0, :, chunk].numpy().T, hint[0, :, chunk].numpy().T
                                if age >= 0 else None, age if age >= 0 else None))
        return outs

    first = run(bound, range(9))
    assert all(out.shape == (HOP, config.n_sources) for out in first)
    for a, b in zip(first, run(stored, range(9))):
        np.testing.assert_array_equal(a, b)
    bound.reset()
    again = run(bound, range(4))  # the ping-pong parity is odd now: reset must still hold
    for a, b in zip(again, first[:4]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="hint ages"):
        bound(mix[0, :, :HOP].numpy().T, hint[0, :, :HOP].numpy().T, config.max_age + 1)
    with pytest.raises(ValueError):
        BoundOnnxStream(OnnxStep(model, ring=True))
