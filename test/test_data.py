"""Synthetic data: text and voice splits, TTS, noise, mixtures, corpus, and the shipped demo."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kb_ros.audio.wav import read_wav
from kb_ros.data import human, mixtures, noise, rooms, text, tts
from kb_ros.data.corpus import build_corpus, check_disjoint, split_contents, versions
from kb_ros.data.sample import SAMPLES_DIR, build_demo

HAVE_ESPEAK = shutil.which("espeak-ng") is not None
HAVE_FESTIVAL = shutil.which("text2wave") is not None
needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng not installed "
                                  "(apt-get install espeak-ng)")
needs_festival = pytest.mark.skipif(not HAVE_FESTIVAL, reason="festival not installed (apt-get "
                                    "install festival festvox-kallpc16k festvox-us-slt-hts)")
needs_tts = pytest.mark.skipif(not (HAVE_ESPEAK and HAVE_FESTIVAL),
                               reason="espeak-ng and festival are both needed")


def _snr_db(mix: np.ndarray, clean: np.ndarray) -> float:
    return 10 * np.log10(mixtures.power(clean) / mixtures.power(mix - clean))


# --- text -----------------------------------------------------------------------------------

def test_sentences_deterministic_and_split_disjoint() -> None:
    assert text.sentence("train", 7) == text.sentence("train", 7)
    by_split = {s: {text.sentence(s, i) for i in range(250)} for s in text.SPLITS}
    assert len(by_split["train"]) > 240  # the grammar rarely repeats itself
    for split, sentences in by_split.items():
        assert all(text.split_of(s) == split for s in sentences)
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]


def test_sentence_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        text.sentence("dev", 0)
    with pytest.raises(ValueError):
        text.sentence("train", -1)


# --- voices and TTS -------------------------------------------------------------------------

def test_voice_splits_disjoint() -> None:
    names = {s: {v.name for v in tts.voices(s)} for s in text.SPLITS}
    assert all(names.values())
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    assert not names["val"] & names["test"]
    variants = {s: {v.base.split("+")[1] for v in tts.voices(s) if v.engine == "espeak"}
                for s in text.SPLITS}
    assert not variants["train"] & variants["val"] and not variants["train"] & variants["test"]
    assert not variants["val"] & variants["test"]
    assert tts.voice_by_name("festival:slt:w1.00") in tts.voices("test")


@needs_espeak
def test_espeak_variants_exist() -> None:
    """espeak-ng silently ignores an unknown variant, so check the files it would load."""
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    data_dir = Path(out.split("Data at:")[1].strip())
    for variants in tts.ESPEAK_VARIANTS.values():
        for variant in variants:
            assert (data_dir / "voices" / "!v" / variant).exists(), variant


def _check_speech(audio: np.ndarray) -> None:
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.5 < len(audio) / tts.SAMPLE_RATE < 10
    assert np.sqrt(np.mean(audio ** 2)) > 0.02
    # 16 kHz speech: energy below 4 kHz dominates, and nothing aliased is left near Nyquist
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    assert spectrum[: spectrum.size // 2].sum() > 0.8 * spectrum.sum()


@needs_espeak
def test_espeak_tts(tmp_path: Path) -> None:
    voice = tts.voices("test")[-1]
    assert voice.engine == "espeak"
    audio = tts.synthesize(voice, text.sentence("test", 0), tmp_path)
    _check_speech(audio)
    np.testing.assert_array_equal(tts.synthesize(voice, text.sentence("test", 0), tmp_path),
                                  audio)
    assert len(list(tmp_path.rglob("*.npy"))) == 1


@needs_festival
def test_festival_tts(tmp_path: Path) -> None:
    audio = tts.synthesize(tts.voice_by_name("festival:slt:w1.00"), "Hello from the robot.",
                           tmp_path)
    _check_speech(audio)


def test_tts_missing_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tts.tool_versions()  # fill its cache first: the patch must not leak into later cache keys
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(tts.TtsError, match="not installed"):
        tts.synthesize(tts.voices("train")[-1], "Anything at all.", tmp_path)


# --- noise and mixing -----------------------------------------------------------------------

def test_noise_unit_rms_and_seeded() -> None:
    n = 16000
    talkers = [np.random.default_rng(i).standard_normal(5000) for i in range(3)]
    makers = {"white": lambda r: noise.white(n, r), "pink": lambda r: noise.pink(n, r),
              "ego": lambda r: noise.ego_noise(n, r),
              "babble": lambda r: noise.babble(talkers, n, r)}
    for name, make in makers.items():
        a, b = make(np.random.default_rng(9)), make(np.random.default_rng(9))
        assert a.shape == (n,) and a.dtype == np.float32, name
        assert np.sqrt(np.mean(a.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
        np.testing.assert_array_equal(a, b)
    spectrum = np.abs(np.fft.rfft(noise.pink(n, np.random.default_rng(0)))) ** 2
    assert spectrum[10:100].mean() > 10 * spectrum[1000:8000].mean()  # 1/f: ~100x in theory


def test_scale_to_snr_and_gain() -> None:
    rng = np.random.default_rng(0)
    speech, hiss = rng.standard_normal(8000).astype(np.float32), rng.standard_normal(8000)
    for snr in (-5.0, 0.0, 10.0):
        mix = speech + mixtures.scale_to_snr(speech, hiss, snr)
        assert _snr_db(mix, speech) == pytest.approx(snr, abs=0.01)
        loud_mix, loud_clean, _ = mixtures.apply_gain(mix, speech, 0.0)  # would clip: limited
        assert max(np.abs(loud_mix).max(), np.abs(loud_clean).max()) <= mixtures.PEAK_LIMIT + 1e-6
        assert _snr_db(loud_mix, loud_clean) == pytest.approx(snr, abs=0.01)


@needs_tts
def test_examples_hit_snr_and_reproduce(tmp_path: Path) -> None:
    for index in range(4):
        ex = mixtures.make_example("val", index, seed=3, n=16000, cache_dir=tmp_path)
        assert ex.mix.shape == ex.clean.shape == (16000,)
        assert _snr_db(ex.mix, ex.clean) == pytest.approx(ex.meta["snr_db"], abs=0.1)
        assert -5.0 <= ex.meta["snr_db"] <= 10.0
        assert np.abs(ex.mix).max() <= mixtures.PEAK_LIMIT + 1e-6
        again = mixtures.make_example("val", index, seed=3, n=16000, cache_dir=tmp_path)
        np.testing.assert_array_equal(again.mix, ex.mix)
        assert again.meta == ex.meta
    other = mixtures.make_example("val", 0, seed=4, n=16000, cache_dir=tmp_path)
    assert not np.array_equal(other.mix, mixtures.make_example(
        "val", 0, seed=3, n=16000, cache_dir=tmp_path).mix)


@needs_tts
def test_separation_example(tmp_path: Path) -> None:
    ex = mixtures.make_example("test", 1, seed=0, n=16000, task="ss", cache_dir=tmp_path)
    assert ex.clean.shape == (2, 16000) and len(set(ex.meta["voices"])) == 2
    assert _snr_db(ex.mix, ex.clean.sum(0)) == pytest.approx(ex.meta["snr_db"], abs=0.1)


@needs_tts
@pytest.mark.skipif(not human.available(), reason=f"no recordings in {human.SPEECH_DIR} "
                    f"(apt-get install {human.PACKAGE})")
def test_human_split_is_real_speech_over_test_noises(tmp_path: Path) -> None:
    recordings = human.clips()
    for index in range(3):
        ex = mixtures.make_example("human", index, seed=0, n=32000, cache_dir=tmp_path)
        assert ex.meta["voices"] == [human.VOICE] and ex.meta["text_ids"] == []
        assert _snr_db(ex.mix, ex.clean) == pytest.approx(ex.meta["snr_db"], abs=0.1)
        babble = {t["voice"] for t in ex.meta["noise"].get("babble", [])}
        assert babble <= {voice.name for voice in tts.voices("test")}
        # the target opens with the first listed recording, scaled, after a lead-in <= 0.3 s
        first = recordings[ex.meta["clip_ids"][0][0]]
        lead = int(np.argmax(np.correlate(ex.clean[:4800 + len(first)], first, "valid")))
        piece = ex.clean[lead:lead + len(first)]
        assert np.corrcoef(piece, first)[0, 1] > 0.999
        again = mixtures.make_example("human", index, seed=0, n=32000, cache_dir=tmp_path)
        np.testing.assert_array_equal(again.mix, ex.mix)
    with pytest.raises(ValueError, match="task se only"):
        mixtures.make_example("human", 0, seed=0, n=16000, task="ss", cache_dir=tmp_path)


@pytest.mark.skipif(not rooms.available(), reason="pyroomacoustics not installed (optional)")
def test_reverberation() -> None:
    source = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    full, early, info = rooms.reverberate([source], np.random.default_rng(1))
    assert full[0].shape == early[0].shape == (8000,)
    assert rooms.RT60_RANGE[0] <= info["rt60_s"] <= rooms.RT60_RANGE[1]
    assert not np.allclose(full[0], early[0])


# --- corpus and demo ------------------------------------------------------------------------

@needs_tts
def test_build_corpus_same_with_workers(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    one = build_corpus(tmp_path / "a", "test", 3, 0.5, seed=1, workers=1, cache_dir=cache)
    two = build_corpus(tmp_path / "b", "test", 3, 0.5, seed=1, workers=2, cache_dir=cache)
    a, b = np.load(one), np.load(two)
    assert a["mix"].shape == a["clean"].shape == (3, 8000) and a["mix"].dtype == np.float32
    np.testing.assert_array_equal(a["mix"], b["mix"])
    np.testing.assert_array_equal(a["clean"], b["clean"])
    recipe = json.loads((tmp_path / "a" / "test.json").read_text())
    assert recipe["seed"] == 1 and len(recipe["examples"]) == 3
    assert recipe["versions"]["espeak-ng"] and recipe["versions"]["festival"]


@needs_tts
def test_built_splits_share_no_voice_and_no_sentence(tmp_path: Path) -> None:
    """The held-out test split: no talker, babble talker or sentence of train or val in it."""
    cache = tmp_path / "cache"
    for split in text.SPLITS:
        build_corpus(tmp_path / "data", split, 3, 0.5, seed=2, workers=1, cache_dir=cache)
    assert check_disjoint(tmp_path / "data") == ["test", "train", "val"]
    test_recipe = json.loads((tmp_path / "data" / "test.json").read_text())
    voices, sentences = split_contents(test_recipe)
    assert voices <= {voice.name for voice in tts.voices("test")}
    assert sentences and all(text.split_of(s) == "test" for s in sentences)
    babble = {t["voice"] for ex in test_recipe["examples"] for t in ex["noise"].get("babble", [])}
    assert babble <= voices  # babble talkers are counted as voices of the split
    shutil.copy(tmp_path / "data" / "val.json", tmp_path / "data" / "test.json")
    with pytest.raises(ValueError, match="test and val share"):
        check_disjoint(tmp_path / "data")


def test_shipped_demo_files() -> None:
    recipe = json.loads((SAMPLES_DIR / "demo_recipe.json").read_text())
    mix, rate = read_wav(SAMPLES_DIR / "demo_mix.wav", sample_rate=None)
    clean, _ = read_wav(SAMPLES_DIR / "demo_clean.wav", sample_rate=None)
    assert rate == 16000 and mix.shape == clean.shape and mix.shape[1] == 1
    assert 8.0 <= len(mix) / rate <= 10.5
    assert (SAMPLES_DIR / "demo_mix.wav").stat().st_size < 400_000
    assert _snr_db(mix[:, 0], clean[:, 0]) == pytest.approx(recipe["snr_db"], abs=0.1)
    assert tts.voice_by_name(recipe["voice"]) in tts.voices("test")
    assert all(text.split_of(t["text"]) == "test" for t in recipe["texts"])


@needs_tts
def test_demo_rebuilds(tmp_path: Path) -> None:
    """Same engines and generators: the same audio (within 16-bit rounding of libm noise)."""
    shipped = json.loads((SAMPLES_DIR / "demo_recipe.json").read_text())
    keys = ("espeak-ng", "festival", "text_version", "tts_version")
    if any(shipped["versions"][k] != versions()[k] for k in keys):
        pytest.skip(f"engine versions differ from the shipped recipe: {versions()}")
    assert build_demo(tmp_path, cache_dir=tmp_path / "cache")["texts"] == shipped["texts"]
    for name in ("demo_mix.wav", "demo_clean.wav"):
        rebuilt, _ = read_wav(tmp_path / name, sample_rate=None)
        original, _ = read_wav(SAMPLES_DIR / name, sample_rate=None)
        np.testing.assert_allclose(rebuilt, original, atol=2 / 32768)
