"""
``kb-ros bag record``: live topics of the standalone DDS graph into a rosbag2 bag.

Types and QoS follow the topic names (``kb_ros.bags.topics``). Each message is stored at its
arrival time (never going backwards, so even an unindexed file reads in order); its header stamp
is kept as published. The bag is flushed every ``flush_s``: a recorder that is killed loses at
most that much, and ``kb-ros bag repair`` recovers the rest. SIGINT/SIGTERM close it cleanly.
"""

from __future__ import annotations

import functools
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kb_ros.bags.topics import offered_qos, subscription_qos, topic_type
from kb_ros.bags.writer import BagWriter
from kb_ros.transport.backend import subscribe_info
from kb_ros.transport.dds_backend import DdsBackend
from kb_ros.transport.dds_config import DdsConfig, resolve_config
from kb_ros.transport.messages import AUDIO_INFO
from kb_ros.transport.ros_args import RosArgs

NODE_NAME = "kb_bag_recorder"


@dataclass
class RecordOptions:
    out: Path
    topics: list[str]
    storage: str = "mcap"
    duration_s: float | None = None  # None: until SIGINT/SIGTERM
    flush_s: float = 0.5
    dds_interface: str | None = None  # None: loopback only (or CYCLONEDDS_URI)

    def __post_init__(self) -> None:
        for name in ("duration_s", "flush_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")


class BagRecorder:
    """Subscribes to every topic and writes each message as it arrives, on the spin thread."""

    def __init__(self, opts: RecordOptions, config: DdsConfig | None = None) -> None:
        self.opts = opts
        self.topics = ["/" + t.lstrip("/") for t in opts.topics]
        self.counts: Counter = Counter()
        self._last_ns = 0
        self.backend = DdsBackend(RosArgs(NODE_NAME, "/"),
                                  config or resolve_config(opts.dds_interface))
        try:
            self.writer = BagWriter(opts.out, opts.storage)
        except BaseException:
            self.backend.close()
            raise
        try:
            for topic in self.topics:
                msg_type = topic_type(topic)
                self.writer.add_topic(topic, msg_type, offered_qos(topic))
                keep = functools.partial(self._keep, topic)
                if msg_type == AUDIO_INFO:  # latched or not, as the publisher chose
                    subscribe_info(self.backend, topic, keep)
                else:
                    self.backend.create_subscription(msg_type, topic, keep,
                                                     subscription_qos(topic))
            self.backend.create_timer(opts.flush_s, self.writer.flush)
            if opts.duration_s is not None:
                self.backend.create_timer(opts.duration_s, self.backend.shutdown)
        except BaseException:  # nothing recorded yet: leave no stub in the way of a rerun
            self.writer.discard()
            self.backend.close()
            raise

    def _keep(self, topic: str, msg: Any) -> None:
        self._last_ns = max(time.time_ns(), self._last_ns)
        self.writer.write(topic, msg, self._last_ns)
        self.counts[topic] += 1

    def run(self) -> dict:
        """Record until the duration is over or a signal arrives; returns the counts."""
        try:
            self.backend.spin()
        finally:
            self.writer.close()
        return {"bag": str(self.opts.out), "storage": self.opts.storage,
                "domain_id": self.backend.config.domain_id,
                "counts": {topic: self.counts[topic] for topic in self.topics}}
