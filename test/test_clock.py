"""Chunk clock and re-chunking: exact stamps for any block size, format and channel count."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kb_ros.audio.clock import CHUNK_FRAMES, ChunkClock, InputChunker, Rechunker, StampGuard
from kb_ros.audio.pcm import AudioFormat, PcmError, decode_pcm, encode_pcm
from kb_ros.audio.stream import PcmChunkStream

NS_PER_SAMPLE = 62_500  # 1e9 / 16000, exact
T0 = 1_700_000_000 * 10**9 + 1234 * NS_PER_SAMPLE


def stream_in_blocks(rechunker, audio, block, t0=T0):
    out = []
    for i in range(0, len(audio), block):
        out += rechunker.push(t0 + i * NS_PER_SAMPLE, audio[i:i + block])
    return out


def test_chunk_clock_is_exact_and_drift_free():
    clock = ChunkClock(T0)
    assert clock.stamp_ns(1) - clock.stamp_ns(0) == 8_000_000
    assert clock.stamp_ns(1_000_000) - T0 == 8_000 * 10**9
    assert clock.chunks_between(clock.stamp_ns(3), clock.stamp_ns(10) + 1000) == 7


@pytest.mark.parametrize("block", [1, 7, 128, 160, 441, 1000])
@pytest.mark.parametrize("channels", [1, 2])
def test_rechunker_keeps_every_sample_at_its_stamp(block, channels):
    rng = np.random.default_rng(block)
    audio = rng.standard_normal((5000, channels)).astype(np.float32)
    chunks = stream_in_blocks(Rechunker(channels), audio, block)
    # Chunks lie on the absolute 128-sample grid; the lead-in before T0 is zero-padded.
    lead = (T0 // NS_PER_SAMPLE) % CHUNK_FRAMES
    assert all(c.stamp_ns % (CHUNK_FRAMES * NS_PER_SAMPLE) == 0 for c in chunks)
    assert [c.stamp_ns for c in chunks] == [T0 - lead * NS_PER_SAMPLE + k * 8_000_000
                                            for k in range(len(chunks))]
    joined = np.concatenate([c.audio for c in chunks])
    assert np.all(joined[:lead] == 0)
    n = min(len(audio), len(joined) - lead)
    np.testing.assert_array_equal(joined[lead:lead + n], audio[:n])
    assert len(chunks) == (lead + len(audio)) // CHUNK_FRAMES


def test_two_rechunkers_joining_at_different_blocks_agree_on_stamps():
    audio = np.arange(160 * 50, dtype=np.float32)[:, None]
    early = stream_in_blocks(Rechunker(), audio, 160)
    late = stream_in_blocks(Rechunker(), audio[160 * 17:], 160, T0 + 160 * 17 * NS_PER_SAMPLE)
    early_by_stamp = {c.stamp_ns: c.audio for c in early}
    for chunk in late[1:]:
        np.testing.assert_array_equal(chunk.audio, early_by_stamp[chunk.stamp_ns])


def test_rechunker_fills_gaps_with_silence_and_keeps_time():
    audio = np.ones((160 * 10, 1), np.float32)
    r = Rechunker()
    chunks = []
    for i in range(10):
        if i == 4:
            continue  # one lost 160-frame block
        chunks += r.push(T0 + i * 160 * NS_PER_SAMPLE, audio[i * 160:(i + 1) * 160])
    assert r.stats.gaps == 1 and r.stats.gap_frames_filled == 160
    joined = np.concatenate([c.audio for c in chunks])
    lead = (T0 // NS_PER_SAMPLE) % CHUNK_FRAMES
    assert np.all(joined[lead + 640:lead + 800] == 0)
    assert np.all(joined[lead + 800:] == 1)
    stamps = [c.stamp_ns for c in chunks]
    assert np.all(np.diff(stamps) == 8_000_000)


def test_rechunker_resyncs_on_backwards_jump_and_long_gap():
    r = Rechunker()
    block = np.ones((160, 1), np.float32)
    r.push(T0, block)
    r.push(T0 - 10**9, block)
    r.push(T0 + 60 * 10**9, block)
    assert r.stats.resyncs == 2


def test_rechunker_tolerates_jittery_stamps():
    audio = np.ones((160 * 20, 1), np.float32)
    rng = np.random.default_rng(0)
    r = Rechunker()
    chunks = []
    for i in range(20):
        jitter = int(rng.integers(-40, 40)) * NS_PER_SAMPLE
        stamp = T0 + i * 160 * NS_PER_SAMPLE + jitter * (i > 0)
        chunks += r.push(stamp, audio[i * 160:(i + 1) * 160])
    assert r.stats.gaps == 0 and r.stats.resyncs == 0
    assert np.all(np.diff([c.stamp_ns for c in chunks]) == 8_000_000)


def test_input_chunker_passes_chunks_through_with_their_own_stamps():
    chunker = InputChunker()
    odd_stamp = T0 + 12345  # not on any grid
    out = chunker.push(odd_stamp, np.zeros((128, 1), np.float32))
    assert [c.stamp_ns for c in out] == [odd_stamp]


@pytest.mark.parametrize("fmt", ["F32LE", "S16LE"])
@pytest.mark.parametrize("channels", [1, 2])
def test_pcm_round_trip(fmt, channels):
    audio = np.random.default_rng(1).uniform(-0.9, 0.9, (128, channels)).astype(np.float32)
    af = AudioFormat(channels=channels, sample_format=fmt)
    payload = encode_pcm(audio, af)
    assert len(payload) == 128 * af.bytes_per_frame
    tol = 0 if fmt == "F32LE" else 1 / 32768
    np.testing.assert_allclose(decode_pcm(payload, af), audio, atol=tol)


def test_s16_interleaving_is_frame_major():
    af = AudioFormat(channels=2, sample_format="S16LE")
    payload = np.array([1, -1, 2, -2], "<i2").tobytes()
    np.testing.assert_array_equal(decode_pcm(payload, af) * 32768, [[1, -1], [2, -2]])


def test_pcm_rejects_bad_payloads():
    af = AudioFormat(channels=2, sample_format="F32LE")
    with pytest.raises(PcmError, match="whole number"):
        decode_pcm(b"\0" * 12, af)
    with pytest.raises(PcmError, match="NaN"):
        decode_pcm(np.array([np.nan, 0], "<f4").tobytes(), af)
    with pytest.raises(PcmError, match="sample_format"):
        AudioFormat(sample_format="U8").validate()


def test_pcm_chunk_stream_counts_drops_and_rechunks_s16_stereo():
    stream = PcmChunkStream(AudioFormat(channels=2, sample_format="S16LE"))
    fmt = stream.format
    audio = np.full((160, 2), 0.25, np.float32)
    chunks = []
    for i in range(8):
        chunks += stream.push(T0 + i * 160 * NS_PER_SAMPLE, encode_pcm(audio, fmt))
    assert len(chunks) == (8 * 160 + (T0 // NS_PER_SAMPLE) % 128) // 128
    assert chunks[-1].audio.shape == (128, 2)
    assert stream.push(T0, b"\1\2\3") == [] and stream.drops["bad_payload"] == 1
    assert stream.push(0, encode_pcm(audio, fmt)) == [] and stream.drops["bad_stamp"] == 1
    assert stream.push(T0, b"\0" * (2 << 20)) == [] and stream.drops["oversized"] == 1
    with pytest.raises(PcmError, match="44101"):
        stream.set_format(AudioFormat(sample_rate=44101))


@settings(max_examples=60, deadline=None)
@given(blocks=st.lists(st.integers(1, 400), min_size=1, max_size=40),
       channels=st.integers(1, 3))
def test_rechunker_property_conserves_samples(blocks, channels):
    r = Rechunker(channels)
    total, out = 0, []
    for size in blocks:
        out += r.push(T0 + total * NS_PER_SAMPLE, np.ones((size, channels), np.float32))
        total += size
    out += r.flush()
    lead = (T0 // NS_PER_SAMPLE) % CHUNK_FRAMES
    assert len(out) == -(-(lead + total) // CHUNK_FRAMES)
    assert sum(float(c.audio.sum()) for c in out) == pytest.approx(total * channels)
    assert np.all(np.diff([c.stamp_ns for c in out]) == 8_000_000)


def test_stamp_guard_admits_the_timeline_with_jitter_and_gaps():
    guard = StampGuard()
    stamps = [T0 + k * 160 * NS_PER_SAMPLE for k in range(20)]
    stamps[5] += 40 * NS_PER_SAMPLE  # jitter within tolerance
    del stamps[10:12]  # two lost blocks: a 320-frame gap
    assert [guard.admit(s, 160) for s in stamps] == [None] * len(stamps)
    assert (guard.stats.gaps, guard.stats.gap_frames, guard.stats.reanchors) == (1, 320, 0)


@pytest.mark.parametrize("bad_stamp,reason", [
    (0, "bad_stamp"), (-8_000_000, "bad_stamp"),
    (T0 + 3 * 8_000_000, "stamp_step_back"),  # a duplicate of chunk 3
    (T0 - 86_400 * 10**9, "stamp_step_back"),  # a day in the past
    (T0 + 86_400 * 10**9, "stamp_jump"),  # a day in the future
    (T0 + 10 * 8_000_000 + 2 * 10**9, "stamp_jump"),  # 2 s ahead: more than a gap
])
def test_stamp_guard_drops_a_single_stamp_off_the_timeline(bad_stamp, reason):
    guard = StampGuard()
    for k in range(10):
        assert guard.admit(T0 + k * 8_000_000, 128) is None
    assert guard.admit(bad_stamp, 128) == reason
    for k in range(10, 20):  # the stream goes on undisturbed
        assert guard.admit(T0 + k * 8_000_000, 128) is None
    assert guard.stats.blocks == 20 and guard.stats.reanchors == 0


def test_stamps_past_int32_seconds_are_dropped_not_published():
    """
    A block whose chunks would carry a ``sec`` past int32 is a bad stamp, even as the first.

    ``sec = 2**31 - 1`` with ``nanosec`` up to ``2**32 - 1`` is valid CDR.
    """
    last_s = (2**31 - 1) * 10**9
    stream = PcmChunkStream(AudioFormat())
    block = encode_pcm(np.zeros((160, 1), np.float32), AudioFormat())
    assert stream.push(last_s + 2**32 - 1, block[:512]) == []
    assert stream.push(last_s - 5_000_000, block) == []  # its last 5 ms lie past the range
    assert stream.drops["bad_stamp"] == 2
    chunks = stream.push(last_s - 20_000_000, block)  # ends 10 ms before the last second
    assert chunks and all(c.stamp_ns // 10**9 < 2**31 for c in chunks)


@pytest.mark.parametrize("jump_s", [-60.0, -0.5, 5.0])
def test_stamp_guard_reanchors_once_a_new_timeline_is_confirmed(jump_s):
    """A restarted capture or a replayed bag: the first two blocks go, then it follows."""
    guard = StampGuard()
    for k in range(10):
        guard.admit(T0 + k * 8_000_000, 128)
    restart = T0 + int(jump_s * 1e9)
    outcomes = [guard.admit(restart + k * 8_000_000, 128) for k in range(5)]
    assert outcomes[:2] == ["stamp_jump" if jump_s > 0 else "stamp_step_back"] * 2
    assert outcomes[2:] == [None] * 3 and guard.stats.reanchors == 1


def test_stamp_guard_scattered_bogus_stamps_never_reanchor():
    guard = StampGuard()
    rng = np.random.default_rng(0)
    dropped = 0
    for k in range(200):
        assert guard.admit(T0 + k * 8_000_000, 128) is None
        if k % 3 == 0:  # a bogus stamp after every third chunk, each somewhere else
            dropped += guard.admit(int(rng.integers(1, 2**62)), 128) is not None
    assert dropped == 67 and guard.stats.reanchors == 0
