"""WAV reading/writing: round trips, resampling, and clear errors for broken files."""

from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from kb_ros.audio.wav import WavError, read_wav, resample, write_wav


def _tone(n: int = 1600, rate: int = 16000, channels: int = 2) -> np.ndarray:
    t = np.arange(n) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * (c + 1) * t) for c in range(channels)], 1)


def test_round_trip_float32(tmp_path: Path) -> None:
    audio = _tone().astype(np.float32)
    write_wav(tmp_path / "a.wav", audio, 16000, "F32LE")
    back, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000 and back.dtype == np.float32 and back.shape == audio.shape
    np.testing.assert_array_equal(back, audio)


def test_round_trip_int16_and_mono(tmp_path: Path) -> None:
    audio = _tone()
    write_wav(tmp_path / "a.wav", audio)
    back, _ = read_wav(tmp_path / "a.wav")
    np.testing.assert_allclose(back, audio, atol=1 / 32768)
    mono, _ = read_wav(tmp_path / "a.wav", mono=True)
    assert mono.shape == (len(audio), 1)
    np.testing.assert_allclose(mono[:, 0], audio.mean(1), atol=1 / 32768)


def test_write_1d_and_clip(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", np.array([0.0, 2.0, -2.0], np.float32))
    back, _ = read_wav(tmp_path / "a.wav")
    assert back.shape == (3, 1)
    assert back[1, 0] == pytest.approx(32767 / 32768) and back[2, 0] == -1.0


@pytest.mark.parametrize("dtype,scale", [(np.uint8, None), (np.int16, 2 ** 15),
                                         (np.int32, 2 ** 31), (np.float64, None)])
def test_reads_pcm_and_float_types(tmp_path: Path, dtype: type, scale: int | None) -> None:
    ref = _tone(channels=1)[:, 0] * 0.9
    if dtype is np.uint8:
        data = np.round(ref * 127 + 128).astype(np.uint8)
    elif scale:
        data = np.round(ref * (scale - 1)).astype(dtype)
    else:
        data = ref.astype(dtype)
    wavfile.write(tmp_path / "a.wav", 16000, data)
    back, _ = read_wav(tmp_path / "a.wav")
    assert back.dtype == np.float32
    np.testing.assert_allclose(back[:, 0], ref, atol=1.5 / 128)


def test_resample_on_read(tmp_path: Path) -> None:
    wavfile.write(tmp_path / "a.wav", 22050, _tone(22050, 22050, 1).astype(np.float32))
    audio, rate = read_wav(tmp_path / "a.wav", sample_rate=16000)
    assert rate == 16000 and audio.shape == (16000, 1)
    native, rate = read_wav(tmp_path / "a.wav", sample_rate=None)
    assert rate == 22050 and native.shape == (22050, 1)
    spectrum = np.abs(np.fft.rfft(audio[:, 0]))
    assert np.argmax(spectrum) == 440  # 1 Hz bins over 1 s: the tone stays at 440 Hz


def test_resample_identity() -> None:
    x = np.ones((10, 1), np.float32)
    assert resample(x, 16000, 16000) is x


@pytest.mark.parametrize("cut", [0, 20, 30, 2000, 2001])
def test_truncated_files_raise(tmp_path: Path, cut: int) -> None:
    write_wav(tmp_path / "ok.wav", _tone())
    (tmp_path / "bad.wav").write_bytes((tmp_path / "ok.wav").read_bytes()[:cut])
    with pytest.raises(WavError, match="bad.wav"):
        read_wav(tmp_path / "bad.wav")


BAD_FMT = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\xff" * 16


@pytest.mark.parametrize("payload", [b"hello, not a wav file at all", b"RIFF" + b"\x00" * 100,
                                     BAD_FMT])
def test_corrupt_files_raise(tmp_path: Path, payload: bytes) -> None:
    (tmp_path / "bad.wav").write_bytes(payload)
    with pytest.raises(WavError):
        read_wav(tmp_path / "bad.wav")


def test_streamed_header_is_accepted(tmp_path: Path) -> None:
    """sox/espeak-ng writing to a pipe leave 0x7ffff000-style sizes; the audio is complete."""
    write_wav(tmp_path / "a.wav", _tone(channels=1))
    data = bytearray((tmp_path / "a.wav").read_bytes())
    data[4:8] = (0x7FFFF024).to_bytes(4, "little")
    data[40:44] = (0x7FFFF000).to_bytes(4, "little")
    (tmp_path / "s.wav").write_bytes(bytes(data))
    audio, _ = read_wav(tmp_path / "s.wav")
    assert audio.shape == (1600, 1)


def test_missing_file_is_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_wav(tmp_path / "nope.wav")


def test_write_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(WavError):
        write_wav(tmp_path / "a.wav", np.zeros((2, 2, 2)))
    with pytest.raises(WavError):
        write_wav(tmp_path / "a.wav", np.array([np.nan]))
    with pytest.raises(WavError):
        write_wav(tmp_path / "a.wav", np.zeros(4), sample_format="S24LE")


def _patched(tmp_path: Path, offset: int, value: int, size: int) -> Path:
    """Write a valid 16-bit WAV, then overwrite one header field."""
    write_wav(tmp_path / "ok.wav", _tone(channels=1))
    data = bytearray((tmp_path / "ok.wav").read_bytes())
    data[offset:offset + size] = value.to_bytes(size, "little")
    (tmp_path / "bad.wav").write_bytes(bytes(data))
    return tmp_path / "bad.wav"


@pytest.mark.parametrize("offset,value,size,match", [
    (40, 10**9, 4, "truncated"),  # data chunk claims 1 GB, the file ends after 3200 bytes
    (22, 0, 2, "not a readable"),  # 0 channels
    (22, 65535, 2, "not a readable"),  # 65535 channels
    (24, 0, 4, "not a readable"),  # 0 Hz
])
def test_hostile_headers_raise(tmp_path: Path, offset: int, value: int, size: int,
                               match: str) -> None:
    with pytest.raises(WavError, match=match):
        read_wav(_patched(tmp_path, offset, value, size))


@pytest.mark.parametrize("rate", [1, 999, 400_000])
def test_absurd_sample_rates_raise_before_resampling(tmp_path: Path, rate: int) -> None:
    """A 1 Hz header would otherwise resample 0.1 s of data into 25 million samples."""
    path = _patched(tmp_path, 24, rate, 4)
    data = bytearray(path.read_bytes())
    data[28:32] = (rate * 2).to_bytes(4, "little")  # byte rate consistent with the rate
    path.write_bytes(bytes(data))
    with pytest.raises(WavError, match="sample rate"):
        read_wav(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_samples_raise(tmp_path: Path, bad: float) -> None:
    wavfile.write(tmp_path / "a.wav", 16000, np.array([0.1, bad, 0.2], np.float32))
    with pytest.raises(WavError, match="NaN or Inf"):
        read_wav(tmp_path / "a.wav")
