"""
Training examples: speech plus noise at a drawn SNR, then a random gain with clip protection.

Example ``i`` of a split is a pure function of ``(seed, split, i)``: its seed sequence spawns one
independent generator per part (speech, noise, room, levels), so examples can be built in any
order or in parallel, and a part that is skipped (no pyroomacoustics) does not shift the others.
SNR is measured over the whole example: speech power (the mic-side image when reverberant)
over noise power. ``clean`` is the level-matched target: ``[L]`` for SE, ``[2, L]`` for SS.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from kb_ros.data import human, noise, rooms, text, tts

SNR_RANGE_DB = {"se": (-5.0, 10.0), "ss": (10.0, 20.0)}  # SS: mild background under 2 talkers
SIR_RANGE_DB = (-5.0, 5.0)  # SS: second talker relative to the first
LEVEL_RANGE_DBFS = (-35.0, -15.0)  # mixture RMS after the random gain
PEAK_LIMIT = 0.99
NOISE_COMBOS = (("white",), ("pink",), ("babble",), ("ego",), ("babble", "ego"), ("pink", "ego"))
BABBLE_TALKERS = (3, 6)
BABBLE_FESTIVAL_SHARE = 0.15  # festival is ~20x slower than espeak-ng; babble needs many talkers
TEXT_POOL = 100_000  # sentence ids drawn per split
SENTENCE_RMS = 0.1
TASKS = ("se", "ss")
HUMAN_SPLIT = "human"  # real speech (``human``) over the test split's noises; SE only
SPLITS = (*text.SPLITS, HUMAN_SPLIT)


def tts_split(split: str) -> str:
    """Return the TTS split whose voices and texts a split uses (the test split's for human)."""
    return "test" if split == HUMAN_SPLIT else split


class Example(NamedTuple):
    """One mixture ``[L]``, its target ``[L]`` (SE) or ``[2, L]`` (SS), and its recipe."""

    mix: np.ndarray
    clean: np.ndarray
    meta: dict


def example_seeds(seed: int, split: str, index: int) -> list[np.random.SeedSequence]:
    """Four independent seed sequences (speech, noise, room, levels) for one example."""
    split_code = int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "little")
    return np.random.SeedSequence([seed, split_code, index]).spawn(4)


def power(x: np.ndarray) -> float:
    """Mean square, in float64 so long float32 signals sum exactly enough for 0.01 dB."""
    return float(np.mean(np.asarray(x, dtype=np.float64) ** 2))


def scale_to_snr(speech: np.ndarray, noise_signal: np.ndarray, snr_db: float) -> np.ndarray:
    """``noise_signal`` scaled so that speech power over noise power is ``snr_db``."""
    factor = np.sqrt(power(speech) / (power(noise_signal) * 10 ** (snr_db / 10) + 1e-20))
    return (noise_signal * factor).astype(np.float32)


def apply_gain(mix: np.ndarray, clean: np.ndarray,
               level_dbfs: float) -> tuple[np.ndarray, np.ndarray, float]:
    """
    Scale mixture and target together to the RMS level, lowered if a peak would pass 0.99.

    One factor for both keeps the SNR; returns the scaled pair and the gain applied in dB.
    """
    gain = 10 ** (level_dbfs / 20) / (np.sqrt(power(mix)) + 1e-12)
    peak = max(np.abs(mix).max(), np.abs(clean).max()) * gain
    if peak > PEAK_LIMIT:
        gain *= PEAK_LIMIT / peak
    return ((mix * gain).astype(np.float32), (clean * gain).astype(np.float32),
            float(20 * np.log10(gain)))


def speech_track(utterance: Callable[[], tuple[np.ndarray, int]], n: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """
    Concatenate utterances at equal RMS; returns ``n`` samples and the utterances' ids.

    ``utterance()`` gives the next one and its id. They follow a 0-0.3 s lead-in, each with a
    0.1-0.5 s pause; the last is cut at ``n``.
    """
    pieces = [np.zeros(int(rng.uniform(0.0, 0.3) * tts.SAMPLE_RATE), np.float32)]
    ids: list[int] = []
    length = len(pieces[0])
    while length < n:
        audio, utterance_id = utterance()
        pause = np.zeros(int(rng.uniform(0.1, 0.5) * tts.SAMPLE_RATE), np.float32)
        pieces += [audio * (SENTENCE_RMS / np.sqrt(power(audio))), pause]
        ids.append(utterance_id)
        length += len(audio) + len(pause)
    track = np.concatenate(pieces)
    return np.pad(track, (0, max(n - len(track), 0)))[:n].astype(np.float32), ids


def tts_sentence(voice: tts.Voice, split: str, rng: np.random.Generator,
                 cache_dir: Path | None = None) -> tuple[np.ndarray, int]:
    """Read a random sentence of the split in ``voice``; returns the audio and its text id."""
    text_id = int(rng.integers(TEXT_POOL))
    return tts.synthesize(voice, text.sentence(split, text_id), cache_dir), text_id


def noise_track(kinds: tuple[str, ...], split: str, n: int, rng: np.random.Generator,
                exclude: tuple[str, ...] = (), cache_dir: Path | None = None
                ) -> tuple[np.ndarray, dict]:
    """
    Sum the noise kinds at random relative levels (-6..6 dB); returns unit-RMS audio, recipe.

    Babble talkers are voices of the same split other than ``exclude``.
    """
    total = np.zeros(n, np.float32)
    meta: dict = {"types": list(kinds)}
    for kind in kinds:
        if kind == "babble":
            talkers, names = [], []
            for _ in range(int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))):
                voice = tts.pick_voice(split, rng, exclude + tuple(names), BABBLE_FESTIVAL_SHARE)
                text_id = int(rng.integers(TEXT_POOL))  # one sentence, looped by noise.babble
                talkers.append(tts.synthesize(voice, text.sentence(split, text_id), cache_dir))
                names.append(voice.name)
                meta.setdefault("babble", []).append({"voice": voice.name, "text_id": text_id})
            part = noise.babble(talkers, n, rng)
        elif kind == "ego":
            part = noise.ego_noise(n, rng, tts.SAMPLE_RATE)
        elif kind in ("white", "pink"):
            part = getattr(noise, kind)(n, rng)
        else:
            raise ValueError(f"unknown noise type {kind!r}; expected one of {noise.NOISE_TYPES}")
        total += part * np.float32(10 ** (rng.uniform(-6.0, 6.0) / 20))
    return total / np.float32(np.sqrt(power(total)) + 1e-12), meta


def make_example(split: str, index: int, seed: int, n: int, task: str = "se",
                 reverb_prob: float = 0.0, cache_dir: Path | None = None) -> Example:
    """
    Make example ``index`` of ``split``: ``n``-sample mixture, target(s) and recipe.

    SE: one talker, noise from ``NOISE_COMBOS`` at SNR uniform in [-5, 10] dB. SS: two
    different talkers (the second at -5..5 dB) over noise at 10..20 dB. With probability
    ``reverb_prob`` the talkers are reverberated (skipped, and recorded so, without
    pyroomacoustics); the target is then the direct+early image (see ``rooms``).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    speech_ss, noise_ss, room_ss, level_ss = example_seeds(seed, split, index)
    speech_rng, noise_rng = np.random.default_rng(speech_ss), np.random.default_rng(noise_ss)
    room_rng, level_rng = np.random.default_rng(room_ss), np.random.default_rng(level_ss)

    talkers: list[np.ndarray] = []
    meta: dict = {"index": index, "voices": [], "text_ids": []}
    if split == HUMAN_SPLIT:
        if task != "se":
            raise ValueError(f"the {HUMAN_SPLIT} split has one speaker: task se only")
        speech, ids = speech_track(lambda: human.utterance(speech_rng), n, speech_rng)
        talkers.append(speech)
        meta.update(voices=[human.VOICE], clip_ids=[ids])
        split = tts_split(split)  # noises and babble talkers come from the test split
    for _ in range(len(talkers), 1 if task == "se" else 2):
        voice = tts.pick_voice(split, speech_rng, tuple(meta["voices"]))
        speech, ids = speech_track(lambda: tts_sentence(voice, split, speech_rng, cache_dir), n,
                                   speech_rng)
        talkers.append(speech)
        meta["voices"].append(voice.name)
        meta["text_ids"].append(ids)
    if task == "ss":
        sir_db = level_rng.uniform(*SIR_RANGE_DB)
        talkers[1] = talkers[1] * np.float32(
            np.sqrt(power(talkers[0]) / power(talkers[1]) * 10 ** (sir_db / 10)))
        meta["sir_db"] = round(float(sir_db), 3)

    targets, images = talkers, talkers
    meta["reverb"] = None
    if room_rng.random() < reverb_prob:
        if rooms.available():
            images, targets, meta["reverb"] = rooms.reverberate(talkers, room_rng,
                                                                tts.SAMPLE_RATE)
        else:
            meta["reverb"] = "skipped: pyroomacoustics not installed"

    kinds = NOISE_COMBOS[noise_rng.integers(len(NOISE_COMBOS))]
    noise_signal, meta["noise"] = noise_track(kinds, split, n, noise_rng, tuple(meta["voices"]),
                                              cache_dir)
    speech_sum = np.sum(images, axis=0)
    snr_db = float(level_rng.uniform(*SNR_RANGE_DB[task]))
    mix = speech_sum + scale_to_snr(speech_sum, noise_signal, snr_db)
    clean = np.stack(targets) if task == "ss" else targets[0]
    mix, clean, gain_db = apply_gain(mix, clean, level_rng.uniform(*LEVEL_RANGE_DBFS))
    meta.update(snr_db=round(snr_db, 3), gain_db=round(gain_db, 3))
    return Example(mix, clean, meta)
