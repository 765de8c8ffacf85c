"""
The per-chunk engine, its output limiter and the offline pipeline on real models.

Random initialisations check the step; the shipped models on the shipped speech check that the
limiter leaves real enhancement alone, and shipped models with scaled-up output weights (a
glitch, made by real weights, not a mock) check that it bounds what comes out.
"""

import numpy as np
import pytest
import torch

from kb_ros.audio.wav import read_wav
from kb_ros.boosting.engine import ChunkEngine
from kb_ros.boosting.hint_matcher import MatchedHint
from kb_ros.boosting.limiter import ENERGY_FLOOR_DBFS, OutputLimiter
from kb_ros.boosting.offline import run_pipeline
from kb_ros.models.config import get_config
from kb_ros.models.filterbank import OUTPUT_DELAY_SAMPLES
from kb_ros.models.model import StreamingModel
from kb_ros.models.shipped import load_model_and_manifest
from kb_ros.resources import demo_sample_path
from kb_ros.transport.emulated_link import LinkProfile

MARGIN_DB = 6.0


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def model(preset, **overrides):
    torch.manual_seed(0)
    return StreamingModel(get_config(preset, **overrides)).eval()


def speechlike(n=128 * 60, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = 0.2 * np.sin(2 * np.pi * 180 * t)[:, None] + 0.05 * rng.standard_normal((n, channels))
    return x.astype(np.float32)


def test_engine_chunks_equal_offline_forward_with_hints():
    kb = model("kb")
    mix = speechlike()
    hint_audio = speechlike(seed=1)[:, 0] * 0.5
    ages = ([-1] * 6 + [a for a in (6, 6, 7, 5, -1, 8, 1) for _ in range(8)])[:60]
    engine = ChunkEngine(kb, output_margin_db=None)
    out = []
    for t in range(60):
        age = ages[t]
        hint = None
        if age >= 0:
            j = t - age
            hint = MatchedHint(0, hint_audio[j * 128:(j + 1) * 128, None], age)
        out.append(engine.process(mix[t * 128:(t + 1) * 128], hint))
    used = np.zeros(60 * 128, np.float32)
    for t, age in enumerate(ages):
        if age >= 0:
            used[t * 128:(t + 1) * 128] = hint_audio[(t - age) * 128:(t - age + 1) * 128]
    with torch.inference_mode():
        ref = kb(torch.from_numpy(mix.T[None]), torch.from_numpy(used[None, None]),
                 torch.tensor([ages]))[0][0, 0].numpy()
    np.testing.assert_allclose(np.concatenate(out)[:, 0], np.clip(ref, -1, 1), atol=2e-5)
    assert engine.counters.boosted == sum(a >= 0 for a in ages)


def test_engine_mixes_down_and_repeats_channels():
    mono = model("small")
    stereo = model("small", in_channels=2)
    chunk = speechlike(128, channels=2)
    assert ChunkEngine(mono).process(chunk).shape == (128, 1)
    assert ChunkEngine(stereo).process(chunk[:, :1]).shape == (128, 1)


def test_engine_replaces_non_finite_output_with_silence_and_resets():
    small = model("small")
    with torch.no_grad():
        for param in small.decoder.parameters():
            param.fill_(float("nan"))
    engine = ChunkEngine(small)  # compiled steps take the weights as they are when built
    assert engine.runtime == "onnxruntime"
    out = engine.process(speechlike(128))
    assert np.all(out == 0) and engine.counters.non_finite_outputs == 1


def test_engine_output_never_exceeds_full_scale():
    engine = ChunkEngine(model("small"))
    loud = np.full((128, 1), 1.0, np.float32)
    for _ in range(20):
        out = engine.process(loud)
        assert np.abs(out).max() <= 1.0


@pytest.mark.parametrize("delay_chunks", [0, 3, 8, 12])
def test_offline_pipeline_delivers_hints_at_exactly_the_link_delay(delay_chunks):
    kb, large = model("kb"), model("large_cpu")
    result = run_pipeline(speechlike(), ChunkEngine(kb), ChunkEngine(large),
                          link=LinkProfile(delay_ms=8.0 * delay_chunks))
    counters = result.counters
    assert counters.chunks == 60 and result.enhanced.shape == (60 * 128, 1)
    if delay_chunks > kb.config.max_age:
        assert counters.hits == 0 and counters.late > 40
    elif delay_chunks == 0:
        assert dict(counters.age_histogram) == {1: 59}  # the device never waits
    else:
        assert dict(counters.age_histogram) == {delay_chunks: 60 - delay_chunks}


@pytest.fixture(scope="module")
def speech():
    """Return the shipped noisy speech sample's first 1.5 s (187 chunks), ``[frames, 1]``."""
    return read_wav(demo_sample_path("mix"), mono=True)[0][:187 * 128]


def shipped(name, output_gain_db=0.0):
    """Load a shipped model; a gain scales its decoder (its output spectrum), like a glitch."""
    model = load_model_and_manifest(name)[0]
    with torch.no_grad():
        for param in model.decoder.parameters():
            param.mul_(10 ** (output_gain_db / 20))
    return model


def stream(engine, mix):
    return np.concatenate([engine.process(mix[k * 128:(k + 1) * 128])
                           for k in range(len(mix) // 128)])


def window_power_db(mix, delay=OUTPUT_DELAY_SAMPLES):
    """Per output chunk, the level of the input it estimates: delayed by ``delay`` samples."""
    padded = np.concatenate([np.zeros(delay, np.float64), mix[:, 0].astype(np.float64)])
    chunks = padded[:len(mix) // 128 * 128].reshape(-1, 128)
    return 10 * np.log10(np.maximum((chunks ** 2).mean(axis=1), 10 ** (ENERGY_FLOOR_DBFS / 10)))


def chunk_power_db(out):
    chunks = out[:, 0].astype(np.float64).reshape(-1, 128)
    return 10 * np.log10((chunks ** 2).mean(axis=1) + 1e-30)


@pytest.mark.parametrize("name", ["small", "kb", "large"])
def test_limiter_leaves_enhanced_speech_untouched(speech, name):
    """Streamed with the limiter == the model's own offline forward, as shipped and near 0 dBFS."""
    model = shipped(name)
    engine = ChunkEngine(model)
    for level in (1.0, 0.95 / np.abs(speech).max()):
        mix = speech * level
        engine.reset()
        with torch.inference_mode():
            offline = model(torch.from_numpy(mix.T[None]))[0][0].numpy().T
        np.testing.assert_allclose(stream(engine, mix), np.clip(offline, -1, 1), atol=2e-5)
    assert engine.limiter.counters.limited_chunks == 0  # so not one sample was changed


def test_limiter_never_acts_in_the_boosted_pipeline(speech):
    small_engine, large_engine = ChunkEngine(shipped("kb")), ChunkEngine(shipped("large"))
    boosted = run_pipeline(speech, small_engine, large_engine, link=LinkProfile(delay_ms=48.0))
    assert boosted.counters.hits == 187 - 6
    assert small_engine.limiter.counters.limited_chunks == 0
    assert large_engine.limiter.counters.limited_chunks == 0


@pytest.mark.parametrize("glitch_db", [30.0, 40.0, 80.0])
def test_limiter_bounds_a_model_with_loud_output(speech, glitch_db):
    """30 dB louder (the shipped small model runs ~20 dB below its input), 40 dB, 80 dB."""
    engine = ChunkEngine(shipped("small", glitch_db))
    raw = stream(ChunkEngine(shipped("small", glitch_db), output_margin_db=None), speech)
    out = stream(engine, speech)
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0
    excess_db = chunk_power_db(out) - window_power_db(speech)
    assert excess_db.max() <= MARGIN_DB + 1e-3
    raw_excess_db = chunk_power_db(raw) - window_power_db(speech)
    assert engine.limiter.counters.limited_chunks >= np.sum(raw_excess_db > MARGIN_DB) > 0
    if glitch_db >= 40:
        assert np.abs(raw).max() == 1.0  # without the limiter: clipped


def test_limiter_catches_a_glitch_starting_mid_stream(speech):
    model = shipped("small")
    engine = ChunkEngine(model, runtime="torchscript")  # sees the weights change mid-stream
    reference = stream(ChunkEngine(shipped("small"), output_margin_db=None), speech[:100 * 128])
    before = stream(engine, speech[:100 * 128])
    np.testing.assert_allclose(before, reference, rtol=0, atol=1e-5)
    with torch.no_grad():
        for param in model.decoder.parameters():
            param.mul_(100.0)
    after = stream(engine, speech[100 * 128:])
    excess_db = chunk_power_db(after) - window_power_db(speech)[100:]
    assert excess_db.max() <= MARGIN_DB + 1e-3 and np.abs(after).max() <= 1.0
    assert engine.limiter.counters.limited_chunks > 0.9 * len(after) / 128
    assert engine.limiter.counters.min_gain_db < -10


def test_limiter_ramps_gain_down_fast_and_up_slowly():
    """A tone 20 dB over its input: the gain ramps over 1 ms, recovers at 40 dB/s, no clicks."""
    limiter = OutputLimiter(MARGIN_DB)
    t = np.arange(128 * 200) / 16000
    tone = (0.05 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[:, None]
    loud = np.concatenate([np.ones(128 * 50), np.full(128 * 50, 10.0), np.ones(128 * 100)])
    output = tone * loud[:, None].astype(np.float32)
    chunks = [limiter.process(output[k * 128:(k + 1) * 128], tone[k * 128:(k + 1) * 128])
              for k in range(200)]
    limited = np.concatenate(chunks)[:, 0]
    audible = np.abs(output[:, 0]) > 1e-3
    gain = np.where(audible, limited / np.where(audible, output[:, 0], 1), np.nan)
    np.testing.assert_array_equal(limited[:50 * 128], output[:50 * 128, 0])
    onset = gain[50 * 128:50 * 128 + 16]
    assert np.nanmax(np.abs(np.diff(onset))) < 0.1  # ramped, not stepped
    excess_db = chunk_power_db(np.concatenate(chunks)) - window_power_db(tone)
    assert excess_db.max() <= MARGIN_DB + 1e-3
    per_chunk = np.nanmax(gain[100 * 128:].reshape(-1, 128), axis=1)
    rise_db = np.diff(20 * np.log10(per_chunk))
    assert 0 < rise_db.max() <= 40.0 * 0.008 + 1e-4  # release: at most 0.32 dB per chunk
    assert per_chunk[-1] == 1.0 and limiter.gain == 1.0  # and it comes back to unity
    assert limiter.counters.hard_steps == 0
