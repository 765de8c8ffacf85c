"""
Real human speech for a test split: the spoken channel names that Debian's alsa-utils ships.

Every model here learns from TTS voices, so a score on TTS speech alone cannot say how the
product does on people. Nothing may be downloaded, but ``alsa-utils`` (on most Debian and Ubuntu
systems, for ``speaker-test``) installs eight short recordings of a human voice saying
"Front Left", "Rear Center" and so on (48 kHz). The ``human`` split mixes them, in random order
and with pauses like the TTS sentences, with the test split's noises: a small set (one speaker,
a few words) but real speech, never seen in training.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from kb_ros.audio.wav import read_wav
from kb_ros.data import tts

SPEECH_DIR = Path("/usr/share/sounds/alsa")
NOT_SPEECH = ("Noise.wav",)  # speaker-test's pink-noise file
PACKAGE = "alsa-utils"
VOICE = f"human:{PACKAGE}"  # the recipe's voice name for this speaker


def clip_paths(speech_dir: Path = SPEECH_DIR) -> list[Path]:
    """List the recordings of speech in ``speech_dir``, sorted; empty when it has none."""
    if not speech_dir.is_dir():
        return []
    return sorted(p for p in speech_dir.glob("*.wav") if p.name not in NOT_SPEECH)


def available(speech_dir: Path = SPEECH_DIR) -> bool:
    return bool(clip_paths(speech_dir))


@lru_cache(maxsize=2)
def clips(speech_dir: Path = SPEECH_DIR) -> tuple[np.ndarray, ...]:
    """Each recording as float32 mono at 16 kHz; raises ``FileNotFoundError`` without any."""
    paths = clip_paths(speech_dir)
    if not paths:
        raise FileNotFoundError(f"no human speech recordings in {speech_dir}: install "
                                f"{PACKAGE} (apt install {PACKAGE})")
    return tuple(read_wav(path, tts.SAMPLE_RATE, mono=True)[0][:, 0] for path in paths)


def utterance(rng: np.random.Generator, speech_dir: Path = SPEECH_DIR) -> tuple[np.ndarray, int]:
    """Pick a random recording; returns it and its index into ``clip_paths``."""
    recordings = clips(speech_dir)
    index = int(rng.integers(len(recordings)))
    return recordings[index], index
