"""``kb-ros eval --table``: test-set scoring through the real chunk pipeline, and the page."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kb_ros.audio.clock import CHUNK_MS
from kb_ros.audio.wav import read_wav
from kb_ros.boosting.engine import ChunkEngine
from kb_ros.boosting.offline import run_pipeline
from kb_ros.cli.evaluate import OfflineOutput, full_sequence_outputs, score_output
from kb_ros.cli.results import ResultsOptions, write_results
from kb_ros.data import human
from kb_ros.data.corpus import build_corpus
from kb_ros.models.checkpoint import save_model
from kb_ros.models.config import get_config
from kb_ros.models.filterbank import OUTPUT_DELAY_SAMPLES
from kb_ros.models.model import StreamingModel
from kb_ros.models.shipped import load_model_and_manifest
from kb_ros.resources import demo_sample_path
from kb_ros.transport.emulated_link import LinkProfile

TINY = {"emb_dim": 8, "lstm_hidden": 8, "n_blocks": 1, "memory_frames": 10}
CHUNKS = 125  # 1 s examples


pytestmark = pytest.mark.usefixtures("one_thread")


def demo_audio(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    n = int(seconds * 16000)
    mix, _ = read_wav(demo_sample_path("mix"))
    clean, _ = read_wav(demo_sample_path("clean"))
    return mix[:n], clean[:n, 0]


def test_full_sequence_hints_equal_the_streamed_large_model() -> None:
    """Serving the large model's full-sequence output as hints changes nothing downstream."""
    mix, _ = demo_audio(1.0)
    kb, _ = load_model_and_manifest("kb")
    large, _ = load_model_and_manifest("large")
    link = LinkProfile(delay_ms=3 * CHUNK_MS)
    streamed = run_pipeline(mix, ChunkEngine(kb), ChunkEngine(large), link=link)
    offline = full_sequence_outputs(large, mix[None, :, 0])[0]
    served = run_pipeline(mix, ChunkEngine(kb), OfflineOutput(offline), link=link)
    np.testing.assert_allclose(served.hints, streamed.hints, rtol=0, atol=1e-5)
    np.testing.assert_allclose(served.enhanced, streamed.enhanced, rtol=0, atol=1e-5)
    assert served.counters.as_dict() == streamed.counters.as_dict()
    assert served.counters.age_histogram == {3: len(mix) // 128 - 3}


def test_scores_pick_the_source_order_and_undo_the_output_delay() -> None:
    rng = np.random.default_rng(0)
    refs = rng.standard_normal((16000, 2))
    mix = refs.sum(axis=1)
    estimate = np.roll(refs[:, ::-1] + 0.1 * rng.standard_normal((16000, 2)),
                       OUTPUT_DELAY_SAMPLES, axis=0)  # swapped outputs, delayed like a model's
    scores = score_output(estimate, refs, mix)
    assert scores["si_snri_db"] > 15 and scores["stoi"] > 0.9
    unprocessed = score_output(np.repeat(mix[:, None], 2, axis=1), refs, mix, delay=0)
    assert unprocessed["si_snri_db"] == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def table_inputs(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Synthesize a test split of two 1 s examples and make tiny untrained checkpoints."""
    if not (shutil.which("espeak-ng") and shutil.which("text2wave")):
        pytest.skip("espeak-ng and festival are needed to synthesize a test split")
    root = tmp_path_factory.mktemp("table")
    build_corpus(root / "data", "test", 2, 1.0, seed=3, workers=1, cache_dir=root / "tts")
    if human.available():
        build_corpus(root / "data", "human", 1, 1.0, seed=3, workers=1, cache_dir=root / "tts")
    torch.manual_seed(0)
    configs = {"small": get_config("small", **TINY),
               "large": get_config("large_cpu", **TINY, attn_heads=2, attn_window=4),
               "kb": get_config("kb", **TINY, fusion_after=(0,)),
               "kb_d4": get_config("kb_d4", **TINY, fusion_after=(0,)),
               # trained for ages 1..8 only, like the first shipped kb
               "kb_gc": get_config("kb_gc", **TINY, fusion_after=(0,), min_age=1)}
    models = {role: str(root / role) for role in configs}
    for role, config in configs.items():
        model = StreamingModel(config)
        with torch.no_grad():  # untrained fusions add nothing (zero output projection)
            for fusion in model.fusions:
                torch.nn.init.normal_(fusion.attention.proj.weight, std=0.3)
        save_model(model, models[role])
    return root / "data", {**models, "medium": str(root / "not_trained"), "small_gc": "no_such"}


def test_results_page_from_the_chunk_pipeline(table_inputs, tmp_path) -> None:
    data, models = table_inputs
    options = ResultsOptions(data, tmp_path / "docs" / "RESULTS.md", workers=1, models=models,
                             cache_dir=tmp_path / "cache", timing_steps=0, command="kb-ros test")
    rows = {r.row.label: r for r in write_results(options)}
    page = options.out.read_text()
    assert (tmp_path / "docs" / "RESULTS.png").stat().st_size > 10_000
    assert "![SI-SNRi" in page and "kb-ros test" in page and "disjoint from no other" in page
    for label in ("medium: same-size vanilla", "small_gc: GroupComm"):
        assert rows[label].status == "no checkpoint yet"
    assert rows["kb_gc, hint age 0"].status == "outside trained range 1..8"
    assert rows["kb_gc, hint age 6"].ok and "outside trained range 1..8" in page
    assert rows["mixture (unprocessed)"].means["si_snri_db"] == pytest.approx(0.0, abs=1e-9)
    no_hint = rows["kb, no hint"].means
    for age in (0, 1, 4, 8):
        row = rows[f"kb, hint age {age}"]
        # every chunk from the age-th on has its hint (age 0: the first chunk's hint arrives
        # before the matcher has seen any chunk, an unknown stamp)
        assert row.hint_hit_rate == pytest.approx((CHUNKS - max(age, 1)) / CHUNKS)
        assert row.means["si_snri_db"] != pytest.approx(no_hint["si_snri_db"], abs=1e-6)
    assert rows["kb_d4: fixed D = 4, age 4"].hint_hit_rate == pytest.approx((CHUNKS - 4) / CHUNKS)
    for row in rows.values():
        assert not row.ok or all(np.isfinite(v) for v in row.means.values() if v is not None)
    assert "not measured yet" in page  # no medium: that criterion cannot be judged
    cached = {p: p.stat().st_mtime_ns for p in options.cache_dir.iterdir()}
    again = {r.row.label: r.means for r in write_results(options)}
    assert again == {label: r.means for label, r in rows.items()}
    assert {p: p.stat().st_mtime_ns for p in options.cache_dir.iterdir()} == cached


@pytest.mark.skipif(not human.available(), reason=f"no recordings in {human.SPEECH_DIR} "
                    f"(apt-get install {human.PACKAGE})")
def test_results_page_scores_real_human_speech(table_inputs, tmp_path) -> None:
    data, models = table_inputs
    options = ResultsOptions(data, tmp_path / "RESULTS.md", workers=1, models=models,
                             cache_dir=tmp_path / "cache", timing_steps=0, command="kb-ros test")
    test_rows = {r.row.label: r.means for r in write_results(options)}
    page = options.out.read_text()
    section = page.split("## Quality on real human speech")[1].split("\n## ")[0]
    assert "human.npz`: 1 of 1 examples" in section and "alsa-utils" in section
    lines = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in
             section.splitlines() if line.startswith("| ")}
    assert lines["mixture (unprocessed)"][2] == "0.00"
    for label in ("small", "large (hint producer)", "kb, hint age 4", "kb, no hint"):
        human_score = float(lines[label][2])  # scored on other audio than the test split's
        assert np.isfinite(human_score)
        assert human_score != pytest.approx(test_rows[label]["si_snri_db"], abs=1e-3)
    assert lines["small_gc: GroupComm"][2] == "no checkpoint yet"
