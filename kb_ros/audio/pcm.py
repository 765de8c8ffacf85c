"""
PCM formats of ``audio_common_msgs/AudioInfo`` and their byte codecs.

Audio travels as interleaved bytes inside ``AudioDataStamped``; everything inside the process is
float32 ``[frames, channels]`` in [-1, 1]. As in audio_common, ``coding_format`` names how the
bytes are coded and ``sample_format`` the PCM they decode to:

- ``wave`` + ``F32LE`` / ``S16LE``: raw PCM (4 / 2 bytes a sample).
- ``mulaw`` + ``S16LE``: ITU-T G.711 mu-law, one byte a sample, decoding to 16-bit linear PCM
  (GStreamer's ``audio/x-mulaw``); half the bytes of S16LE, for hints on a thin downlink.

``coding_format`` may carry ``;key=value`` fields after the coding (kb_ros hints name their
producer that way); only the part before the first ``;`` selects the codec.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_FORMATS = {"F32LE": np.dtype("<f4"), "S16LE": np.dtype("<i2")}
WAVE, MULAW = "wave", "mulaw"
CODINGS = (WAVE, MULAW)
# other spellings of raw PCM that publishers announce (matched after lower-casing)
WAVE_ALIASES = ("", "wav", "raw", "pcm")
S16_SCALE = 32768.0
SAMPLE_RATE_RANGE = (1000, 384000)  # Hz; anything else is a corrupt header or hostile info


class PcmError(ValueError):
    """A payload or format that cannot be decoded; the reason names what is wrong."""


class NonFiniteError(PcmError):
    """A float payload holding NaN or Inf samples (callers count it apart)."""


def _mulaw_tables() -> tuple[np.ndarray, np.ndarray]:
    """
    G.711 mu-law as lookup tables: every int16 to its code byte, every byte to its int16.

    The reference algorithm (14-bit magnitude, bias 33, segment = position of the top bit),
    evaluated once for all 65536 inputs, so coding a chunk is one indexing op each way.
    """
    linear = np.arange(-32768, 32768, dtype=np.int32) >> 2
    magnitude = np.minimum(np.abs(linear), 8158) + 33  # G.711 clips at 8159: same top code
    segment = np.floor(np.log2(magnitude)).astype(np.int32) - 5
    code = (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    encode = (code ^ np.where(linear < 0, 0x7F, 0xFF)).astype(np.uint8)
    byte = ~np.arange(256, dtype=np.int32) & 0xFF
    step = (((byte & 0x0F) << 3) + 0x84) << ((byte & 0x70) >> 4)
    decode = np.where(byte & 0x80, 0x84 - step, step - 0x84).astype(np.int16)
    return np.roll(encode, -32768), decode  # encode is indexed by the int16's bit pattern


_MULAW_ENCODE, _MULAW_DECODE = _mulaw_tables()
_MULAW_DECODE_F32 = _MULAW_DECODE.astype(np.float32) / np.float32(S16_SCALE)


@dataclass(frozen=True)
class AudioFormat:
    """The fields of ``audio_common_msgs/AudioInfo`` that describe a PCM stream."""

    channels: int = 1
    sample_rate: int = 16000
    sample_format: str = "F32LE"
    coding_format: str = WAVE

    @property
    def coding(self) -> str:
        """The codec part of ``coding_format`` (``wave`` or ``mulaw``)."""
        return self.coding_format.split(";", 1)[0]

    @property
    def bytes_per_frame(self) -> int:
        if self.coding == MULAW:
            return self.channels
        return self.channels * SAMPLE_FORMATS[self.sample_format].itemsize

    @property
    def bitrate(self) -> int:
        """Bits per second of the coded stream (``AudioInfo.bitrate``)."""
        return self.sample_rate * self.bytes_per_frame * 8

    def canonical(self) -> "AudioFormat":
        """
        Return this format spelt as kb_ros spells it.

        Other publishers announce ``WAVE``, ``s16le``, or raw PCM as ``raw``, ``pcm``, ``wav``
        or an empty coding; kb_ros fields after a ``;`` are kept as they are.
        """
        coding, _, fields = self.coding_format.partition(";")
        coding = coding.strip().lower()
        coding = WAVE if coding in WAVE_ALIASES else coding
        return AudioFormat(self.channels, self.sample_rate, self.sample_format.strip().upper(),
                           coding + (";" + fields if fields else ""))

    def validate(self) -> "AudioFormat":
        if self.coding not in CODINGS:
            raise PcmError(f"unknown coding_format {self.coding!r}; expected one of {CODINGS}")
        if self.sample_format not in SAMPLE_FORMATS:
            raise PcmError(f"unknown sample_format {self.sample_format!r}; "
                           f"expected one of {sorted(SAMPLE_FORMATS)}")
        if self.coding == MULAW and self.sample_format != "S16LE":
            raise PcmError(f"mulaw decodes to S16LE, not {self.sample_format}")
        if not 1 <= self.channels <= 64:
            raise PcmError(f"channels must be 1..64, got {self.channels}")
        if not SAMPLE_RATE_RANGE[0] <= self.sample_rate <= SAMPLE_RATE_RANGE[1]:
            raise PcmError(f"sample_rate {self.sample_rate} Hz is out of range")
        return self


def decode_pcm(payload: bytes | bytearray | memoryview, fmt: AudioFormat) -> np.ndarray:
    """
    Decode interleaved bytes to float32 ``[frames, channels]``.

    Raises PcmError for an unknown format, a byte count that is not a whole number of frames
    or non-finite float samples, so callers can count the drop.
    """
    dtype = SAMPLE_FORMATS.get(fmt.sample_format)
    coding = fmt.coding
    if dtype is None or coding not in CODINGS:
        raise PcmError(f"unknown format {coding!r} {fmt.sample_format!r}")
    nbytes = len(payload)
    if nbytes % fmt.bytes_per_frame:
        raise PcmError(f"{nbytes} bytes is not a whole number of {fmt.channels}-channel "
                       f"{coding} {fmt.sample_format} frames")
    if coding == MULAW:
        return _MULAW_DECODE_F32[np.frombuffer(payload, np.uint8)].reshape(-1, fmt.channels)
    samples = np.frombuffer(payload, dtype=dtype).reshape(-1, fmt.channels)
    if dtype.kind == "f":
        if not np.isfinite(samples).all():
            raise NonFiniteError("payload holds NaN or Inf samples")
        return samples.astype(np.float32)
    return samples.astype(np.float32) / S16_SCALE


def encode_pcm(audio: np.ndarray, fmt: AudioFormat) -> bytes:
    """Encode float32 ``[frames, channels]`` (or mono ``[frames]``) to interleaved bytes."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.shape[1] != fmt.channels:
        raise PcmError(f"audio has {audio.shape[1]} channels, format says {fmt.channels}")
    coding = fmt.coding
    if coding == WAVE and fmt.sample_format == "F32LE":
        return audio.astype("<f4").tobytes()
    if coding in CODINGS and fmt.sample_format == "S16LE":
        s16 = np.clip(np.round(audio * S16_SCALE), -32768, 32767).astype("<i2")
        return (_MULAW_ENCODE[s16.view(np.uint16)] if coding == MULAW else s16).tobytes()
    raise PcmError(f"cannot encode {coding!r} {fmt.sample_format!r}")
