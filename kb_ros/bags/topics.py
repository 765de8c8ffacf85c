"""
Which type and QoS a topic has in kb_ros bags, from its name (DESIGN.md's topic table).

A standalone DDS subscriber must know a topic's type before it can subscribe, and a bag stores
the QoS its publisher offered (``ros2 bag play`` publishes with it: latched ``*_info`` topics
must stay transient-local), so both follow the naming convention of the kb_ros topics.
"""

from __future__ import annotations

import posixpath

from kb_ros.transport import qos
from kb_ros.transport.messages import AUDIO_INFO, AUDIO_STAMPED, DIAGNOSTIC_ARRAY
from kb_ros.transport.qos import QosSpec

DIAGNOSTICS_TOPIC = "/diagnostics"
DEFAULT_NAMESPACE = "/kb"
LIVE_TOPICS = ("audio", "audio_info", "hints", "hint_info", "enhanced", "enhanced_info")


def topic_type(topic: str) -> str:
    """``*_info``: AudioInfo; ``/diagnostics``: DiagnosticArray; anything else: audio."""
    if topic == DIAGNOSTICS_TOPIC:
        return DIAGNOSTIC_ARRAY
    if topic.endswith("_info"):
        return AUDIO_INFO
    return AUDIO_STAMPED


def offered_qos(topic: str) -> QosSpec:
    """Return the QoS the kb_ros node publishing ``topic`` offers."""
    kind = topic_type(topic)
    if kind == DIAGNOSTIC_ARRAY:
        return qos.DIAGNOSTICS
    if kind == AUDIO_INFO:
        return qos.INFO_PUB
    return qos.HINT_PUB if topic.endswith("/hints") else qos.AUDIO_PUB


def subscription_qos(topic: str) -> QosSpec:
    """
    Return a QoS matching the kb_ros publisher of ``topic`` (latched topics stay latched).

    Alone it does not hear a foreign ``*_info`` publisher that is not latched: recording from
    any publisher takes ``transport.backend.subscribe_info``.
    """
    kind = topic_type(topic)
    if kind == DIAGNOSTIC_ARRAY:
        return qos.DIAGNOSTICS
    return qos.INFO_SUB if kind == AUDIO_INFO else qos.AUDIO_SUB


def info_topic(audio_topic: str) -> str:
    """
    Return the topic where an audio topic's format is announced.

    ``/kb/audio`` and audio_capture's ``/audio/audio_stamped`` on ``audio_info`` beside them,
    ``hints`` on ``hint_info``, any other ``X`` (``enhanced``, ``reference``) on ``X_info``.
    """
    parent, name = posixpath.split(audio_topic)
    if name in ("audio", "audio_stamped"):
        return posixpath.join(parent, "audio_info")
    if name == "hints":
        return posixpath.join(parent, "hint_info")
    return f"{audio_topic}_info"


def live_topics(namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    """Every topic of a running kb_ros graph in ``namespace``, plus ``/diagnostics``."""
    return [posixpath.join(namespace, name) for name in LIVE_TOPICS] + [DIAGNOSTICS_TOPIC]
