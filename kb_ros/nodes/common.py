"""Small pieces every node shares: throttled drop logging, live parameters, diagnostic levels."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from kb_ros.audio.clock import STAMP_TOLERANCE_RANGE_MS, STAMP_TOLERANCE_S, Chunk
from kb_ros.audio.pcm import SAMPLE_FORMATS, SAMPLE_RATE_RANGE, AudioFormat, PcmError
from kb_ros.audio.stream import PcmChunkStream
from kb_ros.transport import qos
from kb_ros.transport.backend import Backend, Logger, ParamSpec
from kb_ros.transport.messages import AUDIO_INFO, AudioInfoMsg

OK, WARN, ERROR, STALE = 0, 1, 2, 3


class DropLog:
    """Logs the first drop of each reason, then every ``every``-th, so floods stay quiet."""

    def __init__(self, logger: Logger, every: int = 500) -> None:
        self._logger = logger
        self._every = every
        self._seen: Counter = Counter()

    def __call__(self, reason: str, detail: str = "") -> None:
        self._seen[reason] += 1
        n = self._seen[reason]
        if n == 1 or n % self._every == 0:
            suffix = f": {detail}" if detail else ""
            self._logger.warning(f"dropped input ({reason}, {n} so far){suffix}")


class RateMeter:
    """Events per second of the node clock (ROS time under use_sim_time) between two reads."""

    def __init__(self, now_ns: Callable[[], int]) -> None:
        self._now_ns = now_ns
        self._mark = (now_ns(), 0)

    def rate(self, count: int) -> float:
        """Return the rate since the previous call, given the running total ``count``."""
        now = self._now_ns()
        (last_ns, last_count), self._mark = self._mark, (now, count)
        return round((count - last_count) * 1e9 / (now - last_ns), 1) if now > last_ns else 0.0


def compute_budget_params(warn_ratio: float) -> list[ParamSpec]:
    """Declare the WARN/ERROR thresholds on compute p99 as fractions of the 8 ms chunk."""
    return [
        ParamSpec("warn_compute_ratio", warn_ratio,
                  "WARN when compute p99 exceeds this fraction of the 8 ms chunk",
                  float_range=(0.01, 10.0)),
        ParamSpec("error_compute_ratio", 1.0,
                  "ERROR when compute p99 exceeds this fraction of the 8 ms chunk",
                  float_range=(0.01, 10.0)),
    ]


STAMP_TOLERANCE_PARAM = ParamSpec(
    "stamp_tolerance_ms", STAMP_TOLERANCE_S * 1e3,
    "How far an audio block's header stamp may stray from where the stream's sample count puts "
    "it and still continue the stream (beyond: a gap, or a dropped block). Drivers that stamp "
    "buffers with their publish time jitter by several ms: raise it to 20-30 for them, the "
    "same on small_node and hint_node", read_only=True, float_range=STAMP_TOLERANCE_RANGE_MS)

INPUT_FORMAT_PARAMS = [
    ParamSpec("input_format", "", "PCM format of `audio` from the start, for publishers without "
              "an `audio_info` (one that comes still wins): F32LE or S16LE. Empty: wait for "
              "`audio_info` (32 messages), then assume F32LE mono 16 kHz", read_only=True,
              choices=("", *sorted(SAMPLE_FORMATS))),
    ParamSpec("input_channels", 1, "Channels of `input_format`", read_only=True,
              int_range=(1, 64)),
    ParamSpec("input_rate", 16000, "Sample rate of `input_format` in Hz", read_only=True,
              int_range=SAMPLE_RATE_RANGE),
]


def declared_input_format(params: dict[str, Any]) -> AudioFormat | None:
    """Return the format the ``input_*`` parameters declare, or None (wait for audio_info)."""
    if not params["input_format"]:
        return None
    return AudioFormat(channels=params["input_channels"], sample_rate=params["input_rate"],
                       sample_format=params["input_format"])


RUNTIME_PARAM = ParamSpec(
    "runtime", "auto", "How the model's step runs: auto (ONNX Runtime on CPU when it can, "
    "else TorchScript; the first start with a model exports it, then it is cached), onnx, "
    "torchscript", read_only=True, choices=("auto", "onnx", "torchscript"))


def prepare_node_steps(device_models: tuple[str, ...] = ("kb",),
                       hint_models: tuple[str, ...] = ("large",)) -> None:
    """
    Build the steps small_node (device models) and hint_node (hint models) will run.

    So their ONNX graphs are cached: the first start with a model exports its graph (seconds),
    and nodes started together would each do it at once.
    """
    from kb_ros.boosting.batched_engine import BatchedEngine
    from kb_ros.boosting.engine import ChunkEngine
    from kb_ros.models.shipped import load_model_and_manifest
    for name in device_models:
        ChunkEngine(load_model_and_manifest(name)[0])
    for name in hint_models:
        BatchedEngine(load_model_and_manifest(name)[0], 1)


def log_runtime(log: Logger, runtime: str, note: str) -> None:
    """Say how the model runs, and warn when it fell back from ONNX Runtime."""
    if note:
        log.warning(note)
    log.info(f"model step runs on {runtime}")


def declare_all(backend: Backend, specs: list[ParamSpec]) -> dict[str, Any]:
    """
    Declare every parameter of a node and return their values by name.

    The dict stays current: run-time changes of writable parameters (``ros2 param set``, e.g.
    diagnostics thresholds or ``use_hints``) land in it once the backend accepted them.
    """
    values = {spec.name: backend.declare(spec) for spec in specs}
    backend.on_parameter_set(values.__setitem__)
    return values


INFO_REPEAT_S = 5.0  # as audio_capture sends its audio_info again


class InfoAnnouncer:
    """
    A node's ``*_info`` publisher: latched, and the latest info sent again every few seconds.

    Latching serves subscribers that ask for it; the repeats serve late subscribers that do not
    (a ROS 2 default subscription is volatile: DDS sends it no history), as audio_capture does.
    """

    def __init__(self, backend: Backend, topic: str, info: AudioInfoMsg | None = None) -> None:
        self._publisher = backend.create_publisher(AUDIO_INFO, topic, qos.INFO_PUB)
        self.info: AudioInfoMsg | None = None
        if info is not None:
            self.announce(info)
        backend.create_timer(INFO_REPEAT_S, self._repeat)

    def announce(self, info: AudioInfoMsg) -> None:
        """Publish ``info`` now; it is the one repeated from now on."""
        self.info = info
        self._publisher.publish(info)

    def _repeat(self) -> None:
        if self.info is not None:
            self._publisher.publish(self.info)


def adopt_format(stream: PcmChunkStream, msg: AudioInfoMsg, topic: str) -> list[Chunk]:
    """
    Switch an input stream to the format an ``*_info`` message announces.

    Returns the chunks of audio that waited for the format. An unusable format leaves the
    stream as it was and counts as the stream's drop ``bad_info`` (logged by its ``on_drop``).
    """
    try:
        return stream.set_format(msg.to_format())
    except PcmError as err:
        return stream.reject("bad_info", f"{topic}: {err}")


def audio_input(logger: Logger, drop_log: DropLog,
                stamp_tolerance_ms: float = STAMP_TOLERANCE_S * 1e3,
                fmt: AudioFormat | None = None) -> PcmChunkStream:
    """
    Make the input stream of a node subscribing ``audio`` and ``audio_info``.

    Without a declared ``fmt``, the first 32 messages (a quarter second) wait for
    ``audio_info`` so that a latched format arriving just after the first audio does not
    garble it.
    """
    def assumed(fmt: AudioFormat) -> None:
        logger.warning(f"no audio_info yet: assuming {fmt.sample_format}, {fmt.channels} "
                       f"channel(s), {fmt.sample_rate} Hz")

    try:
        return PcmChunkStream(fmt, on_drop=drop_log, hold_messages=32,
                              on_format_assumed=assumed,
                              stamp_tolerance_s=stamp_tolerance_ms / 1e3)
    except PcmError as err:  # only a declared format can be unusable
        raise ValueError(f"input_format: {err}") from None
