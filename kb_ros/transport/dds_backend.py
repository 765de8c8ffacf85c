"""
The standalone backend: kb_ros nodes on Cyclone DDS, wire-compatible with ROS 2.

Topics, types and QoS are what rmw_cyclonedds_cpp uses (``/kb/audio`` is DDS topic
``rt/kb/audio``), so a ROS 2 node on Cyclone sees these nodes' topics. Execution mimics rclpy's
single-threaded executor: one thread runs every callback from ``spin()``, which blocks in a DDS
WaitSet (no polling) until data arrives, a timer is due, a listener event is queued or shutdown
is requested. Listener events (deadline missed, liveliness changed, incompatible QoS) arrive on
Cyclone's threads and are queued, so node code never runs concurrently with itself. Diagnostics
follow diagnostic_updater's ``Updater``, so ``/diagnostics`` reads the same as under rclpy.

``use_sim_time`` is accepted but ignored: the standalone clock is the system clock; replays with
simulated time need the rclpy backend and ``ros2 bag play --clock``.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from collections import deque
from typing import Any, Callable

from cyclonedds.core import (DDSException, GuardCondition, InstanceState, Listener, ReadCondition,
                             SampleState, ViewState, WaitSet)
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Policy, Qos
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from kb_ros.transport import qos as profiles
from kb_ros.transport.backend import UPDATER_PARAMS, DiagnosticReport, ParamSpec
from kb_ros.transport.dds_config import DdsConfig, open_participant, resolve_config
from kb_ros.transport.dds_types import CODECS, MalformedSample, WireCodec
from kb_ros.transport.messages import (DIAGNOSTIC_ARRAY, MESSAGE_TYPES, DiagnosticArrayMsg,
                                       DiagnosticStatusMsg)
from kb_ros.transport.qos import Durability, QosSpec, Reliability
from kb_ros.transport.ros_args import LOG_LEVELS, RosArgs

DDS_TOPIC_PREFIX = "rt"  # rmw_cyclonedds: ROS topic "/kb/audio" is DDS topic "rt/kb/audio"
MAX_IDLE_WAIT_NS = 1_000_000_000  # a safety net only: every event wakes the WaitSet itself
TAKE_BATCH = 64
RELIABLE_MAX_BLOCKING = duration(milliseconds=100)  # rmw default: a publish never blocks long
_ANY_SAMPLE = SampleState.Any | ViewState.Any | InstanceState.Any
# DDS QosPolicyId_t -> the lower-cased rclpy QoSPolicyKind name rclpy reports for it.
_POLICY_NAMES = {2: "durability", 4: "deadline", 8: "liveliness", 11: "reliability",
                 13: "history", 21: "lifespan"}


def dds_qos(spec: QosSpec, *, writer: bool) -> Qos:
    """
    Cyclone QoS for a kb_ros QosSpec, plain CDR (XCDR1) as rmw_cyclonedds uses.

    Writers offer XCDR1 only, so ROS 2 readers (which request XCDR1) match; readers accept
    XCDR1 and XCDR2 so that any well-formed DDS writer of the type matches.
    """
    policies: list[Any] = [
        Policy.Reliability.Reliable(RELIABLE_MAX_BLOCKING)
        if spec.reliability is Reliability.RELIABLE else Policy.Reliability.BestEffort,
        Policy.Durability.TransientLocal
        if spec.durability is Durability.TRANSIENT_LOCAL else Policy.Durability.Volatile,
        Policy.History.KeepLast(spec.depth),
        Policy.DataRepresentation(use_cdrv0_representation=True,
                                  use_xcdrv2_representation=not writer),
    ]
    if spec.deadline_ms is not None:
        policies.append(Policy.Deadline(_ms(spec.deadline_ms)))
    if spec.liveliness_lease_ms is not None:
        policies.append(Policy.Liveliness.Automatic(_ms(spec.liveliness_lease_ms)))
    if spec.lifespan_ms is not None and writer:
        policies.append(Policy.Lifespan(_ms(spec.lifespan_ms)))
    return Qos(*policies)


def _ms(value: float) -> int:
    return int(value * 1_000_000)


def _policy_name(policy_id: int) -> str:
    return _POLICY_NAMES.get(policy_id, f"policy {policy_id}")


class RosLogger:
    """Prints rcutils-style lines, ``[INFO] [<epoch s>.<ns>] [<logger>]: msg``, to stderr."""

    def __init__(self, name: str, level: str = "info") -> None:
        self.name = name
        self._threshold = LOG_LEVELS.index(level)

    def _log(self, level: str, msg: str) -> None:
        if LOG_LEVELS.index(level) >= self._threshold:
            sec, nsec = divmod(time.time_ns(), 1_000_000_000)
            sys.stderr.write(f"[{level.upper()}] [{sec}.{nsec:09d}] [{self.name}]: {msg}\n")

    def debug(self, msg: str) -> None:
        self._log("debug", msg)

    def info(self, msg: str) -> None:
        self._log("info", msg)

    def warning(self, msg: str) -> None:
        self._log("warn", msg)

    warn = warning

    def error(self, msg: str) -> None:
        self._log("error", msg)

    def fatal(self, msg: str) -> None:
        self._log("fatal", msg)


class DdsPublisher:
    """Publishes neutral messages (``kb_ros.transport.messages``) as their ROS 2 wire type."""

    def __init__(self, writer: DataWriter, codec: WireCodec, msg_class: type, topic: str) -> None:
        self.topic_name = topic
        self._writer = writer
        self._codec = codec
        self._msg_class = msg_class

    def publish(self, msg: Any) -> None:
        if not isinstance(msg, self._msg_class):
            raise TypeError(f"{self.topic_name} takes {self._msg_class.__name__}, "
                            f"got {type(msg).__name__}")
        self._writer.write(self._codec.to_wire(msg))

    def matched_count(self) -> int:
        return self._writer.get_publication_matched_status().current_count


class DdsSubscription:
    """A reader, its ReadCondition in the backend's WaitSet, and the user callback."""

    def __init__(self, reader: DataReader, codec: WireCodec, callback: Callable[[Any], None],
                 topic: str, logger: RosLogger | None = None, depth: int = TAKE_BATCH) -> None:
        self.topic_name = topic
        self.depth = depth  # the most samples the reader holds at once
        self.reader = reader
        self.condition = ReadCondition(reader, _ANY_SAMPLE)
        self.malformed = 0  # samples dropped because their bytes did not decode
        self._codec = codec
        self._callback = callback
        self._logger = logger

    def publisher_count(self) -> int:
        return self.reader.get_subscription_matched_status().current_count

    def dispatch(self, max_samples: int | None = None) -> None:
        """Take what is queued (up to ``max_samples``); run the callback per valid sample."""
        left = max_samples
        while left is None or left > 0:
            batch = TAKE_BATCH if left is None else min(TAKE_BATCH, left)
            samples = self.reader.take(batch, condition=self.condition)
            for sample in samples:
                if isinstance(sample, MalformedSample):
                    self._drop_malformed(sample)
                elif sample.sample_info.valid_data:  # skip "writer gone" notifications
                    self._callback(self._codec.from_wire(sample))
            if len(samples) < batch:
                return
            if left is not None:
                left -= len(samples)

    def _drop_malformed(self, sample: MalformedSample) -> None:
        """Count a sample that did not decode; log the first and every 500th."""
        self.malformed += 1
        if self._logger is not None and (self.malformed == 1 or self.malformed % 500 == 0):
            self._logger.warning(f"{self.topic_name}: dropped a malformed {sample.type_name} "
                                 f"({self.malformed} so far): {sample.error}")


class DdsTimer:
    """A periodic callback; missed periods are skipped, not bunched (as rclpy does)."""

    def __init__(self, period_s: float, callback: Callable[[], None]) -> None:
        if period_s <= 0:
            raise ValueError(f"timer period must be > 0, got {period_s}")
        self.period_ns = int(period_s * 1e9)
        self.next_due_ns = time.monotonic_ns() + self.period_ns
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def run_if_due(self, now_ns: int) -> None:
        if self.cancelled or now_ns < self.next_due_ns:
            return
        self.next_due_ns += self.period_ns
        if self.next_due_ns <= now_ns:
            self.next_due_ns = now_ns + self.period_ns
        self.callback()


class DiagnosticUpdater:
    """
    diagnostic_updater's ``Updater`` for the standalone backend.

    Same status names (``"<node>: <task>"``), hardware_id, values as strings, and the
    "Node starting up" status it publishes when a task is added.
    """

    def __init__(self, publisher: DdsPublisher, prefix: str, hardware_id: str,
                 now_ns: Callable[[], int]) -> None:
        self._publisher = publisher
        self._prefix = prefix
        self._hardware_id = hardware_id
        self._now_ns = now_ns
        self._tasks: list[tuple[str, Callable[[], DiagnosticReport]]] = []

    def add(self, name: str, task: Callable[[], DiagnosticReport]) -> None:
        self._tasks.append((name, task))
        self._publish([DiagnosticStatusMsg(0, f"{self._prefix}: {name}", "Node starting up")])

    def update(self) -> None:
        statuses = []
        for name, task in self._tasks:
            report = task()
            statuses.append(DiagnosticStatusMsg(
                report.level, f"{self._prefix}: {name}", report.message, self._hardware_id,
                {key: str(value) for key, value in report.values.items()}))
        self._publish(statuses)

    def _publish(self, statuses: list[DiagnosticStatusMsg]) -> None:
        self._publisher.publish(DiagnosticArrayMsg(self._now_ns(), statuses))


class _SignalWaker:
    """
    Turns SIGINT/SIGTERM into a WaitSet wake-up.

    Python runs signal handlers only when the main thread is back in the interpreter, not
    while it blocks inside Cyclone's wait. The interpreter's C-level handler writes to the
    wakeup fd at once, though; a helper thread waits on it and triggers the guard condition.
    """

    def __init__(self, on_signal: Callable[[], None], guard: GuardCondition) -> None:
        self._guard = guard
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._closing = False
        self._old_wakeup_fd = signal.set_wakeup_fd(self._write_fd)
        self._old_handlers = {sig: signal.signal(sig, lambda *_: on_signal())
                              for sig in (signal.SIGINT, signal.SIGTERM)}
        self._thread = threading.Thread(target=self._relay, name="kb_ros-signals", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        while True:
            select.select([self._read_fd], [], [])
            try:
                os.read(self._read_fd, 64)
            except BlockingIOError:
                continue
            if self._closing:
                return
            self._guard.set(True)

    def restore(self) -> None:
        signal.set_wakeup_fd(self._old_wakeup_fd)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._closing = True
        os.write(self._write_fd, b"\0")
        self._thread.join()
        os.close(self._read_fd)
        os.close(self._write_fd)


class DdsBackend:
    """The kb_ros ``Backend`` on Cyclone DDS; see the module docstring."""

    def __init__(self, args: RosArgs, config: DdsConfig | None = None) -> None:
        self.args = args
        self.node_name = args.node_name
        self.namespace = args.namespace
        logger_name = (args.namespace.strip("/").replace("/", ".") + "." + args.node_name
                       ).lstrip(".")
        self._logger = RosLogger(logger_name, args.log_level or "info")
        self.config = config or resolve_config(args.dds_interface)
        self._participant = open_participant(self.config)
        self._waitset = WaitSet(self._participant)
        self._wake = GuardCondition(self._participant)
        self._waitset.attach(self._wake)
        self._topics: dict[str, Topic] = {}
        self._entities: list[Any] = []  # writers and readers, kept alive with the backend
        self._subscriptions: list[DdsSubscription] = []
        self._timers: list[DdsTimer] = []
        self._events: deque[Callable[[], None]] = deque()
        self._params: dict[str, Any] = {}
        self._updater: DiagnosticUpdater | None = None
        self._stop = threading.Event()
        self._closed = False
        self._logger.debug(f"DDS domain {self.config.domain_id}, {self.config.description}")

    # -- parameters -------------------------------------------------------------------------

    def declare(self, spec: ParamSpec) -> Any:
        """Return the parameter's value from ``-p``/params files, else its default; validated."""
        if spec.name in self._params:
            raise ValueError(f"parameter {spec.name!r} is already declared")
        value = spec.check(self.args.params.get(spec.name, spec.default))
        self._params[spec.name] = value
        return value

    def on_parameter_set(self, callback: Callable[[str, Any], None]) -> None:
        """Never called: standalone nodes have no parameter services to change values."""

    @property
    def parameters(self) -> dict[str, Any]:
        """The declared parameters and their values."""
        return dict(self._params)

    def _warn_unused_params(self) -> None:
        for name, value in self.args.params.items():
            if name == "use_sim_time":
                if value is True:
                    self._logger.warning("use_sim_time is ignored by the dds backend: it runs "
                                         "on the system clock (use --backend ros for replays)")
            elif name not in self._params:
                self._logger.warning(f"parameter {name!r} was given but {self.node_name} does "
                                     "not declare it: ignored")

    # -- topics -----------------------------------------------------------------------------

    def _topic(self, msg_type: str, name: str) -> tuple[Topic, WireCodec, str]:
        codec = CODECS.get(msg_type)
        if codec is None:
            raise ValueError(f"unsupported message type {msg_type!r}; known: {sorted(CODECS)}")
        full_name = self.args.resolve_topic(name)
        topic = self._topics.get(full_name)
        if topic is None:
            topic = Topic(self._participant, DDS_TOPIC_PREFIX + full_name, codec.idl_type)
            self._topics[full_name] = topic
        elif topic.data_type is not codec.idl_type:
            raise ValueError(f"topic {full_name} is already used with another type")
        return topic, codec, full_name

    def create_publisher(self, msg_type: str, topic: str, qos: QosSpec) -> DdsPublisher:
        dds_topic, codec, full_name = self._topic(msg_type, topic)
        writer = DataWriter(self._participant, dds_topic, dds_qos(qos, writer=True))
        self._entities.append(writer)
        return DdsPublisher(writer, codec, MESSAGE_TYPES[msg_type], full_name)

    def create_subscription(self, msg_type: str, topic: str, callback: Callable[[Any], None],
                            qos: QosSpec, *, on_deadline_missed: Callable[[], None] | None = None,
                            on_liveliness_changed: Callable[[int], None] | None = None,
                            on_incompatible_qos: Callable[[str], None] | None = None
                            ) -> DdsSubscription:
        """Subscribe; QoS events are queued from Cyclone's thread and run in ``spin()``."""
        dds_topic, codec, full_name = self._topic(msg_type, topic)
        listener = None
        if on_deadline_missed or on_liveliness_changed or on_incompatible_qos:
            listener = Listener()
            if on_deadline_missed:
                listener.set_on_requested_deadline_missed(
                    lambda _reader, _status: self._queue(on_deadline_missed))
            if on_liveliness_changed:
                listener.set_on_liveliness_changed(
                    lambda _reader, status: self._queue(
                        lambda alive=status.alive_count: on_liveliness_changed(alive)))
            if on_incompatible_qos:
                listener.set_on_requested_incompatible_qos(
                    lambda _reader, status: self._queue(
                        lambda policy=_policy_name(status.last_policy_id):
                        on_incompatible_qos(policy)))
        reader = DataReader(self._participant, dds_topic, dds_qos(qos, writer=False), listener)
        subscription = DdsSubscription(reader, codec, callback, full_name, self._logger,
                                       depth=qos.depth)
        self._waitset.attach(subscription.condition)
        self._entities.append(reader)
        self._subscriptions.append(subscription)
        return subscription

    def _queue(self, event: Callable[[], None]) -> None:
        """Hand ``event`` from any thread (Cyclone's listeners, ``call_soon``) to ``spin()``."""
        self._events.append(event)
        self._poke()

    def _poke(self) -> None:
        """Wake the WaitSet; a no-op once closed (a race with close() is harmless)."""
        if not self._closed:
            try:
                self._wake.set(True)
            except DDSException:
                pass

    # -- diagnostics, timers, clock, logging ------------------------------------------------

    def add_diagnostic_task(self, name: str, task: Callable[[], DiagnosticReport]) -> None:
        """Publish ``task()`` on /diagnostics, declaring what diagnostic_updater declares."""
        if self._updater is None:
            period_s, use_fqn = (self.declare(spec) for spec in UPDATER_PARAMS)
            self._updater = DiagnosticUpdater(
                self.create_publisher(DIAGNOSTIC_ARRAY, "/diagnostics", profiles.DIAGNOSTICS),
                self.args.fully_qualified_name if use_fqn else self.node_name,
                self.args.fully_qualified_name, self.now_ns)
            self.create_timer(period_s, self._updater.update)
        self._updater.add(name, task)

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> DdsTimer:
        timer = DdsTimer(period_s, callback)
        self._timers.append(timer)
        return timer

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._queue(callback)

    def now_ns(self) -> int:
        return time.time_ns()

    def get_logger(self) -> RosLogger:
        return self._logger

    # -- execution --------------------------------------------------------------------------

    def spin(self, before_close: Callable[[], None] | None = None) -> None:
        """
        Run callbacks until ``shutdown()``, SIGINT or SIGTERM, then close the participant.

        On the way out, what the readers already hold is delivered (``_drain``) and
        ``before_close`` runs, both still able to publish: input received before the signal
        is not lost. Signal handlers are installed only when called from the main thread (as
        in rclpy); a second signal during the drain changes nothing.
        """
        if self._closed:
            raise RuntimeError("this backend is closed")
        waker = None
        if threading.current_thread() is threading.main_thread():
            waker = _SignalWaker(self.shutdown, self._wake)
        self._warn_unused_params()
        try:
            while not self._stop.is_set():
                self._waitset.wait(self._wait_budget_ns())
                self._wake.take()
                self._spin_once()
            self._drain()
            if before_close is not None:
                before_close()
        finally:
            if waker:
                waker.restore()
            self.close()

    def _wait_budget_ns(self) -> int:
        now = time.monotonic_ns()
        due = [t.next_due_ns for t in self._timers if not t.cancelled]
        return max(0, min([MAX_IDLE_WAIT_NS] + [d - now for d in due]))

    def _spin_once(self) -> None:
        for _ in range(len(self._events)):  # events queued meanwhile wait for the next round
            if self._stop.is_set():
                return
            self._events.popleft()()
        for subscription in self._subscriptions:
            if self._stop.is_set():
                return
            subscription.dispatch()
        now = time.monotonic_ns()
        for timer in self._timers:
            if self._stop.is_set():
                return
            timer.run_if_due(now)

    def _drain(self) -> None:
        """
        Deliver what arrived before the stop: queued events, each reader's samples, events.

        Bounded by what a reader can hold at once, so a publisher that goes on sending cannot
        keep the node from exiting.
        """
        self._run_queued_events()
        for subscription in self._subscriptions:
            subscription.dispatch(subscription.depth)
        self._run_queued_events()

    def _run_queued_events(self) -> None:
        for _ in range(len(self._events)):
            self._events.popleft()()

    def shutdown(self) -> None:
        """Ask ``spin()`` to return; safe from any thread and from signal handlers."""
        self._stop.set()
        self._poke()

    def close(self) -> None:
        """
        Delete the participant, and so every reader and writer.

        Peers see us leave now rather than after a lease expires. ``spin()`` calls it on exit.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        # cyclonedds deletes an entity (and its children) in __del__; do it now, explicitly.
        self._participant.__del__()
