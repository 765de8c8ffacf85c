"""
End-to-end latency through real node processes on loopback DDS, and what each process costs.

capture_node (the shipped sample, looped, paced at 8 ms) and small_node run as their own
processes; this process subscribes to ``audio`` and ``enhanced`` and plays the workstation: for
every chunk it hears it publishes the hint for the chunk ``HINT_AGE - 1`` before it (the large
model's real output, precomputed, in the hint format), so small_node fuses hints about
``HINT_AGE`` chunks old without a large model competing for this machine's cores.

Latency of a chunk: ``enhanced`` arrival here minus the chunk's stamp (the capture time of its
first sample). The enhanced output is the input delayed by the 4 ms look-ahead, so a listener
hears each sample ``latency + 4 ms`` after it was captured; with no compute and no transport
that is the algorithmic latency, 12 ms. What lies beyond it is split into the capture hop
(``audio`` arrival minus the chunk's end: capture pacing and one DDS hop), the device hop
(``enhanced`` arrival minus ``audio`` arrival: small_node's receive, compute, publish and one
DDS hop) and small_node's compute (its own diagnostics). small_node runs as deployed: on a core
too busy to keep up, its catch-up guard passes chunks through unprocessed (counted).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kb_ros.audio.clock import CHUNK_MS
from kb_ros.audio.pcm import encode_pcm
from kb_ros.audio.wav import write_wav
from kb_ros.boosting.hint_format import HintStreamInfo, hint_audio_format
from kb_ros.cli.bench_compute import HINT_AGE, DemoAudio
from kb_ros.cli.bench_stats import percentiles
from kb_ros.cli.graph import LocalGraph
from kb_ros.cli.recorder import TopicRecorder
from kb_ros.models.filterbank import ALGORITHMIC_LATENCY_SAMPLES, LOOKAHEAD
from kb_ros.transport import qos
from kb_ros.transport.messages import (AUDIO_INFO, AUDIO_STAMPED, DIAGNOSTIC_ARRAY,
                                       AudioChunkMsg, AudioInfoMsg)

ALGORITHMIC_LATENCY_MS = ALGORITHMIC_LATENCY_SAMPLES * 1000 / 16000
LOOKAHEAD_MS = LOOKAHEAD * 1000 / 16000
WARMUP_S = 1.0  # streaming before the CPU window opens (DDS discovery, first allocations)
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat`` fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def process_memory_mb(pid: int) -> dict[str, float]:
    """Resident set now and at its peak (``VmRSS``, ``VmHWM`` of ``/proc/<pid>/status``)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return {"rss_mb": round(values["VmRSS"], 1), "rss_peak_mb": round(values["VmHWM"], 1)}


class HintFeeder:
    """
    The workstation's part: answers each audio chunk with the hint of an earlier chunk.

    Runs in the recorder's spinning thread; keeps each chunk's arrival time for the split.
    """

    def __init__(self, recorder: TopicRecorder, demo: DemoAudio, hint_format: str) -> None:
        backend = recorder.backend
        self.demo = demo
        self.format = hint_audio_format(hint_format, 1)
        info = AudioInfoMsg.from_format(self.format)
        info.coding_format = HintStreamInfo(demo.large_id, self.format.coding).coding_format()
        backend.create_publisher(AUDIO_INFO, "/kb/hint_info", qos.INFO_PUB).publish(info)
        self.hints_pub = backend.create_publisher(AUDIO_STAMPED, "/kb/hints", qos.HINT_PUB)
        self.audio_arrival_ns: dict[int, int] = {}
        self._first_stamp_ns: int | None = None
        backend.create_subscription(AUDIO_STAMPED, "/kb/audio", self.on_audio, qos.AUDIO_SUB)

    def on_audio(self, msg: AudioChunkMsg) -> None:
        self.audio_arrival_ns[msg.stamp_ns] = time.time_ns()
        if self._first_stamp_ns is None:
            self._first_stamp_ns = msg.stamp_ns
        index = round((msg.stamp_ns - self._first_stamp_ns) / (CHUNK_MS * 1e6))
        lead = HINT_AGE - 1
        if index >= lead:
            audio = self.demo.large_chunk((index - lead) % self.demo.n_chunks)
            stamp = msg.stamp_ns - round(lead * CHUNK_MS * 1e6)
            self.hints_pub.publish(AudioChunkMsg(stamp, encode_pcm(audio, self.format)))


# What the bench keeps of small_node's latest /diagnostics status
NODE_STATUS_KEYS = ("compute_p50_ms", "compute_p99_ms", "hit_rate", "hint_age_mean_chunks",
                    "bypassed_chunks", "output_deadline_misses", "input_drops", "invalid")


def _node_status(diagnostics: Any) -> dict[str, float]:
    """small_node's compute, hint and catch-up figures from its latest ``/diagnostics``."""
    for rec in reversed(diagnostics.messages):
        for status in rec.msg.status:
            if status.hardware_id.endswith("/small_node") and "compute_p50_ms" in status.values:
                return {key: float(status.values[key]) for key in NODE_STATUS_KEYS
                        if key in status.values}
    raise RuntimeError("small_node published no diagnostics")


def _window_cpu(pids: dict[str, int], seconds: float) -> dict[str, dict[str, float]]:
    """CPU % of one core of each process over ``seconds`` from now, then its memory."""
    start = {name: process_cpu_s(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {name: {"cpu_pct": round(100 * (process_cpu_s(pid) - start[name]) / elapsed, 2),
                   **process_memory_mb(pid)} for name, pid in pids.items()}


def _wait_for_outputs(feeder: HintFeeder, enhanced: Any, timeout_s: float) -> None:
    """Wait until every chunk heard here has its ``enhanced`` chunk, or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while len(enhanced) < len(feeder.audio_arrival_ns) and time.monotonic() < deadline:
        time.sleep(0.05)


def e2e_section(demo: DemoAudio, hint_format: str, seconds: float,
                notify: Callable[[str], None]) -> dict[str, Any]:
    """Stream for ``seconds`` through capture_node -> small_node; latency, split, CPU, RSS."""
    domain_id = 200 + os.getpid() % 30
    with tempfile.TemporaryDirectory(prefix="kb_bench_") as tmp:
        wav = write_wav(Path(tmp) / "mix.wav", demo.mix[:, 0], sample_format="F32LE")
        recorder = TopicRecorder(domain_id, name="kb_bench")
        feeder = HintFeeder(recorder, demo, hint_format)
        enhanced = recorder.record(AUDIO_STAMPED, "/kb/enhanced")
        diagnostics = recorder.record(DIAGNOSTIC_ARRAY, "/diagnostics", qos.DIAGNOSTICS)
        recorder.start()
        graph = LocalGraph(domain_id, log_dir=Path(tmp) / "logs")
        try:
            notify("starting small_node")
            small = graph.start("small_node", **{"diagnostic_updater.period": 0.5})
            graph.wait_ready(timeout_s=120.0)
            capture = graph.start("capture_node", wav=str(wav), rate=1.0, loop=True,
                                  wait_for_subscribers=2, wait_timeout_s=30.0)
            capture.wait_ready(timeout_s=60.0)
            notify(f"streaming {seconds:.0f} s")
            time.sleep(WARMUP_S)
            usage = _window_cpu({"capture_node": capture.proc.pid,
                                 "small_node": small.proc.pid}, seconds)
            capture.stop()  # no more input: what small_node holds still comes out
            _wait_for_outputs(feeder, enhanced, timeout_s=10.0)
            time.sleep(1.0)  # a final diagnostics period
        finally:
            exit_codes = graph.stop()
            recorder.stop()
    return _latency_report(feeder.audio_arrival_ns, enhanced, diagnostics, usage, exit_codes)


def _latency_report(audio_arrival_ns: dict[int, int], enhanced: Any, diagnostics: Any,
                    usage: dict, exit_codes: dict) -> dict[str, Any]:
    rows = [(rec.msg.stamp_ns, rec.arrival_ns, audio_arrival_ns.get(rec.msg.stamp_ns))
            for rec in enhanced.messages]
    stamps = [stamp for stamp, _, _ in rows]
    if not rows:
        raise RuntimeError("no enhanced chunk arrived: small_node did not run")
    chunk_ns = CHUNK_MS * 1e6
    since_stamp = np.array([(arrival - stamp) / 1e6 for stamp, arrival, _ in rows])
    capture_hop = [(audio - stamp - chunk_ns) / 1e6 for stamp, _, audio in rows if audio]
    device_hop = [(arrival - audio) / 1e6 for _, arrival, audio in rows if audio]
    extra = since_stamp - CHUNK_MS
    node = _node_status(diagnostics)
    extra_summary = percentiles(extra)
    return {
        "chunks_in": len(audio_arrival_ns), "chunks_out": len(rows),
        "missing_outputs": len(set(audio_arrival_ns) - set(stamps)),
        "unexpected_outputs": len(set(stamps) - set(audio_arrival_ns)),
        "in_order": stamps == sorted(stamps), "algorithmic_ms": ALGORITHMIC_LATENCY_MS,
        "e2e_latency_ms": percentiles(extra + ALGORITHMIC_LATENCY_MS),
        "e2e_extra_latency_ms": extra_summary,
        "capture_hop_ms": percentiles(capture_hop), "device_hop_ms": percentiles(device_hop),
        "small_node": node,
        "transport_and_waiting_ms": {
            "p50": round(max(0.0, extra_summary["p50"] - node["compute_p50_ms"]), 4)},
        "processes": usage, "exit_codes": exit_codes,
        "lookahead_ms": LOOKAHEAD_MS}
