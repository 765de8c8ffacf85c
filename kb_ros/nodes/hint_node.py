"""
hint_node: the workstation side, one large model serving one or many device streams.

Each stream is a namespace (parameter ``streams``, relative to the node's like any ROS name):
the node subscribes ``<stream>/audio`` (+ ``audio_info``) and publishes the large model's output
for each chunk on ``<stream>/hints``, stamped with that chunk's exact stamp (+ latched
``hint_info`` naming the model). The default, ``['']``, is the node's own namespace.

<stream>/audio -> [PcmChunkStream] -> [HintServer: queue, micro-batch] -> <stream>/hints
                                              [BatchedEngine(large)]

Audio callbacks only queue chunks and ask for a step with ``call_soon``; the step runs every
stream with a queued chunk as one batch, so streams that arrive while a step runs share the
next one and no stream ever waits for another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kb_ros.audio.clock import CHUNK_MS, Chunk
from kb_ros.audio.pcm import encode_pcm
from kb_ros.audio.stream import PcmChunkStream
from kb_ros.boosting.batched_engine import BatchedEngine
from kb_ros.boosting.hint_format import (DEFAULT_HINT_FORMAT, HINT_FORMATS, HintStreamInfo,
                                         hint_audio_format)
from kb_ros.boosting.hint_server import HintServer, StreamCounters
from kb_ros.models.shipped import load_model_and_manifest
from kb_ros.nodes.common import (ERROR, INPUT_FORMAT_PARAMS, OK, RUNTIME_PARAM,
                                 STAMP_TOLERANCE_PARAM, WARN, DropLog, InfoAnnouncer, RateMeter,
                                 adopt_format, audio_input, compute_budget_params,
                                 declare_all, declared_input_format, log_runtime)
from kb_ros.nodes.runner import run_node
from kb_ros.transport import qos
from kb_ros.transport.backend import (Backend, DiagnosticReport, Logger, ParamSpec, Publisher,
                                      subscribe_info)
from kb_ros.transport.messages import AUDIO_STAMPED, AudioChunkMsg, AudioInfoMsg
from kb_ros.transport.ros_args import expand_topic_name

MAX_STREAMS = 64
ACTIVE_WINDOW_NS = 1_000_000_000  # a stream with a chunk this recent counts as active

PARAMS = [
    ParamSpec("model", "large", "Shipped model name or checkpoint path of the large model",
              read_only=True),
    ParamSpec("hint_format", DEFAULT_HINT_FORMAT, "Coding of `hints`: MULAW (G.711 mu-law, "
              "128 kbit/s per source), S16LE (256) or F32LE (512); docs/BENCHMARKS.md",
              read_only=True, choices=tuple(HINT_FORMATS)),
    ParamSpec("threads", 1, "Intra-op threads", read_only=True, int_range=(1, 64)),
    RUNTIME_PARAM,
    STAMP_TOLERANCE_PARAM,
    *INPUT_FORMAT_PARAMS,
    ParamSpec("device", "cpu", "Torch device of the large model: cpu, cuda or cuda:N (one "
              "hint_node per GPU)", read_only=True),
    ParamSpec("streams", [""], "Device streams served, one namespace each, relative to the "
              "node's or absolute: '<ns>/audio' in, '<ns>/hints' out; '' is the node's own "
              f"namespace (at most {MAX_STREAMS})", read_only=True),
    ParamSpec("max_queue_chunks", 125, "Chunks a stream may queue while the model is busy "
              "(125: 1 s, so a brief stall is caught up); beyond, its oldest is dropped "
              "(counted). 8, the largest hint age, favours fresh hints on an overloaded server",
              read_only=True, int_range=(1, 1250)),
    *compute_budget_params(warn_ratio=0.8),
]


class _StreamLogger:
    """Prefixes a stream's name to the node logger's lines, so drops name their stream."""

    def __init__(self, logger: Logger, name: str) -> None:
        self._logger, self._prefix = logger, f"{name}: "

    def info(self, msg: str) -> Any:
        return self._logger.info(self._prefix + msg)

    def warning(self, msg: str) -> Any:
        return self._logger.warning(self._prefix + msg)

    def error(self, msg: str) -> Any:
        return self._logger.error(self._prefix + msg)


@dataclass
class DeviceStream:
    """One served device: its input, its hint publisher and what diagnostics compare against."""

    name: str  # the resolved namespace, for logs and diagnostics
    input: PcmChunkStream
    drop_log: DropLog
    hints_pub: Publisher
    rate: RateMeter
    frame_id: str = ""
    last_chunk_ns: int = 0
    reported_problems: dict[str, int] = field(default_factory=dict)


def stream_topic(stream: str, name: str) -> str:
    """Return topic ``name`` in a stream's namespace as given (relative, absolute, '' = own)."""
    return f"{stream.rstrip('/')}/{name}" if stream else name


class HintNode:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.log = backend.get_logger()
        self.params = declare_all(backend, PARAMS)
        names = self._stream_names(self.params["streams"])
        model, manifest = load_model_and_manifest(self.params["model"])
        self.model_id = manifest["model_id"]
        engine = BatchedEngine(model, len(names), threads=self.params["threads"],
                               runtime=self.params["runtime"],
                               device=self.params["device"])
        log_runtime(self.log, engine.runtime, engine.runtime_note)
        self.server = HintServer(engine, self.publish_hint,
                                 max_queue_chunks=self.params["max_queue_chunks"])
        self.hint_format = hint_audio_format(self.params["hint_format"], engine.sources)
        info = AudioInfoMsg.from_format(self.hint_format)
        info.coding_format = HintStreamInfo(self.model_id, self.hint_format.coding).coding_format()
        self.streams = [self._open_stream(index, stream, name, info)
                        for index, (stream, name) in enumerate(names.items())]
        self._step_requested = False
        self.chunk_rate = RateMeter(backend.now_ns)
        backend.add_diagnostic_task("hints", self.diagnose)
        for index, stream in enumerate(self.streams):
            backend.add_diagnostic_task(f"stream {stream.name}",
                                        lambda index=index: self.diagnose_stream(index))
        self.log.info(f"ready: model {self.model_id}, hints as {self.params['hint_format']} "
                      f"for {len(self.streams)} stream(s): {', '.join(names.values())}")

    def _stream_names(self, streams: Any) -> dict[str, str]:
        """Validate ``streams``; map each entry to its resolved namespace (ValueError if bad)."""
        if (not isinstance(streams, list) or not 1 <= len(streams) <= MAX_STREAMS
                or not all(isinstance(s, str) for s in streams)):
            raise ValueError(f"parameter 'streams' must list 1..{MAX_STREAMS} namespaces, "
                             f"got {streams!r}")
        names: dict[str, str] = {}
        for stream in streams:
            audio = expand_topic_name(stream_topic(stream, "audio"), self.backend.namespace,
                                      self.backend.node_name)
            name = audio.rpartition("/")[0] or "/"
            if name in names.values():
                raise ValueError(f"parameter 'streams' names {name} twice")
            names[stream] = name
        return names

    def _open_stream(self, index: int, stream: str, name: str,
                     info: AudioInfoMsg) -> DeviceStream:
        logger = _StreamLogger(self.log, name)
        drop_log = DropLog(logger)
        tolerance_ms = self.params["stamp_tolerance_ms"]
        device = DeviceStream(name, audio_input(logger, drop_log, tolerance_ms,
                                                declared_input_format(self.params)), drop_log,
                              self.backend.create_publisher(
                                  AUDIO_STAMPED, stream_topic(stream, "hints"), qos.HINT_PUB),
                              RateMeter(self.backend.now_ns))
        InfoAnnouncer(self.backend, stream_topic(stream, "hint_info"), info)
        subscribe_info(
            self.backend, stream_topic(stream, "audio_info"),
            lambda msg: self._queue(index, adopt_format(device.input, msg, "audio_info")))
        self.backend.create_subscription(
            AUDIO_STAMPED, stream_topic(stream, "audio"),
            lambda msg: self.on_audio(index, msg), qos.AUDIO_SUB)
        return device

    def on_audio(self, index: int, msg: AudioChunkMsg) -> None:
        device = self.streams[index]
        chunks = device.input.push(msg.stamp_ns, msg.data)
        if chunks:  # a dropped message changes nothing, not even the frame_id
            device.frame_id = msg.frame_id
        self._queue(index, chunks)

    def _queue(self, index: int, chunks: list[Chunk]) -> None:
        """Queue a stream's chunks; one step is requested for everything queued meanwhile."""
        if self._take(index, chunks) and not self._step_requested:
            self._step_requested = True
            self.backend.call_soon(self._step)

    def _take(self, index: int, chunks: list[Chunk]) -> bool:
        """Hand a stream's chunks to the server, logging any it drops; False if none."""
        if not chunks:
            return False
        device = self.streams[index]
        device.last_chunk_ns = self.backend.now_ns()
        for _ in range(self.server.submit(index, chunks)):
            device.drop_log("stale", "the server is behind: oldest queued chunk dropped")
        return True

    def _step(self) -> None:
        """One batched step; if chunks remain, the next runs after newly arrived input is in."""
        self._step_requested = False
        self.server.step()
        if self.server.pending:
            self._step_requested = True
            self.backend.call_soon(self._step)

    def finish(self) -> None:
        """At shutdown: serve every chunk received, audio still held for its format included."""
        for index, device in enumerate(self.streams):
            self._take(index, device.input.finish())
        while self.server.pending:
            self.server.step()

    def publish_hint(self, index: int, hint: Chunk) -> None:
        device = self.streams[index]
        device.hints_pub.publish(AudioChunkMsg(hint.stamp_ns,
                                               encode_pcm(hint.audio, self.hint_format),
                                               device.frame_id))

    def diagnose(self) -> DiagnosticReport:
        """Report the server: step time p99 against the chunk budget (thresholds are params)."""
        stats = self.server.stats
        step = stats.step_ms.summary()
        ratio = step["p99"] / CHUNK_MS
        level, message = OK, "serving hints"
        if ratio > self.params["error_compute_ratio"]:
            level, message = ERROR, "large model slower than real time"
        elif ratio > self.params["warn_compute_ratio"]:
            level, message = WARN, "large model close to the chunk budget"
        chunks = sum(counters.hints for counters in stats.streams)
        now_ns = self.backend.now_ns()
        wait = stats.wait_ms.summary()
        values = {"chunks": chunks, "chunk_rate_hz": self.chunk_rate.rate(chunks),
                  "model": self.model_id, "streams": len(self.streams),
                  "streams_active": sum(now_ns - s.last_chunk_ns < ACTIVE_WINDOW_NS
                                        for s in self.streams),
                  "steps": stats.steps,
                  "batch_mean": round(chunks / stats.steps, 3) if stats.steps else 0.0,
                  "batch_max": int(stats.batch_size.max),
                  "compute_p50_ms": step["p50"], "compute_p99_ms": step["p99"],
                  "compute_p99_ratio": round(ratio, 4),
                  "queue_wait_p50_ms": wait["p50"], "queue_wait_p99_ms": wait["p99"],
                  "stale_drops": sum(counters.stale_drops for counters in stats.streams),
                  "input_drops": sum(sum(s.input.drops.values()) for s in self.streams)}
        return DiagnosticReport(level, message, values)

    def diagnose_stream(self, index: int) -> DiagnosticReport:
        """Report one stream: its chunks, hints and drops; WARN while it loses input or resets."""
        device = self.streams[index]
        counters: StreamCounters = self.server.stats.streams[index]
        problems = {"input_drops": sum(device.input.drops.values()),
                    "stale_drops": counters.stale_drops, "model_resets": counters.resets}
        new = [name for name, n in problems.items()
               if n > device.reported_problems.get(name, 0)]
        device.reported_problems = problems
        level, message = OK, "streaming" if counters.hints else "waiting for audio"
        if new:
            level, message = WARN, "new " + ", ".join(new)
        values = {"chunks": counters.queued, "hints": counters.hints,
                  "chunk_rate_hz": device.rate.rate(counters.queued),
                  "queued": self.server.queued(index), **problems}
        values.update({f"input_drops.{reason}": n
                       for reason, n in sorted(device.input.drops.items())})
        return DiagnosticReport(level, message, values)


def main(argv: list[str] | None = None) -> None:
    run_node(HintNode, "hint_node", argv)


if __name__ == "__main__":
    main()
