"""
What the encrypted bridge costs: round trip and CPU per 8 ms chunk, on loopback.

``python3 -m kb_ros.transport.bridge_bench [--seconds S] [--tick-ms T]``: a device endpoint
(this process) sends one audio chunk every 8 ms, as CDR, to a workstation endpoint in a second
process, which decodes it and sends a hint of the same size back at once; both poll every
``tick_ms`` as link_node does. It prints the round trip (send of the audio to decoded hint:
encryption, TCP, both polls, CDR both ways, no model) and each side's CPU per chunk, as median
and p99 in ms and as ratios to the 8 ms chunk. Keys are made in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from kb_ros.audio.clock import CHUNK_MS
from kb_ros.bags.convert import MessageCodec
from kb_ros.transport.bridge_keys import (create_key_folders, load_authorized_devices,
                                          load_public_key, load_secret_key, workstation_paths)
from kb_ros.transport.curve_bridge import (BridgeSettings, DeviceEndpoint,
                                           WorkstationEndpoint)
from kb_ros.transport.dds_backend import RosLogger
from kb_ros.transport.messages import AUDIO_STAMPED, AudioChunkMsg

DEVICE = "bench"
CHUNK_BYTES = 512  # 128 float32 samples


def _stats(values_ms: list[float]) -> dict[str, float]:
    p50, p99 = (float(v) for v in np.percentile(values_ms, [50, 99]))
    return {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
            "p50_ratio": round(p50 / CHUNK_MS, 4), "p99_ratio": round(p99 / CHUNK_MS, 4)}


def _workstation(keys: Path, settings: BridgeSettings, tick_s: float, stop_after_s: float,
                 cpu_out: multiprocessing.Queue) -> None:
    """Echo each audio chunk back as a hint with its stamp until no audio came for a while."""
    ws_keys = workstation_paths(keys)
    endpoint = WorkstationEndpoint(settings, load_secret_key(ws_keys.secret_key),
                                   load_authorized_devices(ws_keys.authorized_keys_dir),
                                   {"audio"}, RosLogger("bench.workstation"))
    codec = MessageCodec()
    cpu_ms: list[float] = []
    last_s = time.monotonic() + 30.0  # time to connect
    try:
        while time.monotonic() - last_s < stop_after_s:
            for message in endpoint.poll():
                start = time.thread_time()
                chunk = codec.deserialize(AUDIO_STAMPED, message.payload)
                endpoint.send(DEVICE, "hints", codec.serialize(AUDIO_STAMPED, chunk))
                cpu_ms.append((time.thread_time() - start) * 1e3)
                last_s = time.monotonic()
            time.sleep(tick_s)
    finally:
        endpoint.close()
        cpu_out.put((cpu_ms, dict(endpoint.counters.dropped)))


def run(seconds: float, tick_ms: float) -> dict:
    """Measure ``seconds`` of chunks through the bridge; return the figures."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = BridgeSettings("127.0.0.1", port)
    with tempfile.TemporaryDirectory() as folder:
        ws_keys, (device_keys,) = create_key_folders(Path(folder), [DEVICE])
        spawn = multiprocessing.get_context("spawn")
        cpu_out = spawn.Queue()
        server = spawn.Process(
            target=_workstation, args=(ws_keys.secret_key.parent, settings, tick_ms / 1e3, 1.0,
                                       cpu_out))
        server.start()
        device = DeviceEndpoint(settings, load_secret_key(device_keys.secret_key),
                                load_public_key(device_keys.server_public_key), {"hints"},
                                RosLogger("bench.device"))
        try:
            round_trip_ms, device_cpu_ms = _stream(device, seconds, tick_ms / 1e3)
        finally:
            device.close()
        workstation_cpu_ms, workstation_dropped = cpu_out.get(timeout=60)
        server.join(timeout=10)
    return {"chunks": int(seconds * 1e3 / CHUNK_MS), "returned": len(round_trip_ms),
            "dropped": {"device": dict(device.counters.dropped),
                        "workstation": workstation_dropped},
            "tick_ms": tick_ms, "round_trip": _stats(round_trip_ms),
            "device_cpu_per_chunk": _stats(device_cpu_ms),
            "workstation_cpu_per_chunk": _stats(workstation_cpu_ms)}


def _stream(device: DeviceEndpoint, seconds: float,
            tick_s: float) -> tuple[list[float], list[float]]:
    """Send a chunk every 8 ms once connected; time each hint's return and our CPU per chunk."""
    codec = MessageCodec()
    deadline = time.monotonic() + 30.0
    while not device.workstation.connected:
        if time.monotonic() > deadline:
            raise RuntimeError("the benchmark's workstation process did not answer")
        device.poll()
        time.sleep(tick_s)
    audio = bytes(CHUNK_BYTES)
    n_chunks = int(seconds * 1e3 / CHUNK_MS)
    round_trip_ms: list[float] = []
    cpu_ms = [0.0] * n_chunks
    start = time.monotonic_ns()
    sent = 0
    while len(round_trip_ms) < n_chunks and time.monotonic_ns() < start + (seconds + 2) * 1e9:
        if sent < n_chunks and time.monotonic_ns() >= start + sent * CHUNK_MS * 1e6:
            cpu_start = time.thread_time()
            device.send("audio", codec.serialize(AUDIO_STAMPED, AudioChunkMsg(
                time.monotonic_ns(), audio)))
            cpu_ms[sent] += (time.thread_time() - cpu_start) * 1e3
            sent += 1
        for message in device.poll():
            cpu_start = time.thread_time()
            hint = codec.deserialize(AUDIO_STAMPED, message.payload)
            round_trip_ms.append((time.monotonic_ns() - hint.stamp_ns) / 1e6)
            cpu_ms[len(round_trip_ms) - 1] += (time.thread_time() - cpu_start) * 1e3
        time.sleep(tick_s)
    return round_trip_ms, cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio streamed")
    parser.add_argument("--tick-ms", type=float, default=1.0, help="link_node's tick_ms")
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.tick_ms), indent=1))


if __name__ == "__main__":
    main()
