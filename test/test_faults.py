"""
The fault-injection suite: every scenario of ``kb-ros faults`` on the real node processes.

Each scenario test runs through the same code as ``kb-ros faults`` and fails with the checks
its scenario failed. Once every scenario has run, a session-scoped collector writes
docs/RELIABILITY.md from the results (a partial run, e.g. ``-k``, leaves it alone). The other
tests check that the judging code catches what it must (a node reusing stale hints, one that
recovers late) on recordings built by hand, and the command line.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kb_ros.cli import faults_analysis as fa
from kb_ros.cli.faults_report import machine_description, render_markdown
from kb_ros.cli.faults_runner import domain_for, run_scenario
from kb_ros.cli.faults_scenarios import SCENARIOS
from kb_ros.cli.faults_tap import TapLog, Tapped
from kb_ros.cli.main import main
from kb_ros.transport.messages import AudioChunkMsg, DiagnosticArrayMsg, DiagnosticStatusMsg

DOC = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"
CHUNK_NS = 8_000_000
T0 = 1_700_000_000 * 10**9


@pytest.fixture(scope="session")
def collected():
    machine = machine_description()
    results = {}
    yield results
    if len(results) == len(SCENARIOS):
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(render_markdown([results[s.name] for s in SCENARIOS],
                                       "python3 -m pytest test/test_faults.py", machine))


@pytest.mark.timeout(420)
@pytest.mark.parametrize("index", range(len(SCENARIOS)), ids=[s.name for s in SCENARIOS])
def test_scenario(index, collected, tmp_path):
    scenario = SCENARIOS[index]
    result = run_scenario(scenario, domain_for(index), tmp_path)
    collected[scenario.name] = result
    json.dumps(result.as_dict())  # ``kb-ros faults --json`` prints every scenario's result
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.passed]
    assert not failed, f"{scenario.name} failed:\n" + "\n".join(failed)


# -- the judge, on hand-made recordings -------------------------------------------------------

def _recording(n_chunks, hint_stamps_at, hits_by_chunk):
    """
    Make a recording of ``n_chunks`` chunks taken 8 ms apart, hints delivered at given times.

    ``hint_stamps_at`` maps a chunk index (the delivery time: just before that chunk is taken)
    to the index of the chunk the hint is for; ``hits_by_chunk`` is the node's cumulative hit
    count, reported after every chunk.
    """
    silence = np.zeros(128, "<f4").tobytes()
    audio = TapLog("/kb/audio", [Tapped(T0 + k * CHUNK_NS, 0,
                                        AudioChunkMsg(T0 + k * CHUNK_NS, silence))
                                 for k in range(n_chunks)])
    enhanced = TapLog("/kb/enhanced", [Tapped(T0 + k * CHUNK_NS + 4_000_000, 0,
                                              AudioChunkMsg(T0 + k * CHUNK_NS, silence))
                                       for k in range(n_chunks)])
    hints = TapLog("/kb/hints", [Tapped(T0 + at * CHUNK_NS - 1000, 0,
                                        AudioChunkMsg(T0 + k * CHUNK_NS, silence))
                                 for at, k in hint_stamps_at])
    diagnostics = TapLog("/diagnostics", [
        Tapped(T0 + (k + 1) * CHUNK_NS, 0, DiagnosticArrayMsg(0, [DiagnosticStatusMsg(
            0, "small_node: boosting", "", "/kb/small_node",
            {"chunks": str(k + 1), "hits": str(hits)})]))
        for k, hits in enumerate(hits_by_chunk)])
    empty = TapLog("")
    return fa.Recording(audio, TapLog("/kb/audio_info"), enhanced, hints,
                        TapLog("/kb/hint_info"), empty, empty, diagnostics)


def _gap(hits_by_chunk):
    # Hints for chunks 0..19 arrive 3 chunks late; none for 20..59; from 60 on again.
    deliveries = [(k + 3, k) for k in range(20)] + [(k + 3, k) for k in range(60, 77)]
    rec = _recording(80, deliveries, hits_by_chunk)
    timeline = fa.Timeline.of(rec)
    replay = fa.replay_hint_use(rec, timeline, (1, 8))
    snapshots = fa.small_node_snapshots(rec)
    gap = fa.hint_gap(timeline, rec.hints.messages, snapshots, replay, T0 + 20 * CHUNK_NS,
                      T0 + 40 * CHUNK_NS)
    return gap, replay, snapshots


def test_replay_uses_each_hint_at_its_age_and_none_in_the_gap():
    _, replay, _ = _gap([0] * 80)
    assert replay[:3] == [None] * 3 and replay[3:23] == [3] * 20
    assert replay[23:63] == [None] * 40 and replay[63:80] == [3] * 17


def test_a_node_that_follows_the_rules_passes():
    honest = [max(0, min(k - 2, 20)) + max(0, k - 62) for k in range(80)]
    gap, _, snapshots = _gap(honest)
    assert gap.last_possible_old_use == 22 and gap.first_possible_new_use == 63
    assert gap.stop_lag_chunks == 0 and gap.extra_hits_in_gap == 0
    assert gap.replay_precision_hits == 0
    assert fa.hits_between(snapshots, 23, 63) == 0
    assert gap.recovery_chunks == 0


def test_a_node_reusing_a_stale_hint_is_caught():
    stale = [max(0, min(k - 2, 20)) + max(0, min(k, 39) - 22) + max(0, k - 62)
             for k in range(80)]  # keeps "using" the last hint until chunk 39
    gap, _, snapshots = _gap(stale)
    assert gap.stop_lag_chunks == 17 and gap.extra_hits_in_gap == 17
    assert fa.hits_between(snapshots, 23, 63) == 16  # chunks 24..39


def test_a_node_boosted_late_after_the_gap_is_measured():
    late = [max(0, min(k - 2, 20)) + max(0, k - 92) for k in range(80)]  # never again
    gap, _, _ = _gap(late)
    assert gap.recovery_chunks is None
    slow = [max(0, min(k - 2, 20)) + max(0, k - 70) for k in range(80)]  # 8 chunks late
    gap, _, _ = _gap(slow)
    assert gap.recovery_chunks == 8


# -- command line ------------------------------------------------------------------------------

def test_cli_lists_scenarios_and_rejects_unknown_ones(capsys):
    assert main(["faults", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(s.name in listed for s in SCENARIOS)
    assert main(["faults", "--scenario", "no_such_fault"]) == 2
    assert "unknown scenario" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_cli_runs_a_scenario_to_json_and_markdown(tmp_path, capsys):
    doc = tmp_path / "RELIABILITY.md"
    code = main(["faults", "--scenario", "capture_mic_missing_exit", "--json",
                 "--doc", str(doc), "--out", str(tmp_path / "work")])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"]
    assert [s["name"] for s in report["scenarios"]] == ["capture_mic_missing_exit"]
    text = doc.read_text()
    assert "## capture_mic_missing_exit" in text and "1 of 1 scenarios passed" in text
    assert (tmp_path / "work" / "capture_mic_missing_exit" / "logs" / "capture_node.log").exists()


def _children(pid: int) -> set[int]:
    """Return the PIDs whose parent is ``pid`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.timeout(120)
def test_terminated_faults_run_stops_its_nodes_and_busy_loops(tmp_path):
    """SIGTERM (a supervisor, ``timeout``) unwinds ``kb-ros faults`` as Ctrl-C would."""
    proc = subprocess.Popen([sys.executable, "-m", "kb_ros.cli.main", "faults", "--scenario",
                             "cpu_overload", "--out", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        started: set[int] = set()
        while len(started) < 8 and time.monotonic() < deadline:  # 4 nodes, 4 busy loops
            started = _children(proc.pid)
            time.sleep(0.2)
        assert len(started) >= 8, f"only {len(started)} processes started"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while any(map(_alive, started)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in started if _alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
