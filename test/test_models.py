"""Streaming models: filterbank, streaming == offline, causality, hints, checkpoints, MACs."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch
from torch import nn
from hypothesis import given, settings
from hypothesis import strategies as st

from kb_ros.models.attention import QUERY_BLOCK, LocalAttention
from kb_ros.models.blocks import GROUP_EXCHANGE_FACTOR
from kb_ros.models.checkpoint import (load_checkpoint, load_model, model_id, read_manifest,
                                      save_model)
from kb_ros.models.complexity import count_macs
from kb_ros.models.config import PRESETS, ModelConfig, get_config
from kb_ros.models.filterbank import (ALGORITHMIC_LATENCY_SAMPLES, HOP, LOOKAHEAD, N_FFT,
                                      N_FREQS, OUTPUT_DELAY_SAMPLES, HintAnalysis, StftAnalysis,
                                      StftSynthesis, analysis_window)
from kb_ros.models.model import StreamingModel
from kb_ros.models.state import State, flatten_tensors
from kb_ros.models.ring import StateStore
from kb_ros.models.traced import EagerStep, FlatStep, TracedStep
from kb_ros.training.hint_schedule import gather_used_hint

F64 = torch.float64

# presets plus small-window variants that exercise cache eviction within a short test signal
VARIANTS = {
    **{name: get_config(name) for name in PRESETS},
    "large_window4": get_config("large_cpu", name="large_window4", emb_dim=8, lstm_hidden=8,
                                attn_window=4, attn_heads=2),
    "kb_memory5": get_config("kb", name="kb_memory5", memory_frames=5, in_channels=2,
                             n_sources=2),
    # GroupComm with self-attention per group, and a separating GroupComm kb model
    "large_gc_window4": get_config("large_cpu", name="large_gc_window4", emb_dim=16,
                                   lstm_hidden=8, groups=2, attn_window=4, attn_heads=2),
    "kb_gc_stereo": get_config("kb_gc", name="kb_gc_stereo", memory_frames=5, in_channels=2,
                               n_sources=2),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(config: ModelConfig, dtype: torch.dtype = F64, seed: int = 0) -> StreamingModel:
    """
    Return a random model whose fusions act and whose attention sees relative positions.

    Untrained, a fusion has a zero output projection and every position bias is zero.
    """
    torch.manual_seed(seed)
    model = StreamingModel(config)
    with torch.no_grad():
        for fusion in model.fusions:
            nn.init.normal_(fusion.attention.proj.weight, std=0.3)
        for module in model.modules():
            if isinstance(module, LocalAttention):
                nn.init.normal_(module.position_bias, std=1.0)
    return model.to(dtype).eval()


def random_ages(batch: int, frames: int, config: ModelConfig, seed: int = 1) -> torch.Tensor:
    """Ages that change over time, with -1 (no hint) mixed in."""
    gen = torch.Generator().manual_seed(seed)
    ages = torch.randint(config.min_age, config.max_age + 1, (batch, frames), generator=gen)
    return torch.where(torch.rand(batch, frames, generator=gen) < 0.3, -1, ages)


def inputs(config: ModelConfig, frames: int, batch: int = 2, dtype: torch.dtype = F64,
           seed: int = 2) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(batch, config.in_channels, frames * HOP, generator=gen, dtype=dtype)
    if not config.uses_hints:
        return mix, None, None
    hint = torch.randn(batch, config.n_sources, frames * HOP, generator=gen, dtype=dtype)
    return mix, hint, random_ages(batch, frames, config, seed)


def run_chunks(model: StreamingModel, mix: torch.Tensor, hint: torch.Tensor | None,
               ages: torch.Tensor | None, sizes: list[int]) -> torch.Tensor:
    """Run ``model`` over consecutive pieces of ``sizes`` chunks, carrying the state."""
    outs, state, start = [], None, 0
    with torch.no_grad():
        for size in sizes:
            samples = slice(start * HOP, (start + size) * HOP)
            out, state = model(mix[..., samples], None if hint is None else hint[..., samples],
                               None if ages is None else ages[:, start:start + size], state)
            outs.append(out)
            start += size
    return torch.cat(outs, dim=-1)


def offline(model: StreamingModel, mix: torch.Tensor, hint: torch.Tensor | None = None,
            ages: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(mix, hint, ages)[0]


def test_constants() -> None:
    assert (HOP, LOOKAHEAD, N_FFT, N_FREQS) == (128, 64, 192, 97)
    assert OUTPUT_DELAY_SAMPLES == 64 and ALGORITHMIC_LATENCY_SAMPLES == 192


def test_analysis_matches_rfft_of_padded_frames() -> None:
    audio = torch.randn(2, 1, 5 * HOP, dtype=F64)
    spec, history = StftAnalysis().double()(audio, torch.zeros(2, 1, LOOKAHEAD, dtype=F64))
    frames = torch.nn.functional.pad(audio, (LOOKAHEAD, 0)).unfold(-1, N_FFT, HOP)
    ref = torch.fft.rfft(frames * analysis_window(), dim=-1)
    torch.testing.assert_close(spec, torch.cat([ref.real, ref.imag], dim=-1))
    torch.testing.assert_close(history, audio[..., -LOOKAHEAD:])


def test_hint_analysis_is_windowed_zero_padded_rfft() -> None:
    hint = torch.randn(1, 2, 3 * HOP, dtype=F64)
    spec = HintAnalysis().double()(hint)
    window = torch.hamming_window(HOP, periodic=True, dtype=F64)
    ref = torch.fft.rfft(hint.unflatten(-1, (3, HOP)) * window, n=N_FFT, dim=-1)
    torch.testing.assert_close(spec, torch.cat([ref.real, ref.imag], dim=-1))


@pytest.mark.parametrize("chunked", [False, True])
def test_stft_perfect_reconstruction_delays_by_lookahead(chunked: bool) -> None:
    analysis, synthesis = StftAnalysis().double(), StftSynthesis().double()
    audio = torch.randn(2, 3, 9 * HOP, dtype=F64)
    history = tail = torch.zeros(2, 3, LOOKAHEAD, dtype=F64)
    pieces = audio.split(HOP, dim=-1) if chunked else [audio]
    outs = []
    for piece in pieces:
        spec, history = analysis(piece, history)
        out, tail = synthesis(spec, tail)
        outs.append(out)
    out = torch.cat(outs, dim=-1)
    torch.testing.assert_close(out[..., OUTPUT_DELAY_SAMPLES:],
                               audio[..., :-OUTPUT_DELAY_SAMPLES], rtol=0, atol=1e-12)
    assert out[..., :OUTPUT_DELAY_SAMPLES].abs().max() < 1e-12


def test_basis_stays_exact_across_dtype_moves() -> None:
    analysis = StftAnalysis()
    assert analysis.basis.dtype == torch.float32
    reference = StftAnalysis().double().basis
    torch.testing.assert_close(analysis.double().basis, reference, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_streaming_equals_offline_float64(name: str) -> None:
    config = VARIANTS[name]
    model = make_model(config)
    frames = 12
    mix, hint, ages = inputs(config, frames)
    full = offline(model, mix, hint, ages)
    assert full.shape == (2, config.n_sources, frames * HOP)
    streamed = run_chunks(model, mix, hint, ages, [1] * frames)
    torch.testing.assert_close(streamed, full, rtol=0, atol=1e-10)
    uneven = run_chunks(model, mix, hint, ages, [3, 1, 5, 2, 1])
    torch.testing.assert_close(uneven, full, rtol=0, atol=1e-10)


def test_streaming_equals_offline_float32_kb() -> None:
    config = get_config("kb")
    model = make_model(config, torch.float32)
    mix, hint, ages = inputs(config, 20, dtype=torch.float32)
    torch.testing.assert_close(run_chunks(model, mix, hint, ages, [1] * 20),
                               offline(model, mix, hint, ages), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["large_window4", "kb_memory5"])
def test_attention_longer_than_one_query_block(name: str) -> None:
    """Offline attention splits long sequences into query blocks; the seams must not show."""
    config = dataclasses.replace(VARIANTS[name], n_blocks=2)
    model = make_model(config)
    frames = QUERY_BLOCK + 6
    mix, hint, ages = inputs(config, frames, batch=1)
    full = offline(model, mix, hint, ages)
    pieces = run_chunks(model, mix, hint, ages, [QUERY_BLOCK - 3, 7, 2])
    torch.testing.assert_close(pieces, full, rtol=0, atol=1e-10)


@settings(max_examples=6, deadline=None)
@given(sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4))
def test_any_chunking_gives_the_same_output(sizes: list[int]) -> None:
    config = VARIANTS["kb_memory5"]
    model = make_model(config)
    mix, hint, ages = inputs(config, sum(sizes), batch=1)
    torch.testing.assert_close(run_chunks(model, mix, hint, ages, sizes),
                               offline(model, mix, hint, ages), rtol=0, atol=1e-10)


def first_changed_output(model: StreamingModel, config: ModelConfig, start: int) -> int:
    """Index of the first output sample that changes when inputs from ``start`` on change."""
    mix, hint, ages = inputs(config, 8, batch=1)
    perturbed = mix.clone()
    perturbed[..., start:] += torch.randn_like(perturbed[..., start:])
    diff = (offline(model, perturbed, hint, ages) - offline(model, mix, hint, ages)).abs()
    changed = torch.nonzero(diff.amax(dim=(0, 1)) > 1e-12)
    return int(changed[0])


@pytest.mark.parametrize("name", ["small", "kb", "large_window4", "small_gc", "kb_gc", "kb_d4",
                                  "large_gc_window4", "small_fast", "kb_fast"])
@pytest.mark.parametrize("start", [3 * HOP, 3 * HOP + 1, 3 * HOP + LOOKAHEAD, 4 * HOP - 1])
def test_future_input_never_changes_earlier_output(name: str, start: int) -> None:
    """
    Output sample m depends only on inputs before ``HOP * (m // HOP + 1)``.

    That is the end of the input chunk that completes it. So changing inputs from ``start`` on
    changes outputs from the first sample of chunk ``start // HOP`` on and nothing before.
    Output m is input time ``m - OUTPUT_DELAY_SAMPLES``, so an input reaches back at most 191
    samples: 192 samples (12 ms) of algorithmic latency, attained at ``start = 4*HOP - 1``.
    """
    config = VARIANTS[name]
    first = first_changed_output(make_model(config), config, start)
    assert first == (start // HOP) * HOP
    assert start - (first - OUTPUT_DELAY_SAMPLES) < ALGORITHMIC_LATENCY_SAMPLES


@pytest.mark.parametrize("name,step,age", [("kb", 2, 1), ("kb", 5, 8), ("kb", 7, 3), ("kb", 3, 0),
                                           ("kb_d4", 6, 4), ("kb_gc", 4, 0), ("kb_gc", 8, 6),
                                           ("kb_fast", 3, 2), ("kb_fast", 6, 5)])
def test_hint_only_affects_its_step_and_later(name: str, step: int, age: int) -> None:
    config = get_config(name)
    model = make_model(config)
    frames = 10
    mix, hint, _ = inputs(config, frames, batch=1)
    none = torch.full((1, frames), -1)
    one = none.clone()
    one[0, step] = age
    baseline = offline(model, mix, hint, none)
    hinted = offline(model, mix, hint, one)
    diff = (hinted - baseline).abs().amax(dim=(0, 1))
    assert diff[:step * HOP].max() < 1e-13
    assert diff[step * HOP:(step + 1) * HOP].max() > 1e-9
    torch.testing.assert_close(baseline, offline(model, mix), rtol=0, atol=0)


@pytest.mark.parametrize("name,chunk,age", [("kb", 2, 0), ("kb", 1, 4), ("kb", 0, 8),
                                            ("kb_d4", 3, 4), ("kb_gc", 2, 0), ("kb_gc", 1, 6)])
def test_hint_of_a_chunk_influences_outputs_from_chunk_plus_age_only(
        name: str, chunk: int, age: int) -> None:
    """
    The hint of chunk j, used at age a, changes outputs from chunk j + a on and none before.

    The device uses the hint of chunk j once it is a chunks old (training gathers it the same
    way), so outputs before chunk j + a cannot depend on it, whatever the hint says.
    """
    config = get_config(name)
    model = make_model(config)
    frames = 12
    mix, hint, _ = inputs(config, frames, batch=1)
    ages = torch.full((1, frames), -1)
    ages[0, chunk + age:] = age  # from step j + a on, each step uses the hint a chunks old
    other = hint.clone()
    other[..., chunk * HOP:(chunk + 1) * HOP] = torch.randn(1, 1, HOP, dtype=F64)
    diff = (offline(model, mix, gather_used_hint(other, ages), ages)
            - offline(model, mix, gather_used_hint(hint, ages), ages)).abs().amax(dim=(0, 1))
    used_at = (chunk + age) * HOP
    assert diff[:used_at].max() < 1e-13 and diff[used_at:used_at + HOP].max() > 1e-9


def test_unused_hint_slices_are_ignored_even_if_nan() -> None:
    config = get_config("kb")
    model = make_model(config)
    mix, hint, ages = inputs(config, 8, batch=2)
    garbage = hint.clone()
    for b, t in torch.nonzero(ages < 0).tolist():
        garbage[b, :, t * HOP:(t + 1) * HOP] = float("nan")
    torch.testing.assert_close(offline(model, mix, garbage, ages), offline(model, mix, hint, ages),
                               rtol=0, atol=0)


def test_steps_without_hint_arguments_equal_steps_with_age_minus_one() -> None:
    """The engine may pass no hint at all for a chunk; that must equal an unused hint slot."""
    config = get_config("kb")
    model = make_model(config)
    mix, hint, ages = inputs(config, 6, batch=1)
    ages[0, 2:4] = -1
    outs, state = [], None
    with torch.no_grad():
        for t in range(6):
            chunk = slice(t * HOP, (t + 1) * HOP)
            given = ages[0, t] >= 0
            out, state = model(mix[..., chunk], hint[..., chunk] if given else None,
                               ages[:, t:t + 1] if given else None, state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=-1), offline(model, mix, hint, ages),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["small", "kb", "large_window4", "small_gc", "kb_gc",
                                  "kb_fast"])
def test_traced_step_is_bit_identical_to_eager(name: str) -> None:
    config = VARIANTS[name]
    model = make_model(config, torch.float32)
    mix, hint, ages = inputs(config, 7, batch=1, dtype=torch.float32)
    if ages is not None:
        ages[0, 3] = -1
    step = TracedStep(model)
    outs, packed = [], None
    with torch.inference_mode():
        for t in range(7):
            chunk = slice(t * HOP, (t + 1) * HOP)
            given = ages is not None and ages[0, t] >= 0
            out, packed = step(mix[..., chunk], hint[..., chunk] if given else None,
                               ages[:, t:t + 1] if given else None, packed)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=-1), offline(model, mix, hint, ages),
                               rtol=0, atol=1e-5)
    eager = run_chunks(model, mix, hint, ages, [1] * 7)
    torch.testing.assert_close(torch.cat(outs, dim=-1), eager, rtol=0, atol=0)
    assert isinstance(step.unpack(packed), State)
    with pytest.raises(ValueError):
        step(mix[..., :2 * HOP])


def run_ring_steps(step: FlatStep, streams: int, mix: torch.Tensor, hint: torch.Tensor | None,
                   ages: torch.Tensor | None, subsets: list[tuple[int, ...]],
                   numpy_writes: bool | None = None) -> torch.Tensor:
    """
    Step ``streams`` streams through a ``StateStore``, a changing subset of them per call.

    The subsets cycle through all streams, some in a row (state views) and some not (gathered).
    """
    store = StateStore(step.initial_state(), step.rings, streams, numpy_writes=numpy_writes)
    frames = mix.shape[-1] // HOP
    done = [0] * streams
    outs = torch.zeros(streams, step.model.config.n_sources, frames * HOP, dtype=mix.dtype)
    with torch.inference_mode():
        for subset in itertools.cycle(subsets):
            rows = [stream for stream in subset if done[stream] < frames]
            if not any(frame < frames for frame in done):
                return outs
            if not rows:
                continue
            pieces = [slice(done[row] * HOP, (done[row] + 1) * HOP) for row in rows]
            batch_mix = torch.stack([mix[row, :, piece] for row, piece in zip(rows, pieces)])
            batch_hint = batch_age = None
            if hint is not None and ages is not None:
                batch_hint = torch.stack([hint[row, :, piece] for row, piece in zip(rows, pieces)])
                batch_age = torch.stack([ages[row, done[row]:done[row] + 1] for row in rows])
            out, new = step(batch_mix, batch_hint, batch_age, store.gather(rows))
            store.commit(rows, new)
            for row, piece, chunk in zip(rows, pieces, out):
                outs[row, :, piece] = chunk
                done[row] += 1
    raise AssertionError("unreachable")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_ring_steps_equal_offline_float64(name: str) -> None:
    """Caches as rings written in place, streams stepping in changing subsets: same output."""
    config = VARIANTS[name]
    model = make_model(config)
    frames = 12  # beyond the 4- and 5-frame memories of the small-window variants: rings wrap
    mix, hint, ages = inputs(config, frames, batch=3)
    step = EagerStep(model, batch=None, ring=True)
    assert len(step.rings) == sum(isinstance(module, LocalAttention)
                                  for module in model.modules())
    full = offline(model, mix, hint, ages)
    subsets = [(0, 1, 2), (0, 2), (1,), (1, 2), (0,)]
    for numpy_writes in (True, False):  # torch writes are what a GPU state gets
        streamed = run_ring_steps(step, 3, mix, hint, ages, subsets, numpy_writes)
        torch.testing.assert_close(streamed, full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("numpy_writes", [True, False])
def test_state_store_reset_restarts_one_stream_and_leaves_the_others(numpy_writes: bool) -> None:
    config = VARIANTS["large_gc_window4"]  # rings, and several state rows per stream
    model = make_model(config)
    mix, _, _ = inputs(config, 12, batch=2)
    full = offline(model, mix)
    step = EagerStep(model, batch=None, ring=True)
    store = StateStore(step.initial_state(), step.rings, 2, numpy_writes=numpy_writes)

    def chunk(row: int, frame: int) -> torch.Tensor:
        streams = [row] if row >= 0 else [0, 1]
        out, new = step(mix[streams, :, frame * HOP:(frame + 1) * HOP], None, None,
                        store.gather(streams))
        store.commit(streams, new)
        return out

    with torch.inference_mode():
        for frame in range(6):
            chunk(-1, frame)
        store.reset(1)
        for frame in range(6):  # stream 1 starts over while stream 0 goes on
            again = chunk(1, frame)
            on = chunk(0, frame + 6)
            torch.testing.assert_close(again[0], full[1, :, frame * HOP:(frame + 1) * HOP],
                                       rtol=0, atol=1e-10)
            torch.testing.assert_close(on[0], full[0, :, (frame + 6) * HOP:(frame + 7) * HOP],
                                       rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["large_window4", "kb_memory5"])
def test_traced_ring_step_equals_eager_ring_step(name: str) -> None:
    config = VARIANTS[name]
    model = make_model(config, torch.float32)
    mix, hint, ages = inputs(config, 9, batch=1, dtype=torch.float32)
    traced = run_ring_steps(TracedStep(model, ring=True), 1, mix, hint, ages, [(0,)])
    eager = run_ring_steps(EagerStep(model, ring=True), 1, mix, hint, ages, [(0,)])
    torch.testing.assert_close(traced, eager, rtol=0, atol=0)
    torch.testing.assert_close(traced, offline(model, mix, hint, ages), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,bad_ages", [("kb", (9, -2)), ("kb_d4", (0, 3, 5, 8))])
def test_hint_ages_are_validated(name: str, bad_ages: tuple[int, ...]) -> None:
    config = get_config(name)
    model = make_model(config)
    mix, hint, ages = inputs(config, 4, batch=1)
    for bad in bad_ages:
        wrong = ages.clone()
        wrong[0, 1] = bad
        with pytest.raises(ValueError, match="hint ages"):
            model(mix, hint, wrong)
    with pytest.raises(ValueError, match="together"):
        model(mix, hint, None)
    with pytest.raises(ValueError, match="hint_age"):
        model(mix, hint, ages.double())
    with pytest.raises(ValueError, match="mix"):
        model(mix[..., :100])


def test_models_without_fusion_ignore_hints() -> None:
    config = get_config("small")
    model = make_model(config)
    mix = torch.randn(1, 1, 4 * HOP, dtype=F64)
    hint = torch.randn(1, 1, 4 * HOP, dtype=F64)
    torch.testing.assert_close(offline(model, mix, hint, torch.full((1, 4), 3)),
                               offline(model, mix), rtol=0, atol=0)


def test_state_is_not_mutated_and_can_be_replayed() -> None:
    config = get_config("kb")
    model = make_model(config)
    mix, hint, ages = inputs(config, 6, batch=1)
    with torch.no_grad():
        _, state = model(mix[..., :4 * HOP], hint[..., :4 * HOP], ages[:, :4])
        saved = state.map(torch.clone)
        first, _ = model(mix[..., 4 * HOP:], hint[..., 4 * HOP:], ages[:, 4:], state)
        again, _ = model(mix[..., 4 * HOP:], hint[..., 4 * HOP:], ages[:, 4:], state)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    for old, new in zip(flatten_tensors(saved), flatten_tensors(state), strict=True):
        torch.testing.assert_close(old, new, rtol=0, atol=0)


def test_training_gradients_flow_through_hints_and_state_detaches() -> None:
    """An untrained fusion adds nothing yet its output projection learns; then hints matter."""
    config = get_config("kb")
    mix, hint, ages = inputs(config, 6, batch=2, dtype=torch.float32)
    untrained = StreamingModel(config)
    untrained(mix, hint, ages)[0].square().mean().backward()
    assert all(f.attention.proj.weight.grad.abs().sum() > 0 for f in untrained.fusions)
    model = make_model(config, torch.float32)
    hint.requires_grad_(True)
    out, state = model(mix, hint, ages)
    out.square().mean().backward()
    assert hint.grad is not None and hint.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.fusions.parameters())
    assert state.analysis.requires_grad or state.blocks[0].h.requires_grad
    assert not any(t.requires_grad for t in flatten_tensors(state.detach()))


def test_config_validation_and_sizes() -> None:
    with pytest.raises(ValueError):
        ModelConfig(name="x", kind="kb")
    with pytest.raises(ValueError):
        ModelConfig(name="x", kind="small", fusion_after=(1,))
    with pytest.raises(KeyError):
        get_config("huge")
    with pytest.raises(ValueError, match="groups"):
        get_config("small_gc", groups=3)  # 32 channels do not split into 3 groups
    assert (get_config("kb").min_age, get_config("kb").max_age) == (0, 8)
    assert (get_config("kb_d4").min_age, get_config("kb_d4").max_age) == (4, 4)
    params = {name: sum(p.numel() for p in StreamingModel(get_config(name)).parameters())
              for name in PRESETS}
    assert 20_000 < params["small"] < 26_000  # the paper's small model: 23,960
    assert abs(params["medium"] / params["kb_fast"] - 1) < 0.02  # same-size baseline
    assert params["small"] < params["large_cpu"] < params["large"]
    assert params["small_gc"] < params["small"] / 2  # groups share one block: far fewer params
    assert ModelConfig.from_dict(json.loads(json.dumps(get_config("kb").to_dict()))) == \
        get_config("kb")


def test_mac_count_is_exact_for_the_small_model() -> None:
    """Every matrix product of one small-model step, LSTMs included, counted by hand."""
    dim = hidden = 16
    dft = 2 * N_FFT * 2 * N_FREQS  # analysis and synthesis matrix products
    convs = 2 * N_FREQS * dim * 2 * 9  # 3x3 convs: 2 -> 16 and 16 -> 2 channels
    freq_blstm = N_FREQS * 2 * 4 * hidden * (dim + hidden)
    time_lstm = N_FREQS * 4 * hidden * (dim + hidden)
    projections = N_FREQS * (2 * hidden * dim + hidden * dim)
    expected = dft + convs + 3 * (freq_blstm + time_lstm + projections)
    small = count_macs(StreamingModel(get_config("small")))
    assert small["macs_per_chunk"] == expected == 2_141_760  # the paper's small: 2.18 M
    kb = count_macs(StreamingModel(get_config("kb")))
    assert kb["macs_per_chunk"] > small["macs_per_chunk"] and kb["params"] > small["params"]


def test_mac_count_is_exact_for_the_mixer_model() -> None:
    """small_fast: the small model with each frequency BLSTM replaced by the low-rank mixer."""
    config = get_config("small_fast")
    dim, hidden, rank = config.emb_dim, config.lstm_hidden, config.freq_hidden
    dft = 2 * N_FFT * 2 * N_FREQS
    convs = 2 * N_FREQS * dim * 2 * 9
    mixer = 2 * dim * N_FREQS * rank + N_FREQS * dim * dim  # down, up, projection
    time_lstm = N_FREQS * 4 * hidden * (dim + hidden) + N_FREQS * hidden * dim
    counted = count_macs(StreamingModel(config))
    assert counted["macs_per_chunk"] == dft + convs + 3 * (mixer + time_lstm)
    assert counted["fused_lstm_macs_per_chunk"] == 0  # no frequency scan left
    assert counted["macs_per_chunk"] < count_macs(StreamingModel(get_config("small")))[
        "macs_per_chunk"]


def test_mac_count_is_exact_for_the_groupcomm_model() -> None:
    """small_gc: G groups of width W through one shared block, plus the group exchange."""
    config = get_config("small_gc")
    groups, width, hidden, dim = config.groups, config.group_dim, config.lstm_hidden, 32
    exchange_hidden = GROUP_EXCHANGE_FACTOR * width
    dft = 2 * N_FFT * 2 * N_FREQS
    convs = 2 * N_FREQS * dim * 2 * 9
    exchange = N_FREQS * (groups * 2 * width * exchange_hidden  # transform, own half
                          + exchange_hidden ** 2 + exchange_hidden * width)  # mean: once
    shared = groups * N_FREQS * (2 * 4 * hidden * (width + hidden) + 4 * hidden * (width + hidden)
                                 + 2 * hidden * width + hidden * width)
    counted = count_macs(StreamingModel(config))["macs_per_chunk"]
    assert counted == dft + convs + config.n_blocks * (exchange + shared)


@pytest.mark.parametrize("preset,filename", [("kb", "kb.pt"), ("kb", "kb_dir"),
                                             ("kb_gc", "kb_gc_dir"), ("kb_d4", "kb_d4.ckpt")])
def test_checkpoint_round_trip(tmp_path, preset: str, filename: str) -> None:
    config = get_config(preset)
    model = make_model(config, torch.float32, seed=3)
    path = tmp_path / filename
    manifest = save_model(model, path, recipe={"data": "synthetic"}, metrics={"si_snri_db": 1.5})
    assert manifest == read_manifest(path)
    assert manifest["model_id"] == model_id(model)
    assert manifest["model_id"].startswith(f"{preset}-")
    assert manifest["config"] == config.to_dict()
    assert (manifest["sample_rate"], manifest["chunk_frames"], manifest["lookahead"]) == \
        (16000, 128, 64)
    assert manifest["age_range"] == [config.min_age, config.max_age]
    assert manifest["recipe"] == {"data": "synthetic"} and manifest["metrics"]["si_snri_db"] == 1.5
    loaded, loaded_manifest = load_checkpoint(path)
    assert loaded_manifest == manifest and not loaded.training
    assert next(loaded.parameters()).dtype == torch.float32
    mix, hint, ages = inputs(config, 5, batch=1, dtype=torch.float32)
    torch.testing.assert_close(offline(loaded, mix, hint, ages), offline(model, mix, hint, ages),
                               rtol=0, atol=0)
    size = sum(f.stat().st_size for f in ([path] if path.is_file() else path.iterdir()))
    assert size < 4 * manifest["n_params"] + 60_000


def test_checkpoint_rejects_mismatched_weights(tmp_path) -> None:
    model = make_model(get_config("small"), torch.float32)
    save_model(model, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    manifest["model_id"] = "small-00000000"
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="do not match"):
        load_model(tmp_path / "m")


DAMAGE = {
    "manifest is a list": lambda d: (d / "manifest.json").write_text("[]"),
    "manifest without config": lambda d: (d / "manifest.json").write_text('{"format": "x"}'),
    "config with an unknown field": lambda d: (d / "manifest.json").write_text(
        (d / "manifest.json").read_text().replace('"config": {', '"config": {"bogus": 1, ')),
    "weights are garbage": lambda d: (d / "weights.pt").write_bytes(b"\x80\x04garbage" * 50),
    "weights truncated": lambda d: (d / "weights.pt").write_bytes(
        (d / "weights.pt").read_bytes()[:300]),
    "weights of another model": lambda d: torch.save(
        make_model(get_config("large"), torch.float32).state_dict(), d / "weights.pt"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_a_one_line_error_naming_it(tmp_path, damage: str) -> None:
    save_model(make_model(get_config("small"), torch.float32), tmp_path / "m")
    DAMAGE[damage](tmp_path / "m")
    with pytest.raises(ValueError) as caught:
        load_checkpoint(tmp_path / "m")
    assert str(tmp_path / "m") in str(caught.value) and "\n" not in str(caught.value)
