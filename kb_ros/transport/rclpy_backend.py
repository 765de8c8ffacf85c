"""
The kb_ros ``Backend`` over a real rclpy node, for ROS 2 Humble and Jazzy.

Thin by design: rcl parses ``--ros-args`` (parameters, remaps, namespace, ``use_sim_time``),
diagnostic_updater publishes ``/diagnostics`` and ``qos_overrides.*`` parameters adjust QoS, so
ROS tooling behaves as for any ROS node. rclpy and the message packages are imported when a
backend is constructed, never when kb_ros is imported. Checked against the real Humble and
Jazzy APIs with ``shared/ros_api/check_ros_api.py``.

Execution: one ``SingleThreadedExecutor`` on the default context, and the chunk callback runs
inference inline. That is deliberate: a chunk is processed the moment it arrives and never
waits for a hint, and the small model needs a small fraction of the 8 ms chunk, so hint,
QoS-event and diagnostics callbacks wait at most that long. A worker thread would add a queue
hop and locking around HintMatcher state for no gain; the diagnostics report compute p99
against the chunk budget, the signal that this choice stops holding.

Shutdown: rclpy's own SIGINT/SIGTERM handlers shut the context down at once, and with it every
subscription still holding received messages. The backend installs its own instead: a signal
only stops the spin loop, then what already arrived is handled and ``before_close`` may still
publish, so no received chunk goes without its output.
"""

from __future__ import annotations

import array
import signal
import sys
import threading
from collections import deque
from typing import Any, Callable

from kb_ros.audio.clock import join_stamp
from kb_ros.transport.backend import DiagnosticReport, ParamSpec
from kb_ros.transport.messages import AUDIO_INFO, AUDIO_STAMPED, AudioChunkMsg, AudioInfoMsg
from kb_ros.transport.qos import Durability, QosSpec, Reliability
from kb_ros.transport.ros_args import parse_ros_args

SPIN_POLL_S = 0.1  # a signal is noticed within this, even when no message arrives
DRAIN_SPARE_CALLBACKS = 16  # timers, guard conditions and QoS events beside the messages


class _RosCodecs:
    """
    Neutral messages <-> rclpy message classes.

    ``uint8[]`` fields get an ``array.array('B')``: rclpy's setter stores it as is, where
    ``bytes`` would be checked element by element in Python.
    """

    def __init__(self) -> None:
        from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        self.types = {AUDIO_STAMPED: AudioDataStamped, AUDIO_INFO: AudioInfo}
        self._audio_data, self._header, self._time = AudioData, Header, Time

    def ros_type(self, msg_type: str) -> Any:
        if msg_type not in self.types:
            raise ValueError(f"unsupported message type {msg_type!r}; known: {sorted(self.types)}")
        return self.types[msg_type]

    def to_ros(self, msg_type: str, msg: Any) -> Any:
        if msg_type == AUDIO_STAMPED:
            sec, nanosec = divmod(msg.stamp_ns, 1_000_000_000)
            return self.types[msg_type](
                header=self._header(stamp=self._time(sec=sec, nanosec=nanosec),
                                    frame_id=msg.frame_id),
                audio=self._audio_data(data=array.array("B", msg.data)))
        return self.types[msg_type](channels=msg.channels, sample_rate=msg.sample_rate,
                                    sample_format=msg.sample_format, bitrate=msg.bitrate,
                                    coding_format=msg.coding_format)

    @staticmethod
    def from_ros(msg_type: str, ros: Any) -> Any:
        if msg_type == AUDIO_STAMPED:
            stamp = ros.header.stamp
            return AudioChunkMsg(join_stamp(stamp.sec, stamp.nanosec),
                                 ros.audio.data.tobytes(), ros.header.frame_id)
        return AudioInfoMsg(ros.channels, ros.sample_rate, ros.sample_format, ros.bitrate,
                            ros.coding_format)


class RclpyPublisher:
    def __init__(self, publisher: Any, codecs: _RosCodecs, msg_type: str) -> None:
        self._publisher = publisher
        self._codecs = codecs
        self._msg_type = msg_type

    def publish(self, msg: Any) -> None:
        self._publisher.publish(self._codecs.to_ros(self._msg_type, msg))

    def matched_count(self) -> int:
        return self._publisher.get_subscription_count()


def _qos_profile(spec: QosSpec) -> Any:
    from rclpy.duration import Duration
    from rclpy.qos import (DurabilityPolicy, HistoryPolicy, LivelinessPolicy, QoSProfile,
                           ReliabilityPolicy)

    profile = QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=spec.depth,
        reliability=ReliabilityPolicy.RELIABLE if spec.reliability is Reliability.RELIABLE
        else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL
        if spec.durability is Durability.TRANSIENT_LOCAL else DurabilityPolicy.VOLATILE)
    if spec.deadline_ms is not None:
        profile.deadline = Duration(nanoseconds=int(spec.deadline_ms * 1e6))
    if spec.liveliness_lease_ms is not None:
        profile.liveliness = LivelinessPolicy.AUTOMATIC
        profile.liveliness_lease_duration = Duration(
            nanoseconds=int(spec.liveliness_lease_ms * 1e6))
    if spec.lifespan_ms is not None:
        profile.lifespan = Duration(nanoseconds=int(spec.lifespan_ms * 1e6))
    return profile


def _qos_overriding_options(spec: QosSpec) -> Any:
    """
    Expose ``qos_overrides.<topic>.<publisher|subscription>.<policy>`` parameters.

    History, depth and reliability as ``with_default_policies()`` does, plus the deadline and
    liveliness lease where the profile sets them, so slow links can relax the hint watchdogs.
    """
    from rclpy.qos import QoSPolicyKind
    from rclpy.qos_overriding_options import QoSOverridingOptions

    kinds = [QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH, QoSPolicyKind.RELIABILITY]
    if spec.deadline_ms is not None:
        kinds.append(QoSPolicyKind.DEADLINE)
    if spec.liveliness_lease_ms is not None:
        kinds.append(QoSPolicyKind.LIVELINESS_LEASE_DURATION)
    return QoSOverridingOptions(kinds, entity_id=spec.override_id)


class RclpyBackend:
    """One rclpy node on the default context, spun by a SingleThreadedExecutor."""

    def __init__(self, argv: list[str], node_name: str, namespace: str = "/kb") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.signals import SignalHandlerOptions

        self.args = parse_ros_args(argv, node_name, namespace)  # validates, keeps other_args
        # argv[0] is the program; spin() handles SIGINT and SIGTERM (module docstring).
        rclpy.init(args=[sys.argv[0], *argv], signal_handler_options=SignalHandlerOptions.NO)
        self._node = Node(node_name, namespace=namespace)
        self.node_name = self._node.get_name()
        self.namespace = self._node.get_namespace()
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self._node)
        self._codecs = _RosCodecs()
        self._specs: dict[str, ParamSpec] = {}
        self._declared: set[str] = set()
        self._on_set: list[Callable[[str, Any], None]] = []
        self._updater: Any = None
        self._soon: deque[Callable[[], None]] = deque()
        self._soon_guard = self._node.create_guard_condition(self._run_soon)
        self._stop = threading.Event()
        self._drain_budget = DRAIN_SPARE_CALLBACKS  # grows by each subscription's depth
        self._node.add_on_set_parameters_callback(self._on_set_parameters)

    # -- parameters -------------------------------------------------------------------------

    def _on_set_parameters(self, parameters: list[Any]) -> Any:
        """
        Validate a set (overrides at declaration, ``ros2 param set`` later), then apply it.

        rclpy has already checked read-only and ranges; this adds ``choices`` and exact types,
        and hands accepted run-time changes to the node, all or none.
        """
        from rcl_interfaces.msg import SetParametersResult

        changes = []
        for parameter in parameters:
            spec = self._specs.get(parameter.name)
            if spec is None:
                continue
            try:
                if type(parameter.value) is not type(spec.default):
                    raise ValueError(f"parameter {spec.name!r} must be "
                                     f"{type(spec.default).__name__}, got {parameter.value!r}")
                changes.append((spec.name, spec.check(parameter.value)))
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        for name, value in changes:
            if name in self._declared:
                for callback in self._on_set:
                    callback(name, value)
        return SetParametersResult(successful=True)

    def declare(self, spec: ParamSpec) -> Any:
        """Declare with a ``ParameterDescriptor``; a bad override raises ValueError."""
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
        from rclpy.exceptions import ParameterException

        descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        if spec.int_range:
            descriptor.integer_range = [IntegerRange(from_value=spec.int_range[0],
                                                     to_value=spec.int_range[1], step=0)]
        if spec.float_range:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=spec.float_range[0], to_value=spec.float_range[1], step=0.0)]
        if spec.choices:
            descriptor.additional_constraints = f"one of {list(spec.choices)}"
        self._specs[spec.name] = spec  # before declaring: the override is validated too
        try:
            parameter = self._node.declare_parameter(spec.name, spec.default, descriptor)
        except ParameterException as exc:
            raise ValueError(str(exc)) from None
        self._declared.add(spec.name)
        return parameter.value

    def on_parameter_set(self, callback: Callable[[str, Any], None]) -> None:
        self._on_set.append(callback)

    # -- topics -----------------------------------------------------------------------------

    def create_publisher(self, msg_type: str, topic: str, qos: QosSpec) -> RclpyPublisher:
        publisher = self._node.create_publisher(
            self._codecs.ros_type(msg_type), topic, _qos_profile(qos),
            qos_overriding_options=_qos_overriding_options(qos))
        return RclpyPublisher(publisher, self._codecs, msg_type)

    def create_subscription(self, msg_type: str, topic: str, callback: Callable[[Any], None],
                            qos: QosSpec, *, on_deadline_missed: Callable[[], None] | None = None,
                            on_liveliness_changed: Callable[[int], None] | None = None,
                            on_incompatible_qos: Callable[[str], None] | None = None) -> Any:
        """Subscribe; QoS events run on the executor, like every other callback."""
        try:  # Iron and later; rclpy.qos_event still re-exports it on Jazzy, deprecated
            from rclpy.event_handler import SubscriptionEventCallbacks  # noqa: ros-api
        except ImportError:  # Humble
            from rclpy.qos_event import SubscriptionEventCallbacks
        from rclpy.qos import QoSPolicyKind

        events = SubscriptionEventCallbacks(
            deadline=(lambda _info: on_deadline_missed()) if on_deadline_missed else None,
            liveliness=(lambda info: on_liveliness_changed(info.alive_count))
            if on_liveliness_changed else None,
            incompatible_qos=(lambda info: on_incompatible_qos(
                QoSPolicyKind(info.last_policy_kind).name.lower()))
            if on_incompatible_qos else None)
        self._drain_budget += qos.depth
        return self._node.create_subscription(
            self._codecs.ros_type(msg_type), topic,
            lambda ros: callback(self._codecs.from_ros(msg_type, ros)), _qos_profile(qos),
            event_callbacks=events, qos_overriding_options=_qos_overriding_options(qos))

    # -- diagnostics, timers, clock, logging ------------------------------------------------

    def add_diagnostic_task(self, name: str, task: Callable[[], DiagnosticReport]) -> None:
        """Run ``task`` from diagnostic_updater's ``Updater`` (one per node)."""
        from diagnostic_updater import Updater

        def run(stat: Any) -> Any:
            report = task()
            stat.summary(bytes([report.level]), report.message)
            for key, value in report.values.items():
                stat.add(key, str(value))
            return stat

        if self._updater is None:
            self._updater = Updater(self._node)
            self._updater.setHardwareID(self._node.get_fully_qualified_name())
        self._updater.add(name, run)

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> Any:
        return self._node.create_timer(period_s, callback)

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Queue ``callback`` and trigger the guard condition that runs it on the executor."""
        self._soon.append(callback)
        self._soon_guard.trigger()

    def _run_soon(self) -> None:
        for _ in range(len(self._soon)):  # callbacks queued meanwhile run on the next trigger
            self._soon.popleft()()

    def now_ns(self) -> int:
        """ROS time: simulated (``/clock``) when ``use_sim_time`` is true, else system time."""
        return self._node.get_clock().now().nanoseconds

    def get_logger(self) -> Any:
        return self._node.get_logger()

    # -- execution --------------------------------------------------------------------------

    def spin(self, before_close: Callable[[], None] | None = None) -> None:
        """
        Spin until SIGINT, SIGTERM or ``shutdown()``; drain, run ``before_close``, clean up.

        The signal handlers are installed only when called from the main thread.
        """
        import rclpy
        from rclpy.executors import ExternalShutdownException

        previous_handlers = {}
        if threading.current_thread() is threading.main_thread():
            previous_handlers = {sig: signal.signal(sig, lambda *_: self._stop.set())
                                 for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self._stop.is_set() and self._node.context.ok():
                self._executor.spin_once(timeout_sec=SPIN_POLL_S)
            self._drain()
            if before_close is not None:
                before_close()
        except ExternalShutdownException:
            pass  # the context was shut down from outside: nothing left to take
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self._executor.shutdown()
            self._node.destroy_node()
            rclpy.try_shutdown()

    def _drain(self) -> None:
        """
        Run the callbacks that are ready now: messages received before the stop.

        Bounded by what the subscriptions can hold at once (``_drain_budget``), so a
        publisher that goes on sending cannot keep the node from exiting.
        """
        from rclpy.executors import ShutdownException, TimeoutException

        for _ in range(self._drain_budget):
            try:
                handler, _, _ = self._executor.wait_for_ready_callbacks(timeout_sec=0.0)
            except (ShutdownException, TimeoutException):
                return
            handler()
            if handler.exception() is not None:
                raise handler.exception()

    def shutdown(self) -> None:
        """Stop ``spin()`` from any thread; it drains and cleans up before returning."""
        self._stop.set()
        self._executor.wake()
