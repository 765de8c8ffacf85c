"""
StreamResampler and input topics at other rates: 44.1 / 48 kHz microphones and foreign bags.

Block by block with carried state must equal scipy's one-shot polyphase filter; stamps must
follow the input's own stamps, so two nodes converting the same topic agree on every chunk.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import upfirdn

from kb_ros.audio.pcm import AudioFormat, PcmError, encode_pcm
from kb_ros.audio.resample import StreamResampler, resampling_filter
from kb_ros.audio.stream import PcmChunkStream
from kb_ros.nodes.common import adopt_format
from kb_ros.transport.messages import AudioInfoMsg

T0 = 1_700_000_000 * 10**9
RATES = [8000, 11025, 22050, 32000, 44100, 48000, 96000]


def stream_blocks(resampler: StreamResampler, audio: np.ndarray, sizes: list[int],
                  stamp0: int = T0) -> list[tuple[int, np.ndarray]]:
    """Push ``audio`` in blocks of ``sizes`` (cycled) stamped on its sample counter."""
    out, pos, k = [], 0, 0
    while pos < len(audio):
        block = audio[pos:pos + sizes[k % len(sizes)]]
        out.append(resampler.push(stamp0 + pos * 10**9 // resampler.in_rate, block))
        pos, k = pos + len(block), k + 1
    return out


@pytest.mark.parametrize("rate", RATES)
def test_block_by_block_equals_the_one_shot_filter(rate):
    rng = np.random.default_rng(rate)
    audio = rng.standard_normal((rate // 2, 2)).astype(np.float32)
    resampler = StreamResampler(rate, 16000, 2)
    blocks = stream_blocks(resampler, audio, [int(n) for n in rng.integers(1, 700, 50)])
    out = np.concatenate([block for _, block in blocks])
    whole = upfirdn(resampling_filter(resampler.up, resampler.down), audio, resampler.up,
                    resampler.down, axis=0)
    assert len(out) == 8000  # every output whose input has arrived, no more
    np.testing.assert_allclose(out, whole[:len(out)], atol=2e-6)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 1000), min_size=1, max_size=20),
       rate=st.sampled_from(RATES))
def test_output_stamps_continue_the_input_timeline(sizes, rate):
    resampler = StreamResampler(rate, 16000, 1)
    blocks = stream_blocks(resampler, np.zeros((rate // 4, 1), np.float32), sizes)
    done = 0
    for stamp, block in blocks:
        assert abs(stamp - (T0 + done * 62500)) <= 1  # 62500 ns per 16 kHz sample
        done += len(block)


def test_a_tone_keeps_its_frequency_level_and_delay():
    t = np.arange(48000) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[:, None]
    resampler = StreamResampler(48000, 16000, 1)
    out = np.concatenate([b for _, b in stream_blocks(resampler, tone, [384])])[:, 0]
    assert resampler.delay_s == pytest.approx(0.000625)
    expected = 0.5 * np.sin(2 * np.pi * 1000 * (np.arange(16000) / 16000 - resampler.delay_s))
    np.testing.assert_allclose(out[200:], expected[200:], atol=2e-3)


def test_48k_blocks_of_8_ms_give_one_chunk_each_with_their_own_stamps():
    """Jittered stamps, two streams joining at different blocks: the same chunk stamps."""
    fmt = AudioFormat(sample_rate=48000, sample_format="S16LE")
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal((384 * 40, 1))).astype(np.float32)
    stamps = [T0 + k * 8_000_000 + int(rng.integers(-200_000, 200_000)) for k in range(40)]
    payloads = [encode_pcm(audio[k * 384:(k + 1) * 384], fmt) for k in range(40)]
    early, late = PcmChunkStream(fmt), PcmChunkStream(fmt)
    chunks = {"early": [], "late": []}
    for k, (stamp, payload) in enumerate(zip(stamps, payloads)):
        chunks["early"] += early.push(stamp, payload)
        if k >= 7:
            chunks["late"] += late.push(stamp, payload)
    assert [c.stamp_ns for c in chunks["early"]] == stamps
    assert [c.stamp_ns for c in chunks["late"]] == stamps[7:]
    assert all(c.audio.shape == (128, 1) for c in chunks["early"])
    assert not early.drops and not late.drops


def test_a_gap_restarts_the_filter_and_the_stream_keeps_time():
    fmt = AudioFormat(sample_rate=48000)
    block = encode_pcm(np.full((480, 1), 0.1, np.float32), fmt)  # 10 ms blocks
    stream = PcmChunkStream(fmt)
    chunks = []
    for k in list(range(10)) + list(range(30, 40)):  # 200 ms lost in between
        chunks += stream.push(T0 + k * 10_000_000, block)
    assert stream.guard.stats.gaps == 1 and not stream.drops
    # 400 ms in 50 chunks: the gap is silence on the 16 kHz grid, and later audio keeps its time
    assert [c.stamp_ns for c in chunks] == [T0 + k * 8_000_000 for k in range(50)]
    assert all(not c.audio.any() for c in chunks[13:37])  # 104-296 ms
    assert all(c.audio[20:].min() > 0.09 for c in chunks[:12] + chunks[38:])


@pytest.mark.parametrize("rate", [44101, 383999])
def test_a_rate_with_no_practical_ratio_is_a_counted_bad_info(rate):
    stream = PcmChunkStream(AudioFormat())
    assert adopt_format(stream, AudioInfoMsg(sample_rate=rate), "audio_info") == []
    assert stream.drops == {"bad_info": 1} and stream.format == AudioFormat()
    with pytest.raises(PcmError, match=f"{rate} Hz"):
        StreamResampler(rate, 16000, 1)


def test_switching_rates_mid_stream_follows_the_new_format():
    """A new rate restarts the conversion; the same info repeated (latched) changes nothing."""
    fmt48 = AudioFormat(sample_rate=48000)
    rng = np.random.default_rng(2)
    blocks = [encode_pcm(rng.uniform(-0.5, 0.5, (384, 1)).astype(np.float32), fmt48)
              for _ in range(5)]
    once, repeated = PcmChunkStream(AudioFormat()), PcmChunkStream(AudioFormat())
    silence = encode_pcm(np.zeros((128, 1), np.float32), AudioFormat())
    chunks = {"once": once.push(T0, silence), "repeated": repeated.push(T0, silence)}
    once.set_format(fmt48)
    repeated.set_format(fmt48)
    for k, block in enumerate(blocks, start=1):
        chunks["once"] += once.push(T0 + k * 8_000_000, block)
        repeated.set_format(AudioFormat(sample_rate=48000))
        chunks["repeated"] += repeated.push(T0 + k * 8_000_000, block)
    assert [c.stamp_ns for c in chunks["once"]] == [T0 + k * 8_000_000 for k in range(6)]
    for a, b in zip(chunks["once"], chunks["repeated"]):
        np.testing.assert_array_equal(a.audio, b.audio)
    assert not once.drops and not repeated.drops


def test_a_huge_block_at_a_low_rate_is_bounded():
    """1 kHz upsamples 16 x: a 1 MiB block would be 8.7 min of audio, more than any block."""
    fmt = AudioFormat(sample_rate=1000, sample_format="S16LE")
    stream = PcmChunkStream(fmt)
    assert stream.push(T0, b"\0" * (1 << 20)) == [] and stream.drops == {"oversized": 1}
    chunks = stream.push(T0, encode_pcm(np.full((32000, 1), 0.1, np.float32), fmt))  # 32 s
    assert len(chunks) == 32000 * 16 // 128  # causal: nothing waits for later input
    assert all(np.isfinite(c.audio).all() for c in chunks)
