"""
The byte codecs on the device's per-chunk path: G.711 mu-law hints and the one-pass CDR codec.

Each is checked against an independent implementation: mu-law against CPython's ``audioop``
(the reference G.711 tables), the CDR fast path against cyclonedds' generic codec and rosbags.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kb_ros.audio.pcm import AudioFormat, PcmError, decode_pcm, encode_pcm
from kb_ros.boosting.hint_format import (HINT_FORMATS, HintStreamInfo, hint_audio_format)
from kb_ros.boosting.hint_matcher import HintMatcher
from cyclonedds._clayer import ddspy_write  # the raw write: the only way to send bad bytes
from kb_ros.transport import qos
from kb_ros.transport.dds_backend import DdsBackend
from kb_ros.transport.dds_config import DdsConfig, build_config_xml
from kb_ros.transport.dds_types import (AudioDataStamped, MalformedSample, chunk_from_wire,
                                        chunk_to_wire)
from kb_ros.transport.messages import AUDIO_STAMPED, AudioChunkMsg, AudioInfoMsg
from kb_ros.transport.ros_args import RosArgs

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop")  # removed in Python 3.13: the test skips there

MULAW = hint_audio_format("MULAW", 1)
EVERY_INT16 = np.arange(-32768, 32768, dtype="<i2")


def test_mulaw_encodes_every_16_bit_sample_as_g711_does() -> None:
    audio = EVERY_INT16.astype(np.float32)[:, None] / 32768
    assert encode_pcm(audio, MULAW) == audioop.lin2ulaw(EVERY_INT16.tobytes(), 2)


def test_mulaw_decodes_every_byte_as_g711_does() -> None:
    expected = np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), "<i2")
    decoded = decode_pcm(bytes(range(256)), MULAW)
    np.testing.assert_array_equal(decoded[:, 0] * 32768, expected)


def test_mulaw_round_trip_error_is_relative_and_bounded() -> None:
    """G.711 keeps about 36 dB SNR on speech-like levels; silence stays silence."""
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((128 * 50, 2))).clip(-1, 1).astype(np.float32)
    fmt = hint_audio_format("MULAW", 2)
    payload = encode_pcm(audio, fmt)
    assert len(payload) == audio.size == len(audio) * fmt.bytes_per_frame
    decoded = decode_pcm(payload, fmt)
    snr = 10 * np.log10(np.sum(audio ** 2) / np.sum((decoded - audio) ** 2))
    assert 33 < snr < 40
    silence = decode_pcm(encode_pcm(np.zeros((128, 1), np.float32), MULAW), MULAW)
    assert np.all(silence == 0)
    assert fmt.bitrate == 2 * 16000 * 8


def test_mulaw_format_is_validated() -> None:
    with pytest.raises(PcmError, match="S16LE"):
        AudioFormat(sample_format="F32LE", coding_format="mulaw").validate()
    with pytest.raises(PcmError, match="coding_format"):
        AudioFormat(sample_format="S16LE", coding_format="mp3").validate()
    with pytest.raises(PcmError, match="whole number"):
        decode_pcm(b"\0" * 3, hint_audio_format("MULAW", 2))
    with pytest.raises(ValueError, match="hint format"):
        hint_audio_format("ALAW", 1)


@pytest.mark.parametrize(("coding", "sample", "expected"), [
    ("WAVE", "s16le", AudioFormat(sample_format="S16LE")),
    ("", "F32LE", AudioFormat()),
    ("raw", "f32le", AudioFormat()),
    (" PCM ", "S16LE", AudioFormat(sample_format="S16LE")),
    ("MULAW;model=x", "s16le",
     AudioFormat(sample_format="S16LE", coding_format="mulaw;model=x")),
])
def test_other_spellings_of_an_info_are_understood(coding, sample, expected) -> None:
    """Publishers other than kb_ros announce raw PCM in other cases and names."""
    assert AudioInfoMsg(1, 16000, sample, 0, coding).to_format() == expected


@pytest.mark.parametrize(("coding", "sample"), [("mp3", "S16LE"), ("wave", "S24LE"),
                                                ("wave", "int16")])
def test_what_is_not_raw_pcm_stays_refused(coding, sample) -> None:
    with pytest.raises(PcmError):
        AudioInfoMsg(1, 16000, sample, 0, coding).to_format()


@pytest.mark.parametrize("name", sorted(HINT_FORMATS))
def test_hint_info_announces_each_format_and_the_device_reads_it_back(name: str) -> None:
    fmt = hint_audio_format(name, 1)
    info = AudioInfoMsg.from_format(fmt)
    info.coding_format = HintStreamInfo("large-1", fmt.coding).coding_format()
    parsed = HintStreamInfo.parse(info.coding_format)
    assert parsed == HintStreamInfo("large-1", fmt.coding)
    announced = info.to_format()
    assert announced.coding == fmt.coding and announced.bitrate == info.bitrate
    hint = np.sin(np.linspace(0, 40, 128, dtype=np.float32))[:, None] * 0.05
    matcher = HintMatcher(1, 8, accepted_producers=frozenset({"large-1"}))
    matcher.on_chunk(1_000_000_000, hint)
    matcher.on_chunk(1_008_000_000, hint)
    assert matcher.offer_pcm(1_000_000_000, encode_pcm(hint, announced), announced,
                             parsed.model_id) is None
    # 7 bytes: not whole frames of 2 or 4 bytes; 7 mu-law samples are not a chunk
    assert matcher.offer_pcm(1_008_000_000, b"\0" * 7, announced, parsed.model_id) == (
        "wrong_size" if announced.bytes_per_frame == 1 else "bad_payload")
    matched = matcher.on_chunk(1_016_000_000, hint)
    assert matched is not None and matched.age_chunks == 2
    np.testing.assert_allclose(matched.audio, hint, atol=2e-3)


def test_unknown_hint_codings_are_not_kb_hints() -> None:
    assert HintStreamInfo.parse("mp3;kb_hint=1;model=x") is None
    assert HintStreamInfo.parse("wave;kb_hint=1;model=x") == HintStreamInfo("x")


@settings(max_examples=80, deadline=None)
@given(stamp_ns=st.integers(0, 2**31 * 1_000_000_000 - 1), data=st.binary(max_size=600),
       frame_id=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                        max_size=9))
def test_one_pass_cdr_equals_cyclonedds_generic_codec(stamp_ns: int, data: bytes,
                                                      frame_id: str) -> None:
    wire = chunk_to_wire(AudioChunkMsg(stamp_ns, data, frame_id))
    fast = wire.serialize()
    assert fast == AudioDataStamped.__idl__.serialize(wire, use_version_2=False)
    assert AudioDataStamped.deserialize(fast) == wire
    assert AudioDataStamped.deserialize(fast + b"\0" * (-len(fast) % 4)) == wire


@pytest.mark.parametrize("cut", [1, 10, 64, 70])
def test_truncated_cdr_is_a_malformed_sample_or_what_cyclonedds_makes_of_it(cut: int) -> None:
    """Lengths that do not add up leave the fast path; what cannot decode at all is flagged."""
    good = chunk_to_wire(AudioChunkMsg(5, b"\1" * 64, "mic")).serialize()
    truncated = good[:-cut]
    ours = AudioDataStamped.deserialize(truncated)
    try:
        expected = AudioDataStamped.__idl__.deserialize(truncated)
    except Exception:  # cyclonedds raises on some truncations, slices short on others
        assert isinstance(ours, MalformedSample) and ours.type_name == "AudioDataStamped"
    else:
        assert ours == expected
    assert chunk_from_wire(AudioDataStamped.deserialize(good)).data == b"\1" * 64


def test_a_malformed_sample_on_dds_is_dropped_counted_and_the_stream_goes_on() -> None:
    """A sample Python cannot decode reaches a real reader; the good samples around it pass."""
    config = DdsConfig(180 + os.getpid() % 20, build_config_xml(), "loopback only")
    received: list[AudioChunkMsg] = []
    reader_side = DdsBackend(RosArgs("reader", "/kb", log_level="error"), config)
    subscription = reader_side.create_subscription(AUDIO_STAMPED, "audio", received.append,
                                                   qos.AUDIO_SUB)
    writer_side = DdsBackend(RosArgs("writer", "/kb"), config)
    publisher = writer_side.create_publisher(AUDIO_STAMPED, "audio", qos.AUDIO_PUB)
    spinner = threading.Thread(target=reader_side.spin)
    spinner.start()
    try:
        deadline = time.monotonic() + 10
        while publisher.matched_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        publisher.publish(AudioChunkMsg(1_000, b"\1" * 8, "mic"))
        # Well-formed CDR (Cyclone checks that on write and on receipt) whose frame_id is not
        # UTF-8: a C++ writer can send it, Python cannot decode it.
        garbage = struct.pack("<4siII", b"\x00\x01\x00\x00", 0, 1_500, 3) + b"\xff\xfe\x00"
        garbage += b"\x00" + struct.pack("<I", 4) + b"\x00" * 4
        assert ddspy_write(publisher._writer._ref, garbage) >= 0
        publisher.publish(AudioChunkMsg(2_000, b"\2" * 8, "mic"))
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        reader_side.shutdown()
        spinner.join(timeout=5)
        writer_side.close()
    assert [m.stamp_ns for m in received] == [1_000, 2_000]
    assert subscription.malformed == 1
