"""
The fault scenarios: what each injects into the live graph and how its outcome is judged.

Each scenario streams the shipped noisy sample through the real node processes (capture_node
-> small_node, and -> link_node -> hint_node -> link_node -> small_node), injects one fault,
and is judged on the common checks (``faults_runner.stream_checks``) plus its own.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kb_ros.audio.clock import CHUNK_MS, SAMPLE_RATE
from kb_ros.cli import faults_analysis as fa
from kb_ros.cli.faults_runner import READY_TIMEOUT_S, ScenarioRun
from kb_ros.cli.faults_tap import TapLog

LINK_DELAY_MS = 8.0  # each way: hints come back 2 chunks + the large model's compute late
SEED = 7
RECOVERY_BOUND_CHUNKS = 25  # 200 ms: boosted again this soon after a usable hint is back
STOP_BOUND_CHUNKS = 1  # hint use ends within one chunk of the last usable hint
MAX_REPLAY_SLACK = 4  # chunks of measuring imprecision a hint-stop bound may absorb
HINT_FLUSH_NS = 500_000_000  # hints of a killed node still in flight are delivered by then
MISSING_DEVICE = "kb_ros_no_such_device"


@dataclass(frozen=True)
class Scenario:
    """
    One fault: how to drive the graph (``drive``) and what to check afterwards (``judge``).

    ``link`` holds link_node's parameters (None: no hint side at all); ``streams`` says whether
    the common per-chunk checks apply (a capture node that never opens its source streams
    nothing).
    """

    name: str
    title: str
    injected: str
    drive: Callable[[ScenarioRun], None]
    judge: Callable[[ScenarioRun], list[fa.Check]]
    link: dict | None = None
    small_node: bool = True
    small_params: dict = field(default_factory=dict)
    streams: bool = True


def _link(**params: object) -> dict:
    return {"uplink_delay_ms": LINK_DELAY_MS, "downlink_delay_ms": LINK_DELAY_MS, "seed": SEED,
            **params}


def _stream(seconds: float) -> Callable[[ScenarioRun], None]:
    """Drive: stream the first ``seconds`` of the sample, then let the outputs drain."""
    def drive(run: ScenarioRun) -> None:
        run.start_capture(wav=str(run.input_wav(seconds)))
        run.end_stream()
    return drive


def _hits_follow_arrivals(run: ScenarioRun) -> tuple[fa.Check, int]:
    """Compare the node's hit count with the replay of what arrived, and when."""
    timeline = run.timeline()
    replay = run.replay(timeline)
    replay_hits = sum(age is not None for age in replay)
    snapshots = run.snapshots()
    hits = snapshots[-1].hits if snapshots else 0
    n = len(timeline)
    tolerance = max(5, math.ceil(0.03 * n))
    run.figures["hit_rate"] = round(hits / n, 3) if n else None
    run.figures["replay_hit_rate"] = round(replay_hits / n, 3) if n else None
    return fa.Check("hits match the hints that arrived in time (matcher replay)",
                    abs(hits - replay_hits) <= tolerance,
                    f"node {hits} hits, replay of the recorded arrivals {replay_hits} "
                    f"(tolerance {tolerance})"), hits


def _counters_add_up(run: ScenarioRun) -> list[fa.Check]:
    """
    Every chunk is a hit or a miss; every delivered hint was used, late, a duplicate or invalid.

    Only hints still waiting for their chunk when the stream ended (at most max_age + the
    chunks a hint may wait ahead of its own) may be in none of those counts.
    """
    snapshots = run.snapshots()
    if not snapshots:
        return [fa.Check("counters add up", False, "no diagnostics from small_node")]
    final = snapshots[-1]
    delivered = len(run.recording.hints)
    accounted = sum(final.count(key) for key in ("hits", "late", "duplicates", "invalid"))
    waiting = delivered - accounted
    run.figures["hints_accounted"] = {
        "delivered": delivered, "used": final.hits, "late": final.count("late"),
        "duplicates": final.count("duplicates"), "invalid": final.count("invalid"),
        "left_waiting_at_end": waiting}
    return [
        fa.Check("hits + misses = chunks", final.hits + final.count("misses") == final.chunks,
                 f"hits {final.hits} + misses {final.count('misses')}, chunks {final.chunks}"),
        fa.Check("every delivered hint used, late, duplicate or invalid (by reason)",
                 0 <= waiting <= run.age_range[1] + run.max_early_chunks,
                 f"{delivered} delivered, {accounted} counted; {waiting} left waiting at the end "
                 f"(at most {run.age_range[1] + run.max_early_chunks} may)"),
    ]


# -- hint outages: a killed hint node, a dead link ---------------------------------------------

def _hint_gap_checks(run: ScenarioRun, fault_start_ns: int, fault_end_ns: int
                     ) -> list[fa.Check]:
    timeline = run.timeline()
    snapshots = run.snapshots()
    gap = fa.hint_gap(timeline, run.recording.hints.messages, snapshots, run.replay(timeline),
                      fault_start_ns, fault_end_ns)
    stop_lag, recovery = gap.stop_lag_chunks, gap.recovery_chunks
    # The replay times chunks from publish stamps; how far it and the node's counts differed
    # before the fault is this run's measuring precision, in hits (about one a chunk).
    slack = min(gap.replay_precision_hits, MAX_REPLAY_SLACK)
    run.figures["hint_gap"] = {
        "fault_at_chunk": gap.figures["fault_chunk"],
        "hints_absent_s": gap.figures["hint_outage_s"],
        "last_usable_old_hint_at_chunk": gap.last_possible_old_use,
        "last_hit_between_chunks": gap.last_actual_old_use,
        "first_usable_new_hint_at_chunk": gap.first_possible_new_use,
        "first_new_hit_between_chunks": gap.first_actual_new_use,
        "hits_beyond_the_usable_ones": gap.extra_hits_in_gap,
        "replay_precision_hits": gap.replay_precision_hits,
        "stop_lag_chunks_at_least": stop_lag,
        "recovery_chunks_at_most": recovery,
        "recovery_ms_at_most": None if recovery is None else recovery * CHUNK_MS,
    }
    back = gap.first_new_delivery_chunk
    in_gap = [s for s in snapshots
              if fault_start_ns <= s.source_ns and (back is None or s.chunks <= back)]
    after = [s for s in snapshots if back is not None and s.chunks > back + RECOVERY_BOUND_CHUNKS
             and s.source_ns < run.events.get("capture_ended", s.source_ns + 1)]
    states = sorted({s.values.get("hint_state", "") for s in in_gap})
    states_after = sorted({s.values.get("hint_state", "") for s in after})
    run.figures["hint_states"] = {"during_gap": states, "after_recovery": states_after}
    last = gap.last_possible_old_use
    horizon = back if back is not None else len(timeline)
    bound = None if last is None else last + STOP_BOUND_CHUNKS + slack
    stale = 0 if bound is None else fa.hits_between(snapshots, bound, horizon)
    run.figures["hint_gap"]["hits_after_the_bound"] = stale
    nothing = "" if last is not None else \
        "no hint was usable before the fault (all late?): nothing to judge; "
    return [
        fa.Check("hint use stops within one chunk of the last usable hint",
                 stop_lag is not None and stop_lag <= STOP_BOUND_CHUNKS + slack and not stale,
                 f"{nothing}last usable old hint at chunk {last}, last hit within chunks "
                 f"{gap.last_actual_old_use} (stop lag >= {stop_lag}), {stale} hits after chunk "
                 f"{bound}; the replay was within {gap.replay_precision_hits} hits of the node "
                 f"before the fault, so the bound is {STOP_BOUND_CHUNKS} + {slack} chunks"),
        fa.Check(f"boosted again within {RECOVERY_BOUND_CHUNKS} chunks of the first usable "
                 "new hint", recovery is not None and recovery <= RECOVERY_BOUND_CHUNKS,
                 f"first usable new hint at chunk {gap.first_possible_new_use}, first new hit "
                 f"within chunks {gap.first_actual_new_use}: at most {recovery} chunks"),
        fa.Check("hint outage reported in /diagnostics, then cleared",
                 bool({"stalled", "gone"} & set(states)) and "ok" in states_after,
                 f"hint_state during the gap {states}, after recovery {states_after}"),
    ]


def _drive_kill_hint_node(run: ScenarioRun) -> None:
    rec = run.recording
    run.start_capture(loop=True)
    run.wait_chunks(rec.audio, 250)  # 2 s of stream, then boosting must work
    run.wait_hits(50, 30.0)
    start = run.mark("fault_start")
    run.graph.kill("hint_node")
    run.pinned(run.workstation_cpus, run.graph.restart("hint_node")).wait_ready(READY_TIMEOUT_S)
    run.mark("hint_node_ready")
    run.wait_until(lambda: any(h.source_ns > start + HINT_FLUSH_NS
                               for h in rec.hints.messages[-3:]), 30.0,
                   "hints from the restarted hint node")
    run.mark("hints_back")
    snapshots = run.snapshots()
    run.wait_hits((snapshots[-1].hits if snapshots else 0) + 50, 30.0)  # boosted again
    run.end_stream()


def _judge_kill_hint_node(run: ScenarioRun) -> list[fa.Check]:
    start = run.events["fault_start"]
    return _hint_gap_checks(run, start, start + HINT_FLUSH_NS) + _counters_add_up(run)


def _drive_outage(run: ScenarioRun) -> None:
    rec = run.recording
    link = run.scenario.link or {}
    run.start_capture(loop=True)
    run.wait_chunks(rec.audio, 1)
    end_s = link["outage_start_s"] + link["outage_s"]
    run.wait_chunks(rec.audio, round(end_s * 1000 / CHUNK_MS), timeout_s=end_s + 30.0)
    snapshots = run.snapshots()
    run.wait_hits((snapshots[-1].hits if snapshots else 0) + 50, 30.0)  # boosted again
    run.end_stream()


def _judge_outage(run: ScenarioRun) -> list[fa.Check]:
    link = run.scenario.link or {}
    first_audio = run.recording.audio.messages[0].source_ns
    start = first_audio + int(link["outage_start_s"] * 1e9)
    end = start + int(link["outage_s"] * 1e9)
    run.events["outage_start"], run.events["outage_end"] = start, end
    flight = int((LINK_DELAY_MS + 100) * 1e6)
    during = [h for h in run.recording.hints.messages if start + flight < h.source_ns < end]
    run.figures["hints_delivered_during_outage"] = len(during)
    return [fa.Check("no hint crosses the link during the outage", not during,
                     f"{len(during)} delivered")] + _hint_gap_checks(run, start, end) + \
        _counters_add_up(run)


# -- an unreliable link: loss, jitter, reordering, duplication ---------------------------------

def _distinct(log: TapLog) -> int:
    return len({t.msg.stamp_ns for t in log.messages})


def _judge_loss(loss: float) -> Callable[[ScenarioRun], list[fa.Check]]:
    def judge(run: ScenarioRun) -> list[fa.Check]:
        rec = run.recording
        ways = {"up": (_distinct(rec.uplinked), _distinct(rec.audio)),
                "down": (_distinct(rec.hints), _distinct(rec.produced))}
        run.figures["link_delivery"] = {way: f"{got} of {sent}"
                                        for way, (got, sent) in ways.items()}
        checks = []
        for way, (got, sent) in ways.items():
            sigma = math.sqrt(loss * (1 - loss) / max(sent, 1))
            ratio = got / max(sent, 1)
            checks.append(fa.Check(
                f"link loses {loss:.0%} {way}", sent > 0 and abs(ratio - (1 - loss)) <= 4 * sigma,
                f"{got} of {sent} delivered ({ratio:.3f}; expected {1 - loss:.2f} +- 4 sigma = "
                f"{4 * sigma:.3f})"))
        hits_check, _ = _hits_follow_arrivals(run)
        return checks + _counters_add_up(run) + [hits_check]
    return judge


def _judge_jitter(run: ScenarioRun) -> list[fa.Check]:
    hints = run.recording.hints.messages
    stamps = [h.msg.stamp_ns for h in hints]
    reordered = sum(later < earlier for earlier, later in zip(stamps, stamps[1:]))
    duplicates = len(stamps) - len(set(stamps))
    snapshots = run.snapshots()
    final = snapshots[-1] if snapshots else None
    counted = final.count("duplicates") if final else -1
    ages = fa.age_histogram(final.values) if final else {}
    lo, hi = run.age_range
    run.figures.update({"reordered_deliveries": reordered, "duplicate_deliveries": duplicates,
                        "duplicates_counted": counted, "ages_used": ages})
    hits_check, _ = _hits_follow_arrivals(run)
    return [
        fa.Check("link reorders and duplicates", reordered > 0 and duplicates > 0,
                 f"{reordered} deliveries out of stamp order, {duplicates} duplicates"),
        fa.Check("duplicates counted, never more than were delivered",
                 0 < counted <= duplicates,
                 f"{counted} counted of {duplicates} delivered (a copy of a hint dropped as "
                 "invalid is invalid again, not a duplicate)"),
        fa.Check(f"only hints aged {lo}..{hi} chunks used", bool(ages)
                 and min(ages) >= lo and max(ages) <= hi, f"ages used: {ages}"),
        *_counters_add_up(run), hits_check]


# -- CPU overload ------------------------------------------------------------------------------

OVERLOAD_S = 1.5
OVERLOAD_SPINNERS = 4
MAX_LAG_MS = 100.0  # small_node's max_lag_ms
DEADLINE_MS = 16.0  # small_node's deadline_ms
# Four busy loops leave small_node a fifth of its core: its 1-2 ms step then takes longer than
# a chunk, so it falls behind (deadline misses) until its catch-up bypasses the model. A node
# sharing its core with busy loops waits up to a few scheduler periods for the CPU.
OVERLOAD_SLACK_MS = 200.0
DRAIN_BOUND_CHUNKS = 125  # 1 s
OVERLOAD_KEYS = ("output_deadline_misses", "bypassed_chunks", "catch_ups", "max_lag_ms",
                 "compute_p99_ms", "latency_p99_ms")


def _drive_overload(run: ScenarioRun) -> None:
    rec = run.recording
    run.start_capture(wav=str(run.input_wav(6.0)))
    run.wait_chunks(rec.audio, 190)
    run.mark("fault_start")
    run.spin_helpers(max(run.device_cpus), OVERLOAD_SPINNERS, run.graph.nodes["small_node"].nice)
    time.sleep(OVERLOAD_S)
    run.stop_helpers()
    run.mark("fault_end")
    run.end_stream()


def _judge_overload(run: ScenarioRun) -> list[fa.Check]:
    latency = fa.publish_latency_ms(run.recording)
    timeline = run.timeline()
    start = timeline.chunk_at(run.events["fault_start"])
    end = timeline.chunk_at(run.events["fault_end"])
    before = latency[:start]
    run.figures["latency_ms"] = {"before": fa.percentiles_ms(before),
                                 "during": fa.percentiles_ms(latency[start:end]),
                                 "after": fa.percentiles_ms(latency[end:])}
    snapshots = run.snapshots()
    final = snapshots[-1] if snapshots else None
    values = final.values if final else {}
    run.figures["overload_counters"] = {key: values.get(key) for key in OVERLOAD_KEYS}
    # The node measures lag from its best-case start latency, below the best publish latency
    # seen here, so it counts at least the misses the tap sees.
    seen_late = int(np.sum(latency - latency.min() > DEADLINE_MS)) if len(latency) else 0
    counted = final.count("output_deadline_misses") if final else 0
    bound_ms = MAX_LAG_MS + OVERLOAD_SLACK_MS
    normal_ms = float(np.median(before)) + CHUNK_MS if len(before) else float("nan")
    back = np.flatnonzero(latency[end:] <= normal_ms)
    drained = int(back[0]) if len(back) else None
    run.figures["backlog_drained_chunks_after_overload"] = drained
    return [
        fa.Check("deadline misses counted in /diagnostics",
                 counted > 0 and counted >= seen_late - max(2, len(latency) // 100),
                 f"node counted {counted}; the tap saw {seen_late} chunks published more than "
                 f"{DEADLINE_MS:g} ms behind the best case (the node counts from an earlier "
                 "best case, so at least as many, less the last chunks of a report period)"),
        fa.Check(f"backlog bounded: latency never beyond max_lag_ms + {OVERLOAD_SLACK_MS:g} ms",
                 len(latency) > 0 and latency.max() <= bound_ms,
                 f"max {latency.max() if len(latency) else float('nan'):.1f} ms, bound "
                 f"{bound_ms:g} ms; {values.get('bypassed_chunks')} chunks bypassed the model in "
                 f"{values.get('catch_ups')} catch-ups"),
        fa.Check(f"backlog drained within {DRAIN_BOUND_CHUNKS} chunks of the overload's end",
                 drained is not None and drained <= DRAIN_BOUND_CHUNKS,
                 f"first chunk back within a chunk of the pre-overload p50 ({normal_ms:.1f} ms) "
                 f"{drained} chunks after the overload ended"),
    ]


# -- capture source ending or failing ----------------------------------------------------------

def _drive_capture_only(**params: object) -> Callable[[ScenarioRun], None]:
    """Drive: start capture_node alone with ``params`` and give it 15 s to exit by itself."""
    def drive(run: ScenarioRun) -> None:
        capture = run.start_capture(**params)
        run.mark("capture_started")
        run.wait_until(lambda: capture.proc.poll() is not None, 15.0, "capture_node to exit")
        run.mark("capture_exited")
    return drive


def _judge_exit(needle: str) -> Callable[[ScenarioRun], list[fa.Check]]:
    def judge(run: ScenarioRun) -> list[fa.Check]:
        lines = run.node_lines("capture_node")
        failed = [line for line in lines if "audio source failed" in line and needle in line]
        code = run.exit_codes.get("capture_node")
        run.figures["log"] = failed[:1]
        run.figures["exit_code"] = code
        return [fa.Check("one clear log line naming the source", len(failed) == 1,
                         failed[0] if failed else "no such line"),
                fa.Check("exits with status 1, publishing nothing",
                         code == 1 and not run.recording.audio,
                         f"exit {code}, {len(run.recording.audio)} chunks published")]
    return judge


def _drive_mic_retry(run: ScenarioRun) -> None:
    capture = run.start_capture(source="mic", device=MISSING_DEVICE, on_source_error="retry",
                                retry_period_s=0.2)
    time.sleep(1.5)
    run.figures["alive_after_1_5_s"] = capture.proc.poll() is None
    capture.interrupt()


def _judge_mic_retry(run: ScenarioRun) -> list[fa.Check]:
    lines = run.node_lines("capture_node")
    failed = [line for line in lines if "audio source failed" in line and "attempt 1" in line]
    code = run.exit_codes.get("capture_node")
    run.figures["log"] = failed[:1]
    return [fa.Check("one clear log line, then quiet retries", len(failed) == 1,
                     failed[0] if failed else "no such line"),
            fa.Check("keeps retrying until stopped, then exits 0",
                     bool(run.figures.get("alive_after_1_5_s")) and code == 0,
                     f"alive after 1.5 s: {run.figures.get('alive_after_1_5_s')}, exit {code}")]


def _drive_wav_appears(run: ScenarioRun) -> None:
    path = run.work_dir / "arrives_late.wav"
    source = run.input_wav(2.0)
    capture = run.start_capture(wav=str(path), on_source_error="retry", retry_period_s=0.25)
    time.sleep(1.0)
    run.mark("wav_written")
    partial = path.with_suffix(".partial")
    partial.write_bytes(source.read_bytes())
    os.replace(partial, path)
    run.wait_until(lambda: capture.proc.poll() is not None, 30.0, "the end of the file")
    run.end_stream()


def _judge_wav_appears(run: ScenarioRun) -> list[fa.Check]:
    lines = run.node_lines("capture_node")
    failed = [line for line in lines if "audio source failed" in line]
    opened = [line for line in lines if "opened" in line and "failed attempts" in line]
    ended = [line for line in lines if "end of file" in line]
    run.figures["log"] = failed[:1] + opened + ended
    expected = math.ceil(2.0 * SAMPLE_RATE / 128)
    return [fa.Check("a clear line, retries, then the file is streamed to its end",
                     len(failed) == 1 and len(opened) == 1 and len(ended) == 1,
                     " | ".join(run.figures["log"])),
            fa.Check("every chunk of the file captured", len(run.recording.audio) == expected,
                     f"{len(run.recording.audio)} of {expected}")]


SCENARIOS = [
    Scenario("hint_node_killed", "Hint node killed mid-stream and restarted",
             "SIGKILL to hint_node 2 s into the stream, a new hint_node started at once "
             f"(link {LINK_DELAY_MS:g} ms each way)",
             _drive_kill_hint_node, _judge_kill_hint_node, link=_link()),
    Scenario("link_loss_10", "Link losing 10 % each way",
             "link_node loses 10 % of audio up and 10 % of hints down (seeded)",
             _stream(4.0), _judge_loss(0.1), link=_link(loss=0.1)),
    Scenario("link_loss_50", "Link losing 50 % each way",
             "link_node loses 50 % of audio up and 50 % of hints down (seeded)",
             _stream(4.0), _judge_loss(0.5), link=_link(loss=0.5)),
    Scenario("link_jitter_reorder_duplicate", "Jitter of 3 chunks, reordering, duplication",
             "link_node adds 0-24 ms uniform jitter each way, lets it reorder, and delivers "
             "20 % of messages twice",
             _stream(4.0), _judge_jitter,
             link=_link(jitter_ms=3 * CHUNK_MS, reorder=True, duplicate=0.2)),
    Scenario("link_outage_2s", "Link down for 2 s",
             "link_node loses everything both ways from 3 s to 5 s into the stream",
             _drive_outage, _judge_outage, link=_link(outage_start_s=3.0, outage_s=2.0)),
    Scenario("cpu_overload", "CPU overload on the small node's core",
             f"{OVERLOAD_SPINNERS} pure-Python busy loops on small_node's core, at its "
             f"priority, for {OVERLOAD_S:g} s, 1.5 s into the stream",
             _drive_overload, _judge_overload, link=_link(),
             small_params={"max_lag_ms": MAX_LAG_MS, "deadline_ms": DEADLINE_MS}),
    Scenario("capture_wav_missing_exit", "Capture: WAV missing, on_source_error=exit",
             "capture_node pointed at a WAV that does not exist",
             _drive_capture_only(wav="/nonexistent/kb_ros_missing.wav"),
             _judge_exit("kb_ros_missing.wav"), small_node=False, streams=False),
    Scenario("capture_wav_appears_retry", "Capture: WAV appears late, on_source_error=retry",
             "capture_node retrying every 0.25 s for a WAV written 1 s after start (2 s long)",
             _drive_wav_appears, _judge_wav_appears),
    Scenario("capture_mic_missing_exit", "Capture: microphone missing, on_source_error=exit",
             f"capture_node with source=mic, device={MISSING_DEVICE}",
             _drive_capture_only(source="mic", device=MISSING_DEVICE),
             _judge_exit(MISSING_DEVICE), small_node=False, streams=False),
    Scenario("capture_mic_missing_retry", "Capture: microphone missing, on_source_error=retry",
             f"capture_node with source=mic, device={MISSING_DEVICE}, retrying every 0.2 s, "
             "stopped with SIGINT after 1.5 s",
             _drive_mic_retry, _judge_mic_retry, small_node=False, streams=False),
]

BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
