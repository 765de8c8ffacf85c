"""
``kb-ros bench --quick --json --doc``: one real run, its report's contract and its document.

Speed is what the bench measures, not what this test checks: a loaded machine may be slow. The
test checks that every section ran on the real components and reported well-formed figures.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kb_ros.audio.clock import CHUNK_MS
from kb_ros.cli.bench_compute import QUICK_VARIANTS, budget_summary
from kb_ros.cli.bench_doc import PLOTS
from kb_ros.cli.bench_floor import wakeup_lateness_ms

REPO = Path(__file__).resolve().parents[1]
PERCENTILE_KEYS = ("small_compute_ms", "boosted_compute_ms", "large_compute_ms",
                   "node_path_ms", "e2e_latency_ms", "e2e_extra_latency_ms")


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    doc = tmp_path_factory.mktemp("bench") / "BENCHMARKS.md"
    result = subprocess.run([sys.executable, "-m", "kb_ros.cli.main", "bench", "--quick",
                             "--json", "--doc", str(doc)], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kb-ros bench" in result.stderr  # the progress bar goes to stderr, not stdout
    return json.loads(result.stdout), doc


def finite_numbers(value: object, path: str = "") -> list[str]:
    """Return the paths of every number in ``value`` that is not finite."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in finite_numbers(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in finite_numbers(v, f"{path}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [path]
    return []


@pytest.mark.timeout(900)
def test_report_has_the_documented_keys_with_finite_values(bench: tuple[dict, Path]) -> None:
    report, _ = bench
    assert finite_numbers(report) == []
    assert report["chunk_ms"] == CHUNK_MS and report["quick"] is True
    assert report["command"].startswith("kb-ros bench --quick --json")
    machine = report["machine"]
    assert isinstance(machine["cpu_model"], str) and machine["cpu_model"]
    assert isinstance(machine["cores"], int) and machine["cores"] >= 1
    assert isinstance(machine["torch"], str) and machine["torch"]
    assert len(machine["steal_pct"]) == 6  # one share per section, each a % or unknown
    assert all(pct is None or 0 <= pct <= 100 for pct in machine["steal_pct"].values())
    for key in PERCENTILE_KEYS:
        row = report[key]
        assert 0 < row["p50"] <= row["p99"], key
        assert row["p50_ratio"] == pytest.approx(row["p50"] / CHUNK_MS, abs=1e-3), key
        assert row["p99_ratio"] == pytest.approx(row["p99"] / CHUNK_MS, abs=1e-3), key
        assert row["cdf_ms"] == sorted(row["cdf_ms"]) and row["n"] > 0, key
    assert report["e2e_latency_ms"]["p50"] == pytest.approx(
        report["e2e_extra_latency_ms"]["p50"] + 12.0, abs=1e-3)
    assert isinstance(report["small_node_cpu_pct"], float) and report["small_node_cpu_pct"] > 0
    if (REPO / "kb_ros" / "cli" / "bench_streams.py").exists():
        assert isinstance(report["hint_server_max_streams"], int)
        assert report["hint_server_max_streams"] >= 0
    assert set(report["targets"]) == {"boosted_compute_p99_ms", "small_node_cpu_pct",
                                      "e2e_extra_latency_p99_ms", "hint_server_max_streams"}
    for target in report["targets"].values():
        below = target["measured"] < target["target"]
        reach = target["measured"] >= target["target"]
        assert target["met"] == (below if target["sense"] == "below" else reach)


@pytest.mark.timeout(900)
def test_sections_ran_on_the_real_components(bench: tuple[dict, Path]) -> None:
    report, _ = bench
    boosted = report["boosted_compute_ms"]
    assert boosted["macs_per_chunk"] > report["small_compute_ms"]["macs_per_chunk"] > 0
    assert boosted["ops_per_chunk"] > 0 and boosted["paper_macs_per_chunk"] == 2.68e6
    node = report["node_path_ms"]
    assert node["engine_compute_ms"]["count"] == node["chunks"]  # every chunk ran the model
    assert node["hints"] > 0
    assert node["input_stage_ms"]["48k"]["n"] == node["input_stage_ms"]["16k"]["n"] > 0
    e2e = report["e2e"]
    # every chunk small_node heard came out once, in order, stamped like its input
    assert e2e["chunks_out"] == e2e["chunks_in"] > 0
    assert e2e["missing_outputs"] == e2e["unexpected_outputs"] == 0 and e2e["in_order"]
    assert e2e["small_node"]["hit_rate"] > 0  # hints reached small_node over DDS and fused
    assert all(p["rss_mb"] > 0 for p in e2e["processes"].values())
    floor = report["machine_floor"]
    assert floor["wakeup_late_ms"]["n"] == round(1000 / CHUNK_MS)  # 1 s of paced waits
    work = floor["fixed_work"]
    assert work["back_to_back_ms"]["n"] == work["paced_ms"]["n"] == 100
    assert work["paced_slowdown"] == pytest.approx(
        work["paced_ms"]["cpu_p50"] / work["back_to_back_ms"]["cpu_p50"], rel=0.01)
    formats = {row["format"]: row for row in report["hint_bandwidth"]}
    assert formats["MULAW"]["payload_kbit_s"] == 128.0 and formats["S16LE"]["cdr_bytes"] > 256
    quality = report["hint_quality"]["sample"]["formats"]
    assert set(quality) == {"F32LE", "S16LE", "MULAW"}
    assert quality["MULAW"]["hint_snr_vs_float_db"] < quality["S16LE"]["hint_snr_vs_float_db"]
    assert report["hint_format_default"]["format"] in quality


@pytest.mark.timeout(900)
def test_doc_renders_with_its_plots(bench: tuple[dict, Path]) -> None:
    report, doc = bench
    text = doc.read_text()
    for heading in ("# kb_ros benchmarks", "## Targets", "## The machine's floor",
                    "## Compute per chunk",
                    "## Where the kb step's time goes", "## What a device model within",
                    "## The small node's per-chunk path", "## End-to-end latency",
                    "## Hint and audio bandwidth", "## Hint server"):
        assert heading in text
    assert report["command"] in text
    assert f"{report['boosted_compute_ms']['p50']:.3f}" in text
    assert "nan" not in text.lower().replace("nanosec", "")
    for name in PLOTS.values():
        png = doc.parent / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"]({name})" in text
    for line in text.splitlines():  # every table row has as many cells as its header
        if line.startswith("|"):
            assert line.count("|") == table_width(text, line), line


def test_wakeup_lateness_waits_for_each_deadline() -> None:
    start = time.monotonic()
    late = wakeup_lateness_ms(25)
    elapsed_ms = (time.monotonic() - start) * 1e3
    assert len(late) == 25 and elapsed_ms >= 25 * CHUNK_MS
    assert min(late) >= 0  # never returns before its deadline
    assert elapsed_ms == pytest.approx(25 * CHUNK_MS + late[-1], abs=1.0)


@pytest.mark.parametrize("per_op_us, projected", [(10.0, 75), (0.0, 0)],
                         ids=["fitted", "degenerate_fit"])
def test_budget_projection_survives_a_fit_with_no_cost_per_op(per_op_us: float,
                                                              projected: int) -> None:
    """Short, noisy runs can fit zero cost per op: the projection then names no op count."""
    rows = [{"variant": label, "ops_per_chunk": 50 * (k + 1), "macs_per_chunk": 1e6,
             "cpu_p50": 0.5, "cpu_p99": 0.6} for k, label in enumerate(QUICK_VARIANTS)]
    fit = {"fixed_ms": 0.0, "per_op_us": per_op_us, "per_frequency_scan_ms": 0.1,
           "p99_over_p50": 1.0 / 0.75}
    budget = budget_summary(rows, fit, dense_macs_per_ms=1e6)
    assert budget["max_ops_projected"]["0_frequency_scans"] == projected


def table_width(text: str, row: str) -> int:
    """Count the pipes of the header of the table ``row`` belongs to."""
    lines = text.splitlines()
    index = lines.index(row)
    while index > 0 and lines[index - 1].startswith("|"):
        index -= 1
    return lines[index].count("|")
