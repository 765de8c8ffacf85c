"""Training: PIT loss, hint schedules, tiny real runs (SE and SS) on synthesized corpora, ship."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kb_ros.data.corpus import build_corpus
from kb_ros.models.checkpoint import load_checkpoint, save_model
from kb_ros.models.config import get_config
from kb_ros.models.filterbank import HOP
from kb_ros.models.model import StreamingModel
from kb_ros.training.hint_schedule import (FIXED_DELAY, VARIABLE_AGE, gather_used_hint,
                                           sample_hint_ages, schedule_for)
from kb_ros.training.losses import pit_si_snr, si_snr
from kb_ros.training.ship import ship, source_polarity
from kb_ros.training.trainer import STATE_FILE, TrainSettings, train

needs_tts = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("text2wave")),
                               reason="espeak-ng and festival are needed to synthesize a corpus")
# one grid block of width 8: trains in well under a second per step on one core
TINY = {"emb_dim": 8, "lstm_hidden": 8, "n_blocks": 1, "memory_frames": 10}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_pit_si_snr_finds_the_best_assignment() -> None:
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 2, 4000, generator=gen)
    est = ref + 0.3 * torch.randn(3, 2, 4000, generator=gen)
    ordered = si_snr(est, ref).mean(-1)
    torch.testing.assert_close(pit_si_snr(est, ref), ordered)
    torch.testing.assert_close(pit_si_snr(est.flip(1), ref), ordered)  # outputs swapped
    assert (pit_si_snr(est.flip(1), ref) > si_snr(est.flip(1), ref).mean(-1) + 10).all()
    torch.testing.assert_close(pit_si_snr(est[:, :1], ref[:, :1]), si_snr(est, ref)[:, 0])
    with pytest.raises(ValueError):
        pit_si_snr(est, ref[:, :1])


def test_fixed_delay_schedule_gives_every_step_its_age() -> None:
    config = get_config("kb_d4")
    assert schedule_for(config) == FIXED_DELAY and schedule_for(get_config("kb")) == VARIABLE_AGE
    ages = sample_hint_ages(64, 30, config.min_age, config.max_age,
                            torch.Generator().manual_seed(1), schedule_for(config))
    assert (ages[:, :4] == -1).all() and (ages[:, 4:] == 4).all()  # as the paper: shift by D


def test_variable_schedule_covers_every_age_and_no_hint() -> None:
    config = get_config("kb")
    ages = sample_hint_ages(400, 40, config.min_age, config.max_age,
                            torch.Generator().manual_seed(2))
    assert set(ages.unique().tolist()) == {-1, *range(config.min_age, config.max_age + 1)}
    assert ((ages == -1).all(dim=1)).float().mean() > 0.1  # whole examples without hints
    assert (ages <= torch.arange(40)).all()  # no hint predates the stream


def test_gather_used_hint_takes_the_chunk_age_steps_back() -> None:
    hint = torch.arange(2 * 6 * HOP, dtype=torch.float32).reshape(2, 1, 6 * HOP)
    ages = torch.tensor([[-1, 1, 1, 0, 3, 2], [-1, -1, 2, 2, 2, 5]])
    used = gather_used_hint(hint, ages)
    for b in range(2):
        for t, age in enumerate(ages[b].tolist()):
            if age >= 0:
                torch.testing.assert_close(used[b, :, t * HOP:(t + 1) * HOP],
                                           hint[b, :, (t - age) * HOP:(t - age + 1) * HOP])


def _corpus(folder: Path, task: str) -> Path:
    for split, n in (("train", 4), ("val", 2)):
        build_corpus(folder, split, n, 1.0, seed=5, task=task, workers=1,
                     cache_dir=folder.parent / "tts_cache")
    return folder


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """Tiny real corpora: 4 training and 2 validation examples of 1 s, per task."""
    if not (shutil.which("espeak-ng") and shutil.which("text2wave")):
        pytest.skip("espeak-ng and festival are needed to synthesize a corpus")
    root = tmp_path_factory.mktemp("corpora")
    return {task: _corpus(root / task, task) for task in ("se", "ss")}


def _settings(preset: str, data: Path, out: Path, steps: int, **extra) -> TrainSettings:
    return TrainSettings(preset=preset, data_dir=data, out_dir=out, steps=steps, batch=4,
                         segment_s=0.5, lr=3e-3, val_every=steps // 2, checkpoint_every=10,
                         val_examples=2, threads=1, device="cpu",
                         overrides={**TINY, **extra.pop("overrides", {})}, **extra)


@needs_tts
@pytest.mark.parametrize("task", ["se", "ss"])
def test_tiny_training_run_lowers_the_loss(corpora, tmp_path, task: str) -> None:
    torch.manual_seed(0)
    best = train(_settings("small", corpora[task], tmp_path / "run", 40))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 20, 40]
    # from an untrained model's output to a useful one, on examples it never trained on
    assert history[-1]["val_si_snri"] > history[0]["val_si_snri"] + 3.0
    assert history[-1]["train_si_snr"] > history[1]["train_si_snr"]
    model, manifest = load_checkpoint(best)
    sources = 2 if task == "ss" else 1
    assert model.config.n_sources == sources
    assert model.config.name == ("small_ss" if task == "ss" else "small")
    assert manifest["recipe"]["loss"] == ("pit_si_snr" if task == "ss" else "si_snr")
    assert manifest["recipe"]["data_recipe"]["task"] == task
    assert manifest["metrics"]["val_si_snri"] == max(h["val_si_snri"] for h in history[1:])


@needs_tts
def test_fixed_delay_kb_trains_resumes_and_ships(corpora, tmp_path) -> None:
    """kb_d4 against a (tiny) frozen hint producer: schedule, resume, and the shipped manifest."""
    torch.manual_seed(1)
    producer = StreamingModel(get_config("large_cpu", **TINY, attn_heads=2, attn_window=4))
    save_model(producer, tmp_path / "large")
    data = tmp_path / "data"
    shutil.copytree(corpora["se"], data)
    run = tmp_path / "kb_d4"
    settings = _settings("kb_d4", data, run, 10, large_model=tmp_path / "large",
                         overrides={"fusion_after": (0,)})
    train(settings)
    first = torch.load(run / STATE_FILE, weights_only=True)
    assert first["step"] == 10 and first["config"]["min_age"] == first["config"]["max_age"] == 4
    settings.steps = 16
    train(settings)  # resumes from train_state.pt
    state = torch.load(run / STATE_FILE, weights_only=True)
    assert state["step"] == 16 and [h["step"] for h in state["history"]] == [0, 5, 10, 15, 16]
    manifest = ship(run, "kb_d4_tiny", models_dir=tmp_path / "shipped")
    recipe = manifest["recipe"]
    assert recipe["hint_schedule"]["p_no_hints"] == 0 and recipe["validation_age"] == 4
    assert recipe["hint_producers"] == [load_checkpoint(tmp_path / "large")[1]["model_id"]]
    assert recipe["trained_steps"] == 16 and "examples" not in recipe["data_recipe"]
    assert manifest["metrics"]["final_validation"]["step"] == 16
    assert "val_si_snri_no_hint" in manifest["metrics"]
    shipped, shipped_manifest = load_checkpoint(tmp_path / "shipped" / "kb_d4_tiny")
    assert shipped_manifest == manifest
    hints = np.load(data / f"hints_{recipe['hint_producers'][0]}_train.npy")
    assert hints.shape[:2] == (4, 1)


@needs_tts
def test_shipping_turns_an_inverted_device_model_the_right_way_up(corpora, tmp_path) -> None:
    """A mixer model (small_fast) trains; shipped inverted, its output comes out upright."""
    torch.manual_seed(2)
    run = tmp_path / "run"
    train(_settings("small_fast", corpora["se"], run, 30))
    model, _ = load_checkpoint(run / "best")
    trained = source_polarity(model, corpora["se"])[0]
    assert abs(trained) > 0.2  # it learnt something to be upright or inverted about
    with torch.no_grad():  # what an inverted training run would have left
        model.decoder.conv.weight.neg_()
        model.decoder.conv.bias.neg_()
    save_model(model, run / "best")
    manifest = ship(run, "tiny", models_dir=tmp_path / "shipped", data_dir=corpora["se"])
    assert manifest["recipe"]["polarity_flipped_sources"] == ([0] if trained > 0 else [])
    shipped, shipped_manifest = load_checkpoint(tmp_path / "shipped" / "tiny")
    assert shipped_manifest == manifest
    assert source_polarity(shipped, corpora["se"])[0] == pytest.approx(abs(trained), rel=1e-4)
