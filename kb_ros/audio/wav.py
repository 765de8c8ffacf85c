"""
WAV files in and out, as the float32 ``[frames, channels]`` arrays used everywhere else.

Reading accepts any PCM (8/16/24/32/64-bit) or float WAV that ``scipy.io.wavfile`` parses and
turns every failure (not a WAV, corrupted header, truncated data, a sample rate outside
1-384 kHz, NaN or Inf samples) into one ``WavError`` that names the file, so callers never see a
traceback from deep inside the parser nor pass garbage on.
"""

from __future__ import annotations

import os
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly

from kb_ros.audio.pcm import SAMPLE_RATE_RANGE

WRITE_FORMATS = ("S16LE", "F32LE")
STREAMED_RIFF_SIZE = 0x7FFF0000


class WavError(ValueError):
    """A file that is not a readable WAV, or audio that cannot be written as one."""


def _to_float32(data: np.ndarray) -> np.ndarray:
    """
    Scale integer PCM to [-1, 1).

    scipy left-justifies 24-bit data in int32, so one full-scale divide per container is exact.
    """
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(data.dtype, np.integer):
        return (data / float(2 ** (8 * data.dtype.itemsize - 1))).astype(np.float32)
    if np.issubdtype(data.dtype, np.floating):
        with np.errstate(over="ignore"):  # float64 beyond float32 becomes Inf: refused after
            return data.astype(np.float32)
    raise WavError(f"unsupported sample type {data.dtype}")


def _streamed_header(path: Path) -> bool:
    """Return True when the RIFF size is a 'length unknown' placeholder (>= 0x7fff0000 bytes)."""
    with open(path, "rb") as fid:
        riff_size = int.from_bytes(fid.read(8)[4:8], "little")
    return riff_size >= STREAMED_RIFF_SIZE


def _data_cut_short(path: Path) -> bool:
    """
    Return True when the ``data`` chunk declares more bytes than the file holds after it.

    scipy reads such a last chunk up to the end of the file without a word.
    """
    size = path.stat().st_size
    with open(path, "rb") as fid:
        offset = 12
        while offset + 8 <= size:
            fid.seek(offset)
            header = fid.read(8)
            chunk_size = int.from_bytes(header[4:8], "little")
            if header[:4] == b"data":
                return offset + 8 + chunk_size > size
            offset += 8 + chunk_size + chunk_size % 2
    return False


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Polyphase resampling along axis 0 (the rate ratio is reduced to lowest terms)."""
    if orig_rate == new_rate:
        return audio
    ratio = Fraction(int(new_rate), int(orig_rate))
    out = resample_poly(audio, ratio.numerator, ratio.denominator, axis=0)
    return out.astype(np.float32)


def read_wav(path: str | os.PathLike, sample_rate: int | None = 16000,
             mono: bool = False) -> tuple[np.ndarray, int]:
    """
    Read a WAV as float32 ``[frames, channels]`` and its rate.

    Resampled to ``sample_rate`` unless that is None; ``mono`` averages the channels (shape
    ``[frames, 1]``). Raises ``WavError`` for anything that is not a complete, valid WAV.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", wavfile.WavFileWarning)
            rate, data = wavfile.read(path)
    except OSError:
        raise
    except Exception as exc:  # the parser raises ValueError, struct.error, IndexError, ...
        raise WavError(f"{path}: not a readable WAV file ({exc})") from exc
    # scipy only warns on a short data chunk and returns part of it: a truncated file, unless the
    # header holds the placeholder size that streaming writers (sox, espeak-ng to a pipe) leave.
    # Other warnings (unknown chunks skipped) are harmless.
    short = any("EOF" in str(w.message) for w in caught) or _data_cut_short(path)
    if short and not _streamed_header(path):
        raise WavError(f"{path}: truncated WAV file (data ends before the size in its header)")
    if not SAMPLE_RATE_RANGE[0] <= rate <= SAMPLE_RATE_RANGE[1]:
        raise WavError(f"{path}: sample rate {rate} Hz is outside {SAMPLE_RATE_RANGE[0]}-"
                       f"{SAMPLE_RATE_RANGE[1]} Hz")
    audio = _to_float32(data if data.ndim == 2 else data[:, None])
    if not np.isfinite(audio).all():
        raise WavError(f"{path}: holds NaN or Inf samples")
    if mono and audio.shape[1] > 1:
        audio = audio.mean(axis=1, keepdims=True)
    if sample_rate is not None and sample_rate != rate:
        audio, rate = resample(audio, rate, sample_rate), sample_rate
    return np.ascontiguousarray(audio, dtype=np.float32), int(rate)


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = 16000,
              sample_format: str = "S16LE") -> Path:
    """
    Write ``[frames]`` or ``[frames, channels]`` audio in [-1, 1]; returns the path.

    ``S16LE`` is 16-bit PCM (clipped), ``F32LE`` 32-bit float: the names of ``kb_ros.audio.pcm``.
    """
    if sample_format not in WRITE_FORMATS:
        raise WavError(f"sample_format must be one of {WRITE_FORMATS}, got {sample_format!r}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim not in (1, 2) or not np.all(np.isfinite(audio)):
        raise WavError(f"audio must be finite and 1-D or 2-D, got shape {audio.shape}")
    if sample_format == "S16LE":
        audio = np.round(np.clip(audio, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, int(sample_rate), audio)
    return path
