"""
QoS profiles shared by both backends, so rclpy and standalone DDS nodes match alike.

Subscriptions are BEST_EFFORT so they match any publisher. Publishers are RELIABLE with a short
KEEP_LAST history, so they match any subscriber too: a ROS 2 default subscription (RELIABLE)
gets the stream instead of silently nothing, best-effort readers (ours) see no retransmission,
and a keep-last writer never blocks on a slow reliable reader. The ``*_info`` topics are latched
(RELIABLE + TRANSIENT_LOCAL) so late joiners learn the format.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Reliability(Enum):
    BEST_EFFORT = "best_effort"
    RELIABLE = "reliable"


class Durability(Enum):
    VOLATILE = "volatile"
    TRANSIENT_LOCAL = "transient_local"


@dataclass(frozen=True)
class QosSpec:
    """The QoS policies kb_ros uses; ``None`` durations mean "not set" (infinite)."""

    reliability: Reliability = Reliability.BEST_EFFORT
    durability: Durability = Durability.VOLATILE
    depth: int = 10
    deadline_ms: float | None = None
    liveliness_lease_ms: float | None = None
    lifespan_ms: float | None = None
    # Under rclpy: tells apart the ``qos_overrides`` parameters of a second endpoint of one kind
    # on one topic (``...subscription_<override_id>.reliability``); None for the first.
    override_id: str | None = None


# Publishers keep 32 chunks (256 ms); subscribers queue up to 1 s, so a consumer that stalls
# briefly (a GC pause, a busy core) catches up instead of losing chunks.
AUDIO_PUB = QosSpec(Reliability.RELIABLE, Durability.VOLATILE, depth=32)
AUDIO_SUB = QosSpec(Reliability.BEST_EFFORT, Durability.VOLATILE, depth=125)
INFO_PUB = QosSpec(Reliability.RELIABLE, Durability.TRANSIENT_LOCAL, depth=1)
INFO_SUB = QosSpec(Reliability.RELIABLE, Durability.TRANSIENT_LOCAL, depth=4)
# DDS matches INFO_SUB with latched publishers only: a ROS 2 node publishing its ``*_info`` with
# the default QoS (VOLATILE) goes unheard by it. This subscription hears any publisher, from
# the message it sends after joining (``backend.subscribe_info`` takes both). Both queue the
# same depth, so a burst from a latched publisher reaches both whole and pairs up.
INFO_LIVE_SUB = QosSpec(Reliability.BEST_EFFORT, Durability.VOLATILE, depth=INFO_SUB.depth,
                        override_id="live")
# Hints: a deadline reports "hints stalled", a liveliness lease reports "provider gone".
# Neither changes output timing; they only switch the node's reported state.
# A reader requesting a deadline/lease matches only writers offering one at least as strict,
# so the hint publishers offer tighter values than the hint subscription requests.
HINT_PUB = QosSpec(Reliability.RELIABLE, Durability.VOLATILE, depth=32,
                   deadline_ms=100.0, liveliness_lease_ms=500.0)
HINT_SUB = QosSpec(Reliability.BEST_EFFORT, Durability.VOLATILE, depth=32,
                   deadline_ms=200.0, liveliness_lease_ms=1000.0)
DIAGNOSTICS = QosSpec(Reliability.RELIABLE, Durability.VOLATILE, depth=10)
