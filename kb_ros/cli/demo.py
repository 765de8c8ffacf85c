"""
``kb-ros demo``: the whole system on one machine, no ROS 2 and no sound card needed.

capture_node -> small_node, and capture_node -> link_node (24 ms up) -> hint_node -> link_node
(24 ms down) -> small_node -> playback_node, all separate processes on loopback DDS. The demo
records the topics, scores them against the clean reference and writes WAVs, a PNG and JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kb_ros.audio.clock import CHUNK_FRAMES, ChunkClock
from kb_ros.audio.metrics import si_snr_improvement
from kb_ros.audio.pcm import AudioFormat, decode_pcm
from kb_ros.audio.wav import read_wav, write_wav
from kb_ros.boosting.engine import ChunkEngine
from kb_ros.boosting.offline import run_pipeline
from kb_ros.cli.graph import LocalGraph
from kb_ros.cli.recorder import TopicLog, TopicRecorder
from kb_ros.models.shipped import load_model_and_manifest
from kb_ros.nodes.common import prepare_node_steps
from kb_ros.resources import demo_sample_path
from kb_ros.transport import qos
from kb_ros.transport.messages import AUDIO_INFO, AUDIO_STAMPED, DIAGNOSTIC_ARRAY


@dataclass
class DemoOptions:
    out_dir: Path
    mix_wav: Path
    clean_wav: Path | None
    link_delay_ms: float = 24.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    domain_id: int | None = None
    plot: bool = True
    quiet: bool = False


def _assemble(log: TopicLog, info: TopicLog, clock: ChunkClock, n_chunks: int) -> np.ndarray:
    """Place each recorded chunk, decoded in its announced format, at its stamp."""
    fmt = info.messages[-1].msg.to_format() if info.messages else AudioFormat()
    out = np.zeros((n_chunks * CHUNK_FRAMES, fmt.channels), np.float32)
    for rec in log.messages:
        k = clock.chunks_between(clock.start_ns, rec.msg.stamp_ns)
        if 0 <= k < n_chunks:
            out[k * CHUNK_FRAMES:(k + 1) * CHUNK_FRAMES] = decode_pcm(rec.msg.data, fmt)
    return out


def _latest_status(log: TopicLog, node_name: str) -> dict[str, str]:
    for rec in reversed(log.messages):
        for st in rec.msg.status:
            if st.hardware_id.endswith("/" + node_name):
                return st.values
    return {}


def _progress(done: int, total: int, quiet: bool) -> None:
    """Redraw a progress bar on a terminal; elsewhere (logs, CI) print nothing."""
    if not quiet and sys.stdout.isatty():
        width = 40
        filled = width * done // max(total, 1)
        print(f"\r  streaming [{'#' * filled}{'.' * (width - filled)}] {done}/{total} chunks",
              end="", flush=True)


def run_demo(opts: DemoOptions) -> dict:
    """Run the live graph on the demo sample and return the report (also written as JSON)."""
    out = opts.out_dir
    mix = read_wav(opts.mix_wav, mono=True)[0][:, 0]
    clean = read_wav(opts.clean_wav, mono=True)[0][:, 0] if opts.clean_wav else None
    if not len(mix):
        raise ValueError(f"{opts.mix_wav} holds no audio")
    out.mkdir(parents=True, exist_ok=True)
    n_chunks = -(-len(mix) // CHUNK_FRAMES)
    domain_id = opts.domain_id if opts.domain_id is not None else 100 + os.getpid() % 100
    say = (lambda *a: None) if opts.quiet else print
    say(f"kb-ros demo: {opts.mix_wav.name}, {len(mix) / 16000:.1f} s, link "
        f"{opts.link_delay_ms:.0f} ms each way, DDS domain {domain_id} on loopback")

    recorder = TopicRecorder(domain_id)
    audio_log = recorder.record(AUDIO_STAMPED, "/kb/audio")
    enhanced_log = recorder.record(AUDIO_STAMPED, "/kb/enhanced")
    hints_log = recorder.record(AUDIO_STAMPED, "/kb/hints")
    large_log = recorder.record(AUDIO_STAMPED, "/kb/remote/hints")
    enhanced_info = recorder.record(AUDIO_INFO, "/kb/enhanced_info", qos.INFO_SUB)
    hint_info = recorder.record(AUDIO_INFO, "/kb/remote/hint_info", qos.INFO_SUB)
    diag_log = recorder.record(DIAGNOSTIC_ARRAY, "/diagnostics", qos.DIAGNOSTICS)
    recorder.start()
    say("  preparing the models' steps (the first run exports them to ONNX, then cached) ...")
    prepare_node_steps()
    graph = LocalGraph(domain_id, log_dir=out / "logs")
    try:
        say("  starting small_node, hint_node, link_node, playback_node ...")
        graph.start("small_node", **{"diagnostic_updater.period": 0.25})
        graph.start("hint_node", namespace="/kb/remote")
        graph.start("link_node", uplink_delay_ms=opts.link_delay_ms,
                    downlink_delay_ms=opts.link_delay_ms, jitter_ms=opts.jitter_ms,
                    loss=opts.loss)
        graph.start("playback_node", wav=str(out / "boosted_playback.wav"))
        graph.wait_ready(timeout_s=120.0)
        capture = graph.start("capture_node", wav=str(opts.mix_wav), rate=1.0,
                              wait_for_subscribers=3, wait_timeout_s=20.0)
        while capture.proc.poll() is None:
            _progress(len(enhanced_log), n_chunks, opts.quiet)
            time.sleep(0.1)
        recorder.wait_for("/kb/enhanced", len(audio_log), timeout_s=3.0)
        _progress(len(enhanced_log), n_chunks, opts.quiet)
        say("")
        time.sleep(0.6)  # one more diagnostics period, with the final counters
    finally:
        exit_codes = graph.stop()
        recorder.stop()
    if not audio_log.messages:
        raise RuntimeError(f"no audio was captured; see the logs in {out / 'logs'}")

    clock = ChunkClock(audio_log.messages[0].msg.stamp_ns)
    boosted = _assemble(enhanced_log, enhanced_info, clock, n_chunks)[:, 0]
    large = _assemble(large_log, hint_info, clock, n_chunks)[:, 0]
    small_model, small_manifest = load_model_and_manifest("small")
    small = run_pipeline(mix[:, None], ChunkEngine(small_model)).enhanced[:, 0]
    small_status = _latest_status(diag_log, "small_node")
    arrival_ms = np.array([(r.arrival_ns - r.msg.stamp_ns) / 1e6 for r in enhanced_log.messages])
    report = {
        "input_chunks": len(audio_log), "enhanced_chunks": len(enhanced_log),
        "in_order": [r.msg.stamp_ns for r in enhanced_log.messages]
        == sorted(r.msg.stamp_ns for r in enhanced_log.messages),
        "hint_hit_rate": float(small_status.get("hit_rate", "nan")),
        "hint_age_histogram": small_status.get("age_histogram", ""),
        "compute_ms": {"p50": float(small_status.get("compute_p50_ms", "nan")),
                       "p99": float(small_status.get("compute_p99_ms", "nan"))},
        "stamp_to_publish_ms": {"p50": float(small_status.get("latency_p50_ms", "nan")),
                                "p99": float(small_status.get("latency_p99_ms", "nan"))},
        "stamp_to_subscriber_ms": {"p50": float(np.percentile(arrival_ms, 50)),
                                   "p99": float(np.percentile(arrival_ms, 99))},
        "link_delay_ms": opts.link_delay_ms, "domain_id": domain_id,
        "small_model": small_manifest.get("model_id"), "exit_codes": exit_codes,
    }
    outputs = {"boosted": boosted, "large": large, "small": small}
    if clean is not None:
        report["si_snri_db"] = {name: _si_snri(est, clean, mix) for name, est in outputs.items()}
    for name, audio in [("mix", mix), ("clean", clean)] + list(outputs.items()):
        if audio is not None:
            write_wav(out / f"{name}.wav", audio)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if opts.plot:
        from kb_ros.cli.demo_plot import plot_demo
        plot_demo(out / "demo.png", mix, boosted, large, clean, hints_log, clock)
    if not opts.quiet:
        print(format_table(report, out))
    return report


def _si_snri(est: np.ndarray, clean: np.ndarray, mix: np.ndarray) -> float:
    """SI-SNR improvement, undoing the model's fixed output delay before comparing."""
    from kb_ros.models.filterbank import OUTPUT_DELAY_SAMPLES as delay
    n = min(len(est) - delay, len(clean), len(mix))
    return float(si_snr_improvement(est[delay:delay + n], clean[:n], mix[:n]))


def format_table(report: dict, out_dir: Path) -> str:
    snr = report.get("si_snri_db", {})
    rows = [("SI-SNRi small alone (no hints)", f"{snr.get('small', float('nan')):6.2f} dB"),
            ("SI-SNRi boosted (small + hints)", f"{snr.get('boosted', float('nan')):6.2f} dB"),
            ("SI-SNRi large alone (the hints)", f"{snr.get('large', float('nan')):6.2f} dB"),
            ("hint hit rate", f"{report['hint_hit_rate']:6.1%}"),
            ("hint ages used (chunks: count)", report["hint_age_histogram"]),
            ("compute per chunk p50 / p99",
             f"{report['compute_ms']['p50']:.2f} / {report['compute_ms']['p99']:.2f} ms "
             f"(budget 8 ms)"),
            ("capture stamp -> enhanced publish p50 / p99",
             f"{report['stamp_to_publish_ms']['p50']:.2f} / "
             f"{report['stamp_to_publish_ms']['p99']:.2f} ms"),
            ("chunks in / out (in order)",
             f"{report['input_chunks']} / {report['enhanced_chunks']} "
             f"({'yes' if report['in_order'] else 'NO'})")]
    width = max(len(r[0]) for r in rows)
    lines = ["", "kb-ros demo results", "-" * (width + 30)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines += ["-" * (width + 30),
              "The stamp is the capture time of a chunk's first sample, so stamp -> publish "
              "includes the 8 ms chunk itself.",
              f"Outputs (WAVs, demo.png, report.json, logs/) in {out_dir}"]
    return "\n".join(lines)


def default_options(out_dir: Path | None = None) -> DemoOptions:
    out_dir = out_dir or Path("kb_demo_out") / time.strftime("%Y%m%d-%H%M%S")
    return DemoOptions(out_dir=out_dir, mix_wav=demo_sample_path("mix"),
                       clean_wav=demo_sample_path("clean"))
