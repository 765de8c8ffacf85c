"""
``kb-ros bench``: how fast, how late and how heavy kb_ros is on this machine, in one report.

Sections (each in ``kb_ros/cli/bench_*.py``): the machine's own floor, how late a thread wakes
from an 8 ms sleep and what pacing does to fixed work (``bench_floor``), per-chunk compute of
the shipped models and where it goes (``bench_compute``), the small node's whole per-chunk
path in process (``bench_node``), end-to-end latency and per-process CPU and memory through
real node processes on loopback DDS (``bench_graph``), hint bandwidth and quality per hint
format (``bench_hints``) and how many device streams one hint server serves in real time
(``bench_streams``). Figures are median and p99, in ms and as ratios to the 8 ms chunk;
``--doc`` writes them as Markdown with plots.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kb_ros.audio.clock import CHUNK_MS
from kb_ros.boosting.hint_format import DEFAULT_HINT_FORMAT

# Device-side targets on one core: compute, CPU share and latency beyond the algorithmic.
# (bound, whether the figure must stay below it or reach it)
TARGETS = {"boosted_compute_p99_ms": (1.0, "below"), "small_node_cpu_pct": (15.0, "below"),
           "e2e_extra_latency_p99_ms": (3.0, "below"), "hint_server_max_streams": (8, "reach")}


@dataclass
class BenchOptions:
    quick: bool = False
    doc: Path | None = None
    data_dir: Path | None = None
    val_examples: int = 2
    hint_format: str = DEFAULT_HINT_FORMAT
    command: str = "kb-ros bench"

    @property
    def e2e_seconds(self) -> float:
        return 2.0 if self.quick else 8.0

    @property
    def demo_seconds(self) -> float | None:
        """How much of the shipped sample to use: all of it, or 2 s when quick."""
        return 2.0 if self.quick else None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load and software versions: what the figures depend on."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    return {"cpu_model": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": 1, "python": platform.python_version(),
            "platform": platform.platform(), "load_average_start": list(os.getloadavg())}


def _hint_server(quick: bool, notify: Callable[[str], None]) -> dict[str, Any] | None:
    """Run the hint-server sweep of ``bench_streams``, where that module exists."""
    try:
        from kb_ros.cli.bench_streams import bench_hint_server
    except ImportError:
        return None
    return bench_hint_server(1 if quick else 8, 0.5 if quick else 1.5, notify)


def _targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    measured = {"boosted_compute_p99_ms": report["boosted_compute_ms"]["p99"],
                "small_node_cpu_pct": report["small_node_cpu_pct"],
                "e2e_extra_latency_p99_ms": report["e2e_extra_latency_ms"]["p99"],
                "hint_server_max_streams": report.get("hint_server_max_streams")}
    targets = {}
    for key, (bound, sense) in TARGETS.items():
        value = measured[key]
        met = None if value is None else value < bound if sense == "below" else value >= bound
        targets[key] = {"target": bound, "sense": sense, "measured": value, "met": met}
    return targets


def run_bench(opts: BenchOptions, progress: Any = None) -> dict[str, Any]:
    """Run every section and return the report (stable keys: see the README)."""
    import torch

    from kb_ros.cli.bench_compute import compute_section, load_demo
    from kb_ros.cli.bench_floor import StealMeter, floor_section
    from kb_ros.cli.bench_graph import e2e_section
    from kb_ros.cli.bench_hints import hints_section
    from kb_ros.cli.bench_node import node_path_section

    steal = StealMeter()

    def stage(name: str) -> Callable[[str], None]:
        steal.start(name)
        if progress is not None:
            progress.set_description(f"kb-ros bench: {name}")
        return lambda detail: progress.set_postfix_str(detail) if progress is not None else None

    def done() -> None:
        steal.stop()
        if progress is not None:
            progress.update(1)

    started = time.monotonic()
    torch.set_num_threads(1)
    report: dict[str, Any] = {"command": opts.command, "quick": opts.quick,
                              "chunk_ms": CHUNK_MS, "machine": machine_info()}
    report["machine_floor"] = floor_section(opts.quick, stage("machine floor"))
    demo = load_demo(opts.demo_seconds)
    report["sample"] = {"chunks": demo.n_chunks, "seconds": demo.n_chunks * CHUNK_MS / 1e3}
    done()
    compute = compute_section(demo, opts.quick, stage("model compute"))
    for key in ("small_compute_ms", "boosted_compute_ms", "large_compute_ms"):
        report[key] = compute.pop(key)
    report["compute"] = compute
    done()
    report["node_path_ms"] = node_path_section(demo, opts.hint_format, opts.quick,
                                               stage("small node path"))
    done()
    e2e = e2e_section(demo, opts.hint_format, opts.e2e_seconds, stage("end to end"))
    report["e2e_latency_ms"] = e2e.pop("e2e_latency_ms")
    report["e2e_extra_latency_ms"] = e2e.pop("e2e_extra_latency_ms")
    report["small_node_cpu_pct"] = e2e["processes"]["small_node"]["cpu_pct"]
    report["e2e"] = e2e
    done()
    hints = hints_section(demo, opts.data_dir, 0 if opts.quick else opts.val_examples,
                          stage("hint formats"))
    report["hint_bandwidth"] = hints["bandwidth"]
    report["hint_quality"] = hints["quality"]
    report["hint_format_default"] = hints["default"]
    done()
    server = _hint_server(opts.quick, stage("hint server streams"))
    if server is not None:
        report["hint_server"] = server
        report["hint_server_max_streams"] = max(server[mode]["max_streams_realtime"]
                                                for mode in ("batched", "per_process"))
    done()
    report["targets"] = _targets(report)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["machine"]["steal_pct"] = steal.sections
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    if opts.doc is not None:
        from kb_ros.cli.bench_doc import write_doc
        write_doc(report, opts.doc)
    return report


STAGES = 6  # progress steps of run_bench


def format_summary(report: dict[str, Any]) -> str:
    """Summarize the headline figures and the targets in a few lines for the terminal."""
    lines = [f"kb-ros bench on {report['machine']['cpu_model']}, "
             f"{report['machine']['cores']} cores, torch {report['machine']['torch']} "
             f"({'quick' if report['quick'] else 'full'}, {report['elapsed_s']} s)"]
    rows = [("small model compute", report["small_compute_ms"]),
            ("boosted (kb + hint) compute", report["boosted_compute_ms"]),
            ("large model compute", report["large_compute_ms"]),
            ("small node path, in process", report["node_path_ms"]),
            ("end-to-end latency", report["e2e_latency_ms"]),
            ("  beyond the 12 ms algorithmic", report["e2e_extra_latency_ms"])]
    lines.append(f"{'per chunk':<32}{'p50 ms':>9}{'p99 ms':>9}{'p50/8ms':>9}{'p99/8ms':>9}")
    for name, row in rows:
        lines.append(f"{name:<32}{row['p50']:>9.3f}{row['p99']:>9.3f}"
                     f"{row['p50_ratio']:>9.3f}{row['p99_ratio']:>9.3f}")
    lines.append(f"small_node CPU {report['small_node_cpu_pct']:.1f} % of a core, "
                 f"hint server max streams {report.get('hint_server_max_streams', 'n/a')}, "
                 f"hint format from the data: {report['hint_format_default']['format']}")
    for key, target in report["targets"].items():
        lines.append(f"target {key} < {target['target']}: measured {target['measured']} "
                     f"({'met' if target['met'] else 'NOT met'})")
    return "\n".join(lines)


def add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="measure compute, latency, CPU and bandwidth")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--quick", action="store_true",
                       help="short runs (about a minute): for smoke tests, not for figures")
    bench.add_argument("--doc", type=Path,
                       help="write the report as Markdown here, with PNG plots beside it")
    bench.add_argument("--data", type=Path,
                       help="corpus folder (kb-ros data): also score hint formats on val.npz")
    bench.add_argument("--val-examples", type=int, default=2,
                       help="validation examples scored with --data (not with --quick)")
    bench.set_defaults(run=_bench)


def _command(args: argparse.Namespace) -> str:
    """Return the command line that reproduces this run."""
    words = ["kb-ros", "bench"] + ["--quick"] * args.quick + ["--json"] * args.json
    for flag, value in (("--doc", args.doc), ("--data", args.data)):
        words += [flag, str(value)] if value is not None else []
    if args.data is not None:
        words += ["--val-examples", str(args.val_examples)]
    return shlex.join(words)


def _bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    opts = BenchOptions(quick=args.quick, doc=args.doc, data_dir=args.data,
                        val_examples=args.val_examples, command=_command(args))
    with tqdm(total=STAGES, file=sys.stderr, desc="kb-ros bench") as bar:
        report = run_bench(opts, bar)
    print(json.dumps(report) if args.json else format_summary(report))
    return 0
