"""
The small surface nodes use: publishers, subscriptions, parameters, diagnostics, timers, a clock.

Both the standalone Cyclone DDS backend and the rclpy backend implement it; nodes in
``kb_ros.nodes`` are written against this protocol only, so their behaviour is identical.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from kb_ros.transport import qos
from kb_ros.transport.messages import AUDIO_INFO
from kb_ros.transport.qos import QosSpec


@dataclass(frozen=True)
class ParamSpec:
    """A node parameter as rclpy's ``ParameterDescriptor`` describes it."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    choices: tuple[str, ...] = field(default_factory=tuple)

    def check(self, value: Any) -> Any:
        """Coerce ``value`` to the default's type and enforce ranges; raise ValueError if bad."""
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"parameter {self.name!r} must be {kind.__name__}, got {value!r}")
        if self.int_range and not self.int_range[0] <= value <= self.int_range[1]:
            raise ValueError(f"parameter {self.name!r}={value} outside {list(self.int_range)}")
        if self.float_range and not self.float_range[0] <= value <= self.float_range[1]:
            raise ValueError(f"parameter {self.name!r}={value} outside {list(self.float_range)}")
        if self.choices and value not in self.choices:
            raise ValueError(f"parameter {self.name!r}={value!r} not one of {list(self.choices)}")
        return value


@dataclass(frozen=True)
class DiagnosticReport:
    """
    One run of a diagnostics task: what ``DiagnosticStatusWrapper.summary``/``add`` receive.

    ``level`` is a ``diagnostic_msgs/DiagnosticStatus`` level: OK=0, WARN=1, ERROR=2, STALE=3.
    """

    level: int
    message: str
    values: dict[str, Any] = field(default_factory=dict)


# What diagnostic_updater's Updater declares on its node (Humble and Jazzy). The standalone
# backend declares the same, so one params file configures diagnostics on both backends.
UPDATER_PARAMS = [
    ParamSpec("diagnostic_updater.period", 1.0, "Period of /diagnostics (diagnostic_updater)",
              read_only=True, float_range=(0.01, 60.0)),
    ParamSpec("diagnostic_updater.use_fqn", False, "Name statuses '<namespace>/<node>: <task>' "
              "instead of '<node>: <task>' (diagnostic_updater)", read_only=True),
]


class Logger(Protocol):
    def info(self, msg: str) -> Any: ...
    def warning(self, msg: str) -> Any: ...
    def error(self, msg: str) -> Any: ...


class Publisher(Protocol):
    def publish(self, msg: Any) -> None: ...

    def matched_count(self) -> int:
        """Count the subscriptions currently matched to this publisher."""


class Backend(Protocol):
    """
    What a node may ask of its middleware.

    Topic names are relative to the namespace unless they start with '/'; callbacks run one at
    a time on the spinning thread.
    """

    node_name: str
    namespace: str

    def declare(self, spec: ParamSpec) -> Any:
        """Declare a parameter and return its value (from args, params file or default)."""

    def on_parameter_set(self, callback: Callable[[str, Any], None]) -> None:
        """Call ``callback(name, value)`` after a writable parameter changed at run time."""

    def create_publisher(self, msg_type: str, topic: str, qos: QosSpec) -> Publisher: ...

    def create_subscription(self, msg_type: str, topic: str, callback: Callable[[Any], None],
                            qos: QosSpec, *, on_deadline_missed: Callable[[], None] | None = None,
                            on_liveliness_changed: Callable[[int], None] | None = None,
                            on_incompatible_qos: Callable[[str], None] | None = None) -> Any:
        """
        Subscribe, optionally to QoS events too.

        ``on_liveliness_changed`` gets the number of alive publishers and ``on_incompatible_qos``
        the name of the offending policy (``"reliability"``, ``"deadline"``...).
        """

    def add_diagnostic_task(self, name: str, task: Callable[[], DiagnosticReport]) -> None:
        """
        Publish ``task()`` on ``/diagnostics`` every ``diagnostic_updater.period`` seconds.

        As diagnostic_updater does: the status is named ``"<node>: <name>"`` and its
        hardware_id is the node's fully qualified name.
        """

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> Any: ...

    def call_soon(self, callback: Callable[[], None]) -> None:
        """
        Run ``callback`` once on the spinning thread, soon, after the caller returns.

        Lets a node finish taking in what has arrived before acting on all of it at once (the
        hint server batches streams this way). Safe to call from any thread.
        """

    def now_ns(self) -> int:
        """Read the node clock (ROS time under use_sim_time, else system time), in ns."""

    def get_logger(self) -> Logger: ...

    def spin(self, before_close: Callable[[], None] | None = None) -> None:
        """
        Run callbacks until shutdown is requested (SIGINT/SIGTERM or ``shutdown()``).

        Then deliver the messages already received, run ``before_close`` (the node's last
        chance to publish) and close: no input received before the signal is lost.
        """

    def shutdown(self) -> None: ...


class _OnceFromBoth:
    """
    Forward messages from two subscriptions of one topic, each message once.

    A latched publisher's messages reach both subscriptions (the latched one also gets what
    was sent before it joined). A message that one subscription delivered waits here for its
    twin from the other, which is dropped; messages the other passed over to get there (the
    history it never saw) wait no more. A message with no twin pending is new, so repeats
    from a publisher that only one subscription matches all pass.
    """

    def __init__(self, callback: Callable[[Any], None], pending: int = 16) -> None:
        self._callback = callback
        self._pending: tuple[deque[Any], deque[Any]] = (deque(maxlen=pending),
                                                        deque(maxlen=pending))

    def source(self, index: int) -> Callable[[Any], None]:
        """Return the callback of subscription ``index`` (0 or 1)."""
        return lambda msg: self._deliver(msg, index)

    def _deliver(self, msg: Any, index: int) -> None:
        others = self._pending[1 - index]
        if msg in others:
            while others.popleft() != msg:
                pass
            return
        self._pending[index].append(msg)
        self._callback(msg)


def subscribe_info(backend: Backend, topic: str, callback: Callable[[Any], None]
                   ) -> tuple[Any, Any]:
    """
    Subscribe an ``*_info`` topic so that latched and volatile publishers are both heard.

    The latched subscription gets a format announced before this node joined; the volatile
    one hears publishers the latched one cannot match (``qos.INFO_LIVE_SUB``). Returns both.
    """
    both = _OnceFromBoth(callback)
    return (backend.create_subscription(AUDIO_INFO, topic, both.source(0), qos.INFO_SUB),
            backend.create_subscription(AUDIO_INFO, topic, both.source(1), qos.INFO_LIVE_SUB))
