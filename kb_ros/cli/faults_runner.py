"""
Runs one fault scenario: real node processes, a wire tap, the injection, then the verdict.

The nodes run on a private loopback DDS domain.

Every scenario gets a fresh graph and domain, so none inherits another's state; each waits with
a bound, so a hung node fails its scenario instead of hanging the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from kb_ros.audio.clock import SAMPLE_RATE
from kb_ros.audio.wav import read_wav, write_wav
from kb_ros.cli import faults_analysis as fa
from kb_ros.cli.faults_tap import TapLog, WireTap
from kb_ros.cli.graph import LocalGraph, NodeProcess, renice
from kb_ros.models.checkpoint import read_manifest
from kb_ros.nodes import small_node
from kb_ros.resources import demo_sample_path, shipped_model_path
from kb_ros.transport import qos
from kb_ros.transport.messages import AUDIO_INFO, AUDIO_STAMPED, DIAGNOSTIC_ARRAY

if TYPE_CHECKING:
    from kb_ros.cli.faults_scenarios import Scenario

DIAGNOSTICS_PERIOD_S = 0.05  # 6 chunks: how finely the node's counters resolve an event
# Every node of the graph runs at raised priority where permitted (root or CAP_SYS_NICE), as a
# device's audio path does, and as if the workstation were a machine of its own: a scenario
# judges its fault, not whatever else loads this machine. Injected load runs at the same.
GRAPH_NICE = -10
# hint_node serves the shipped small model's output by default: a quarter of the large model's
# compute, so hints keep coming in time on a loaded 2-core machine that also runs the device.
# What is judged (timing, counting, recovery) does not depend on which model makes the hints.
DEFAULT_HINT_MODEL = "small"
TRAINED_HINT_MODEL = "large"  # the producer the shipped kb model was trained with
READY_TIMEOUT_S = 180.0
# a busy loop pinned to one CPU, which ends when its parent does (even killed with SIGKILL)
SPIN_LOOP = ("import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nparent = os.getppid()\n"
             "while os.getppid() == parent:\n    for _ in range(100_000):\n        pass\n")


def split_cpus() -> tuple[set[int], set[int]]:
    """
    Split the CPUs: the device side's (capture_node, small_node), the workstation side's.

    With two CPUs or more, each side gets its own, as two machines would; with one, both share.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    return ({cpus[-1]}, set(cpus[:-1]) or {cpus[-1]})


@dataclass
class ScenarioResult:
    """A scenario's verdict: every check, the figures, and how long it took."""

    name: str
    title: str
    injected: str
    checks: list[fa.Check] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def as_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "injected": self.injected,
                "passed": self.passed, "wall_s": round(self.wall_s, 1),
                "checks": [vars(check) for check in self.checks], "figures": self.figures}


class ScenarioRun:
    """
    The live state of one scenario: graph, tap, input files, event times and figures.

    Scenario code drives it (``start_capture``, ``wait_chunks``, ``mark``...) and judges what
    it recorded (``recording``, ``timeline``, ``snapshots``).
    """

    def __init__(self, scenario: "Scenario", domain_id: int, work_dir: Path,
                 hint_model: str = DEFAULT_HINT_MODEL) -> None:
        self.scenario = scenario
        self.hint_model = hint_model
        self.device_cpus, self.workstation_cpus = split_cpus()
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.graph = LocalGraph(domain_id, log_dir=work_dir / "logs")
        self.tap = WireTap(domain_id)
        self.recording = fa.Recording(
            self.tap.record(AUDIO_STAMPED, "/kb/audio"),
            self.tap.record(AUDIO_INFO, "/kb/audio_info", qos.INFO_SUB),
            self.tap.record(AUDIO_STAMPED, "/kb/enhanced"),
            self.tap.record(AUDIO_STAMPED, "/kb/hints"),
            self.tap.record(AUDIO_INFO, "/kb/hint_info", qos.INFO_SUB),
            self.tap.record(AUDIO_STAMPED, "/kb/remote/audio"),
            self.tap.record(AUDIO_STAMPED, "/kb/remote/hints"),
            self.tap.record(DIAGNOSTIC_ARRAY, "/diagnostics", qos.DIAGNOSTICS))
        self.events: dict[str, int] = {}
        self.figures: dict = {}
        self.exit_codes: dict[str, int] = {}
        self.helpers: list[subprocess.Popen] = []
        manifest = read_manifest(shipped_model_path("kb"))
        self.age_range: tuple[int, int] = tuple(manifest["age_range"])  # type: ignore[assignment]
        self.output_delay_samples = int(manifest["output_delay_samples"])
        self.mix = read_wav(demo_sample_path("mix"), mono=True)[0][:, 0]
        self.clean = read_wav(demo_sample_path("clean"), mono=True)[0][:, 0]

    # -- driving ----------------------------------------------------------------------------

    def mark(self, event: str) -> int:
        """Note the wall-clock time (ns, the tap's clock) of an event and return it."""
        self.events[event] = time.time_ns()
        return self.events[event]

    def input_wav(self, seconds: float) -> Path:
        """Write the first ``seconds`` of the sample as the WAV to stream; keep that excerpt."""
        path = self.work_dir / f"input_{seconds:g}s.wav"
        write_wav(path, self.mix[:int(seconds * SAMPLE_RATE)], sample_format="F32LE")
        self.mix = self.mix[:int(seconds * SAMPLE_RATE)]
        self.clean = self.clean[:int(seconds * SAMPLE_RATE)]
        return path

    def start_nodes(self) -> None:
        """Start the scenario's device (and workstation) nodes and wait until they are ready."""
        period = {"diagnostic_updater.period": DIAGNOSTICS_PERIOD_S}
        any_producer = {"accept_any_hint_model": self.hint_model != TRAINED_HINT_MODEL}
        if self.scenario.small_node:
            self.pinned(self.device_cpus, self.graph.start(
                "small_node", nice=GRAPH_NICE, **period, **any_producer,
                **self.scenario.small_params))
        if self.scenario.link is not None:
            self.figures["hint_model"] = self.hint_model
            self.pinned(self.workstation_cpus, self.graph.start(
                "hint_node", namespace="/kb/remote", nice=GRAPH_NICE, model=self.hint_model))
            self.pinned(self.workstation_cpus, self.graph.start(
                "link_node", nice=GRAPH_NICE, **self.scenario.link))
        self.graph.wait_ready(READY_TIMEOUT_S)

    def pinned(self, cpus: set[int], node: NodeProcess) -> NodeProcess:
        """Keep a node's threads on ``cpus``; the figures say where each side ran."""
        side = "device_cpus" if cpus is self.device_cpus else "workstation_cpus"
        self.figures[side] = sorted(cpus) if pin_process(node.proc.pid, cpus) else None
        return node

    def start_capture(self, **params: object) -> NodeProcess:
        """Start capture_node; with ``wait_for_subscribers`` it streams once all have matched."""
        subscribers = int(self.scenario.small_node) + int(self.scenario.link is not None) + 1
        node = self.pinned(self.device_cpus, self.graph.start(
            "capture_node", nice=GRAPH_NICE, rate=1.0, wait_for_subscribers=subscribers,
            wait_timeout_s=30.0, **params))
        self.figures["nodes_at_nice"] = GRAPH_NICE if node.niced else 0
        node.wait_ready(60.0)
        return node

    def wait_until(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``condition`` every 20 ms; raise TimeoutError naming ``what`` if it never holds."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.02)

    def wait_chunks(self, log: TapLog, count: int, timeout_s: float = 60.0) -> None:
        self.wait_until(lambda: len(log) >= count, timeout_s, f"{count} messages on {log.topic}")

    def wait_hits(self, hits: int, timeout_s: float) -> None:
        """Wait until small_node reports ``hits`` hint hits: boosting works before a fault."""
        def reached() -> bool:
            snapshots = self.snapshots()
            return bool(snapshots) and snapshots[-1].hits >= hits
        self.wait_until(reached, timeout_s, f"small_node to use {hits} hints (hints arrive too "
                        "late on this machine?)")

    def end_stream(self, timeout_s: float = 60.0) -> None:
        """
        Let capture_node finish (or stop it if it loops), then let the outputs drain.

        Ends once every captured chunk has its output, or the small node has been idle for a
        second (lost chunks never come), plus a few diagnostics periods for final counters.
        """
        capture = self.graph.nodes["capture_node"]
        if capture.params.get("loop"):
            capture.interrupt()
        try:
            capture.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            capture.interrupt()
        self.mark("capture_ended")
        audio, enhanced = self.recording.audio, self.recording.enhanced
        deadline = time.monotonic() + 10.0
        last, idle_since = -1, time.monotonic()
        while len(enhanced) < len(audio) and time.monotonic() < deadline:
            if len(enhanced) != last:
                last, idle_since = len(enhanced), time.monotonic()
            elif time.monotonic() - idle_since > 1.0:
                break
            time.sleep(0.02)
        time.sleep(4 * DIAGNOSTICS_PERIOD_S)

    def spin_helpers(self, cpu: int, count: int, nice: int) -> None:
        """Start ``count`` pure-Python busy loops pinned to ``cpu`` at ``nice``: competing load."""
        for _ in range(count):
            helper = subprocess.Popen([sys.executable, "-c", SPIN_LOOP, str(cpu)])
            renice(helper.pid, nice)
            self.helpers.append(helper)

    def stop_helpers(self) -> None:
        for helper in self.helpers:
            helper.kill()
            helper.wait()
        self.helpers.clear()

    def stop(self) -> None:
        """Stop helpers, nodes and tap; keep every node's exit code (killed ones too)."""
        self.stop_helpers()
        codes = self.graph.stop()
        for node in self.graph.retired:
            codes.setdefault(f"{node.name} (killed)", node.proc.returncode)
        self.exit_codes = codes
        self.tap.stop()

    # -- judging ----------------------------------------------------------------------------

    def timeline(self) -> fa.Timeline:
        return fa.Timeline.of(self.recording)

    def snapshots(self) -> list[fa.Snapshot]:
        return fa.small_node_snapshots(self.recording)

    @property
    def max_early_chunks(self) -> int:
        """How far ahead of its chunk small_node lets a hint wait, with this scenario's params."""
        defaults = {spec.name: spec.default for spec in small_node.PARAMS}
        return small_node.early_hint_chunks(
            self.scenario.small_params.get("max_lag_ms", defaults["max_lag_ms"]))

    def replay(self, timeline: fa.Timeline) -> list[int | None]:
        return fa.replay_hint_use(self.recording, timeline, self.age_range,
                                  self.max_early_chunks)

    def node_lines(self, name: str) -> list[str]:
        """Every log line of every process that ran as ``name`` (killed ones first)."""
        nodes = [n for n in self.graph.retired if n.name == name]
        if name in self.graph.nodes:
            nodes.append(self.graph.nodes[name])
        return [line for node in nodes for line in node.lines]


def pin_process(pid: int, cpus: set[int]) -> bool:
    """Pin every thread of a process to ``cpus``; False where the OS cannot (not Linux)."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)
    return True


def stream_checks(run: ScenarioRun) -> list[fa.Check]:
    """Judge what every streaming scenario must pass, and note the figures all report."""
    rec = run.recording
    account = fa.account_chunks(rec)
    latency = fa.publish_latency_ms(rec)
    snapshots = run.snapshots()
    final = snapshots[-1].values if snapshots else {}
    run.figures.update({
        "chunks_in": account.chunks_in, "chunks_out": account.chunks_out,
        "missing_outputs": account.missing, "in_order": account.in_order,
        "stamp_to_publish_ms": fa.percentiles_ms(latency),
        "hints_produced": len(rec.produced), "hints_delivered": len(rec.hints),
        "node_counters": {key: final.get(key) for key in fa.COUNTER_KEYS if key in final},
        "drops_by_reason": {key: value for key, value in final.items()
                            if key.startswith(("invalid.", "input_drops."))},
        "si_snri_db": fa.stream_si_snri_db(rec, run.mix, run.clean, run.output_delay_samples),
    })
    node_chunks = int(final.get("chunks", -1))
    return [
        fa.Check("one output per input, in order, same stamps", account.exact,
                 f"{account.chunks_in} in, {account.chunks_out} out, {account.missing} missing"
                 + (f" (input chunks {account.missing_at})" if account.missing else "")
                 + f", {account.extra} extra, in order: {account.in_order}"),
        fa.Check("outputs finite and whole", account.chunks_out > 0 and not account.non_finite
                 and not account.wrong_size,
                 f"{account.non_finite} non-finite, {account.wrong_size} of the wrong size"),
        fa.Check("input stamps 8 ms apart", account.stamps_8ms_apart,
                 "capture stamps from the sample counter"),
        fa.Check("node counted every chunk", node_chunks == account.chunks_in,
                 f"small_node reports {node_chunks} chunks"),
        fa.Check("every node exited cleanly", all(
            code == 0 for name, code in run.exit_codes.items() if "(killed)" not in name),
            ", ".join(f"{name}: {code}" for name, code in sorted(run.exit_codes.items()))),
    ]


def run_scenario(scenario: "Scenario", domain_id: int, work_dir: Path,
                 hint_model: str = DEFAULT_HINT_MODEL) -> ScenarioResult:
    """Run one scenario end to end; any error becomes a failed check, never an exception."""
    t0 = time.monotonic()
    result = ScenarioResult(scenario.name, scenario.title, scenario.injected)
    run = ScenarioRun(scenario, domain_id, work_dir / scenario.name, hint_model)
    try:
        run.tap.start()
        try:
            run.start_nodes()
            scenario.drive(run)
        finally:
            run.stop()
        if scenario.streams:
            result.checks += stream_checks(run)
        result.checks += scenario.judge(run)
    except Exception as err:  # a scenario that cannot run is a failed scenario, with the reason
        result.checks.append(fa.Check("scenario ran to the end", False,
                                      f"{type(err).__name__}: {err}"))
    result.figures = run.figures
    result.figures["events_s"] = {name: round((t - min(run.events.values())) / 1e9, 3)
                                  for name, t in run.events.items()} if run.events else {}
    result.wall_s = time.monotonic() - t0
    return result


def domain_for(index: int) -> int:
    """Pick a DDS domain per scenario and process, away from the default 0."""
    return 1 + (os.getpid() * 11 + 3 * index) % 220
