"""
How many device streams one machine serves hints to in real time: batched vs one per process.

Each stream delivers a chunk every 8 ms (125 chunks/s); the streams' phases are spread evenly
over the chunk, as independent devices would be. ``batched`` serves N streams from one process
with the code hint_node runs (``HintServer`` + ``BatchedEngine``): take in what has arrived,
step every stream with a queued chunk as one batch, repeat. ``per_process`` runs N processes
that each serve one stream with the same code (N single-stream hint_nodes). A run is real time
when the p99 of its model steps is under the 8 ms chunk and every chunk got its hint; a chunk
still queued after 8 more have arrived (the largest hint age) is dropped as stale. The sweep of
a mode goes on while no chunk is stale: more streams would only fall further behind. Run
``python3 -m kb_ros.cli.bench_streams``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from kb_ros.audio.clock import CHUNK_FRAMES, CHUNK_MS, Chunk
from kb_ros.audio.wav import read_wav
from kb_ros.boosting.batched_engine import BatchedEngine
from kb_ros.boosting.hint_server import HintServer
from kb_ros.cli.arg_types import finite_float
from kb_ros.cli.bench_ops import op_profile
from kb_ros.models.shipped import load_model_and_manifest
from kb_ros.resources import demo_sample_path

MODEL = "large"
CHUNK_S = CHUNK_MS / 1e3
COST_STEPS = 60
HINT_HORIZON_CHUNKS = 8  # a chunk queued longer than the largest hint age is not kept up with


@dataclass
class RunResult:
    """What one paced run measured: every step (wall and CPU time) and every hint's latency."""

    step_ms: list[float]
    step_cpu_ms: list[float]
    hint_latency_ms: list[float]
    chunks: int
    hints: int
    stale_drops: int
    steps: int


def _demo_chunks() -> np.ndarray:
    """Return the shipped demo mixture as ``[n_chunks, 128, channels]``: real audio to loop."""
    audio, _ = read_wav(demo_sample_path("mix"))
    n_chunks = len(audio) // CHUNK_FRAMES
    return audio[:n_chunks * CHUNK_FRAMES].reshape(n_chunks, CHUNK_FRAMES, -1)


def serve_paced(engine: BatchedEngine, streams: int, seconds: float, phase_s: list[float],
                start_s: float) -> RunResult:
    """
    Serve ``streams`` paced streams from ``start_s`` (``time.perf_counter``) for ``seconds``.

    Stream s's chunk k is due at ``start_s + phase_s[s] + (k + 1) * 8 ms`` (it exists once its
    last sample is captured). Each turn queues every chunk that is due, then steps, as
    hint_node does; a hint's latency runs from its chunk's due time to the hint.
    """
    audio = _demo_chunks()
    step_ms: list[float] = []
    step_cpu_ms: list[float] = []
    latency_ms: list[float] = []

    def received(_stream: int, hint: Chunk) -> None:
        latency_ms.append(time.perf_counter() * 1e3 - hint.stamp_ns / 1e6)

    for stream in range(streams):
        engine.reset(stream)
    server = HintServer(engine, received, max_queue_chunks=HINT_HORIZON_CHUNKS)
    next_chunk = [0] * streams
    end_s = start_s + seconds

    def due_s(stream: int) -> float:
        return start_s + phase_s[stream] + (next_chunk[stream] + 1) * CHUNK_S

    while True:
        now_s = time.perf_counter()
        for stream in range(streams):
            while due_s(stream) <= min(now_s, end_s):
                k = next_chunk[stream]
                chunk = audio[(k + 97 * stream) % len(audio)]
                server.submit(stream, [Chunk(round(due_s(stream) * 1e9), chunk)])
                next_chunk[stream] += 1
        if server.pending:
            step_start_s, cpu_start_s = time.perf_counter(), time.process_time()
            server.step()
            step_ms.append((time.perf_counter() - step_start_s) * 1e3)
            step_cpu_ms.append((time.process_time() - cpu_start_s) * 1e3)
        elif now_s >= end_s:
            break
        else:
            time.sleep(max(0.0, min(min(map(due_s, range(streams))), end_s) - now_s))
    counters = server.stats.streams
    return RunResult(step_ms, step_cpu_ms, latency_ms, sum(c.queued for c in counters),
                     sum(c.hints for c in counters), sum(c.stale_drops for c in counters),
                     server.stats.steps)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan")}
    return {"p50": round(float(np.percentile(values, 50)), 4),
            "p99": round(float(np.percentile(values, 99)), 4)}


def summarize(streams: int, runs: list[RunResult]) -> dict[str, Any]:
    """
    One N of a mode: step and hint latency percentiles (ms and x 8 ms), counts, verdict.

    ``step_cpu_ms`` is the CPU time of a step: on a machine shared with other work it shows
    what a step costs where ``step_ms`` (wall clock) also counts time descheduled.
    """
    step = _percentiles([v for run in runs for v in run.step_ms])
    chunks, hints = sum(r.chunks for r in runs), sum(r.hints for r in runs)
    drops, steps = sum(r.stale_drops for r in runs), sum(r.steps for r in runs)
    return {"streams": streams, "step_ms": step,
            "step_ratio": {k: round(v / CHUNK_MS, 4) for k, v in step.items()},
            "step_cpu_ms": _percentiles([v for run in runs for v in run.step_cpu_ms]),
            "hint_latency_ms": _percentiles([v for r in runs for v in r.hint_latency_ms]),
            "batch_mean": round(hints / steps, 3) if steps else 0.0,
            "chunks": chunks, "hints": hints, "stale_drops": drops,
            "realtime": bool(step["p99"] < CHUNK_MS and drops == 0 and hints == chunks > 0)}


def _phases(streams: int) -> list[float]:
    return [CHUNK_S * s / streams for s in range(streams)]


def run_batched(engine: BatchedEngine, streams: int, seconds: float) -> dict[str, Any]:
    result = serve_paced(engine, streams, seconds, _phases(streams), time.perf_counter() + 0.05)
    return summarize(streams, [result])


def run_per_process(streams: int, seconds: float, threads: int, device: str) -> dict[str, Any]:
    """Start N worker processes, wait until each has its model ready, then start them at once."""
    workers = [subprocess.Popen(
        [sys.executable, "-m", "kb_ros.cli.bench_streams", "--worker", "--seconds", str(seconds),
         "--phase-s", str(phase), "--threads", str(threads), "--device", device],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for phase in _phases(streams)]
    try:
        for worker in workers:
            line = worker.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"bench worker failed to start (said {line!r})")
        start_wall_s = time.time() + 0.2
        for worker in workers:
            worker.stdin.write(f"{start_wall_s}\n")
            worker.stdin.flush()
        results = [RunResult(**json.loads(worker.stdout.read())) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.communicate()  # reaps it and closes its pipes
    return summarize(streams, results)


def _worker(seconds: float, phase_s: float, threads: int, device: str) -> None:
    """One stream in this process: load, say ready, wait for the start time, serve, report."""
    model, _ = load_model_and_manifest(MODEL)
    engine = BatchedEngine(model, 1, threads=threads, device=device)
    print("ready", flush=True)
    start_wall_s = float(sys.stdin.readline())
    start_s = time.perf_counter() + (start_wall_s - time.time())
    result = serve_paced(engine, 1, seconds, [phase_s], start_s)
    print(json.dumps(result.__dict__))


def batch_cost(engine: BatchedEngine, max_streams: int, steps: int) -> list[dict[str, Any]]:
    """
    CPU time of back-to-back batched steps for B = 1..max_streams: what a step costs.

    Unlike the paced runs' wall-clock figures this does not count time the process spends
    descheduled, so it shows what an otherwise idle core would give.
    """
    audio = _demo_chunks()
    rows = []
    for batch in range(1, max_streams + 1):
        cpu_ms = []
        for k in range(steps):
            start_s = time.process_time()
            engine.process({stream: audio[(k + 97 * stream) % len(audio)]
                            for stream in range(batch)})
            cpu_ms.append((time.process_time() - start_s) * 1e3)
        cost = _percentiles(cpu_ms)
        rows.append({"batch": batch, "step_cpu_ms": cost,
                     "per_stream_cpu_ms": round(cost["p50"] / batch, 4),
                     "within_chunk": cost["p99"] < CHUNK_MS})
    for stream in range(max_streams):
        engine.reset(stream)
    return rows


def _notify(progress: Any, message: str) -> None:
    """Tell ``progress`` (a tqdm bar: one update per run, or a callable) that a run ended."""
    if progress is None:
        return
    if hasattr(progress, "update"):
        progress.set_postfix_str(message)
        progress.update(1)
    else:
        progress(message)


def _sweep(mode: str, max_streams: int, run: Callable[[int], dict[str, Any]],
           progress: Any) -> dict[str, Any]:
    runs = []
    for streams in range(1, max_streams + 1):
        result = run(streams)
        runs.append(result)
        _notify(progress, f"{mode} N={streams}: step p99 {result['step_ms']['p99']:.2f} ms")
        if result["stale_drops"]:
            break
    realtime = [r["streams"] for r in runs if r["realtime"]]
    return {"max_streams_realtime": max(realtime, default=0), "runs": runs}


def bench_hint_server(max_streams: int, seconds: float, progress: Any = None, *,
                      threads: int = 1, device: str = "cpu") -> dict[str, Any]:
    """
    Sweep N = 1..max_streams for both modes; return per-N figures and the largest real-time N.

    ``progress``: None, a callable taking a line, or a tqdm bar (one update for the batch cost
    and one per run: at most 1 + 2 x max_streams).
    """
    if max_streams < 1 or seconds <= 0:
        raise ValueError("max_streams must be >= 1 and seconds > 0")
    model, manifest = load_model_and_manifest(MODEL)
    engine = BatchedEngine(model, max_streams, threads=threads, device=device)
    cost = batch_cost(engine, max_streams, COST_STEPS)
    ops = ([op_profile(model, batch, COST_STEPS) for batch in (1, max_streams)]
           if max_streams > 1 else [])
    _notify(progress, "batched step cost measured")
    return {
        "chunk_ms": CHUNK_MS, "seconds_per_run": seconds, "model": manifest["model_id"],
        "threads_per_process": threads, "cpu_count": os.cpu_count(), "device": device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "batch_cost": cost, "op_profile": [profile for profile in ops if profile],
        "max_streams_cpu_bound": max((row["batch"] for row in cost if row["within_chunk"]),
                                     default=0),
        "batched": _sweep("batched", max_streams,
                          lambda n: run_batched(engine, n, seconds), progress),
        "per_process": _sweep("per_process", max_streams,
                              lambda n: run_per_process(n, seconds, threads, device),
                              progress),
    }


def print_markdown(result: dict[str, Any]) -> None:
    """Print the result as the Markdown tables docs/SCALING.md quotes."""
    print(f"model `{result['model']}` on {result['device']}, {result['cpu_count']} CPU cores, "
          f"GPU: {result['gpu'] or 'none'}, {result['threads_per_process']} torch thread(s) "
          f"per process, {result['seconds_per_run']} s per run\n")
    print("| batch B | step CPU p50 / p99 ms | per stream (p50 / B) ms | p99 < 8 ms |\n"
          "|---|---|---|---|")
    for row in result["batch_cost"]:
        cpu = row["step_cpu_ms"]
        print(f"| {row['batch']} | {cpu['p50']:.2f} / {cpu['p99']:.2f} | "
              f"{row['per_stream_cpu_ms']:.2f} | {'yes' if row['within_chunk'] else 'no'} |")
    print(f"\nlargest batch within the chunk on CPU time: {result['max_streams_cpu_bound']}\n")
    print("| mode | N | step p50 / p99 ms | x 8 ms | step CPU p50 / p99 ms | hint latency "
          "p50 / p99 ms | mean batch | stale drops | real time |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for mode in ("batched", "per_process"):
        for r in result[mode]["runs"]:
            step, ratio, cpu, lat = (r["step_ms"], r["step_ratio"], r["step_cpu_ms"],
                                     r["hint_latency_ms"])
            print(f"| {mode} | {r['streams']} | {step['p50']:.2f} / {step['p99']:.2f} | "
                  f"{ratio['p50']:.2f} / {ratio['p99']:.2f} | {cpu['p50']:.2f} / "
                  f"{cpu['p99']:.2f} | {lat['p50']:.1f} / {lat['p99']:.1f} | "
                  f"{r['batch_mean']:.2f} | {r['stale_drops']} | "
                  f"{'yes' if r['realtime'] else 'no'} |")
    for mode in ("batched", "per_process"):
        print(f"\n{mode}: largest N in real time = {result[mode]['max_streams_realtime']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m kb_ros.cli.bench_streams",
                                     description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--max-streams", type=int, default=8, help="largest N to try")
    parser.add_argument("--seconds", type=finite_float, default=5.0, help="length of each run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--phase-s", type=finite_float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.seconds, args.phase_s, args.threads, args.device)
        return 0
    result = bench_hint_server(args.max_streams, args.seconds,
                               None if args.json else lambda line: print(line, file=sys.stderr),
                               threads=args.threads, device=args.device)
    if args.json:
        print(json.dumps(result))
    else:
        print_markdown(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
