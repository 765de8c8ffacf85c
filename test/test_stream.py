"""PcmChunkStream: audio waits for its latched format; bad messages and infos are dropped."""

import numpy as np
import pytest

from kb_ros.audio.pcm import AudioFormat, encode_pcm
from kb_ros.audio.stream import PcmChunkStream
from kb_ros.nodes.common import adopt_format
from kb_ros.transport.messages import AudioInfoMsg

T0 = 1_700_000_000 * 10**9


def s16_chunks(n):
    fmt = AudioFormat(sample_format="S16LE")
    audio = np.linspace(-0.5, 0.5, 128 * n, dtype=np.float32)[:, None]
    return fmt, audio, [encode_pcm(audio[k * 128:(k + 1) * 128], fmt) for k in range(n)]


def test_audio_before_its_info_is_held_then_decoded_in_the_announced_format():
    fmt, audio, payloads = s16_chunks(5)
    stream = PcmChunkStream(hold_messages=32)
    held = [stream.push(T0 + k * 8_000_000, p) for k, p in enumerate(payloads[:3])]
    assert held == [[], [], []]
    chunks = stream.set_format(fmt) + stream.push(T0 + 3 * 8_000_000, payloads[3])
    assert [c.stamp_ns for c in chunks] == [T0 + k * 8_000_000 for k in range(4)]
    np.testing.assert_allclose(np.concatenate([c.audio for c in chunks]), audio[:512],
                               atol=1 / 32768)
    assert not stream.drops


def test_without_info_the_default_format_is_assumed_after_the_hold():
    assumed = []
    stream = PcmChunkStream(hold_messages=4, on_format_assumed=assumed.append)
    payload = encode_pcm(np.zeros((128, 1), np.float32), AudioFormat())
    out = [stream.push(T0 + k * 8_000_000, payload) for k in range(4)]
    assert out[:3] == [[], [], []] and len(out[3]) == 4
    assert assumed == [AudioFormat()]


def chunk_payload(k, fmt=AudioFormat()):
    return encode_pcm(np.full((128, 1), 0.01 * (k % 50), np.float32), fmt)


def test_hostile_messages_between_valid_chunks_are_dropped_and_counted():
    stream = PcmChunkStream(AudioFormat())
    hostile = [(T0, b"\1\2\3"),  # not whole frames
               (T0, np.full(128, np.nan, "<f4").tobytes()),
               (T0, np.full(128, np.inf, "<f4").tobytes()),
               (T0, b""),
               (T0, b"\0" * (10 << 20)),  # 10 MB
               (0, chunk_payload(0)),
               (T0 - 10**12, chunk_payload(0)),  # far past
               (T0 + 10**12, chunk_payload(0))]  # far future
    out = []
    for k in range(40):
        out += stream.push(T0 + k * 8_000_000, chunk_payload(k))
        if k >= 1:
            out += stream.push(T0 + (k - 1) * 8_000_000, chunk_payload(k - 1))  # duplicate
        stamp, payload = hostile[k % len(hostile)]
        out += stream.push(stamp, payload)
    assert [c.stamp_ns for c in out] == [T0 + k * 8_000_000 for k in range(40)]
    for k, chunk in enumerate(out):
        np.testing.assert_array_equal(chunk.audio, np.full((128, 1), 0.01 * (k % 50), np.float32))
    assert stream.drops == {"bad_payload": 5, "non_finite": 10, "empty": 5, "oversized": 5,
                            "bad_stamp": 5, "stamp_step_back": 39 + 5, "stamp_jump": 5}


def test_a_flood_of_repeats_costs_no_memory_and_no_output():
    stream = PcmChunkStream(AudioFormat())
    out = stream.push(T0, chunk_payload(0))
    for _ in range(12_500):  # a second of messages at 100x the chunk rate
        out += stream.push(T0, chunk_payload(0))
    out += stream.push(T0 + 8_000_000, chunk_payload(1))
    assert [c.stamp_ns for c in out] == [T0, T0 + 8_000_000]
    assert stream.drops == {"stamp_step_back": 12_500}


def test_held_audio_is_bounded_in_bytes_too():
    stream = PcmChunkStream(hold_messages=32)
    block = encode_pcm(np.zeros((8192, 1), np.float32), AudioFormat())  # 32 KiB
    outs = [stream.push(T0 + k * 8192 * 62_500, block) for k in range(40)]
    assert [len(o) > 0 for o in outs].index(True) == 31  # 32 blocks = 1 MiB: stop waiting
    assert stream.format_known


def test_finish_delivers_audio_still_waiting_for_its_format():
    assumed = []
    stream = PcmChunkStream(hold_messages=32, on_format_assumed=assumed.append)
    held = [stream.push(T0 + k * 8_000_000, chunk_payload(k)) for k in range(5)]
    assert held == [[]] * 5
    chunks = stream.finish()
    assert [c.stamp_ns for c in chunks] == [T0 + k * 8_000_000 for k in range(5)]
    assert assumed == [AudioFormat()] and stream.finish() == []


@pytest.mark.parametrize("info", [
    AudioInfoMsg(sample_rate=44101), AudioInfoMsg(sample_rate=4_000_000_000),
    AudioInfoMsg(sample_rate=0), AudioInfoMsg(channels=0), AudioInfoMsg(channels=10**6),
    AudioInfoMsg(sample_format="U8"), AudioInfoMsg(sample_format="F64LE"),
    AudioInfoMsg(coding_format="mp3"), AudioInfoMsg(coding_format="mulaw"),
])
def test_unusable_info_changes_nothing_and_is_counted(info):
    logged = []
    stream = PcmChunkStream(AudioFormat(), on_drop=lambda reason, detail: logged.append(reason))
    before = stream.format
    assert adopt_format(stream, info, "audio_info") == []
    assert stream.format == before and stream.drops == {"bad_info": 1}
    assert logged == ["bad_info"]
    assert len(stream.push(T0, chunk_payload(0))) == 1  # still decodes the announced format
