"""
Multi-process tests of the standalone DDS backend over real Cyclone DDS on loopback.

Each test runs nodes as separate processes (``python -c`` scripts below) that report what they
see as JSON lines on stdout. Every test gets its own ROS_DOMAIN_ID derived from the pid, and
``CYCLONEDDS_URI`` is removed, so the backend's loopback-only config is what is exercised.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kb_ros.transport.dds_config import (LOOPBACK, build_config_xml, domain_id_from_env,
                                         resolve_config)

REPO = Path(__file__).resolve().parents[1]
STAMP0 = 1_700_000_000_123_456_789

_COMMON = r"""
import dataclasses, json, sys, time
from kb_ros.transport import qos as qos_profiles
from kb_ros.transport.dds_backend import DdsBackend
from kb_ros.transport.messages import *
from kb_ros.transport.qos import Durability, QosSpec, Reliability
from kb_ros.transport.ros_args import parse_ros_args

cfg = json.loads(sys.argv[1])

def emit(event, **fields):
    print(json.dumps({"event": event, "t": time.monotonic(), **fields},
                     default=lambda o: o.hex()), flush=True)

def make_qos(spec):
    if isinstance(spec, str):
        return getattr(qos_profiles, spec)
    return QosSpec(Reliability(spec.pop("reliability")), Durability(spec.pop("durability")),
                   **spec)

backend = DdsBackend(parse_ros_args(cfg.get("argv", []), cfg["node"]))
"""

# A node that subscribes to cfg["subs"] and reports messages and QoS events until
# cfg["duration"] s have passed or cfg["stop_after"] messages have arrived.
SUB_SCRIPT = _COMMON + r"""
received = 0
subs = []
def subscribe(spec):
    def on_msg(msg):
        global received
        received += 1
        emit("msg", tag=spec["tag"], msg=dataclasses.asdict(msg))
        if received == cfg.get("stop_after"):
            backend.shutdown()
    if spec.get("info"):  # the pair of *_info subscriptions the nodes make
        from kb_ros.transport.backend import subscribe_info
        subs.extend((spec["tag"], sub) for sub in subscribe_info(backend, spec["topic"], on_msg))
        return
    subs.append((spec["tag"], backend.create_subscription(
        spec["type"], spec["topic"], on_msg, make_qos(spec["qos"]),
        on_deadline_missed=lambda: emit("deadline", tag=spec["tag"]),
        on_liveliness_changed=lambda alive: emit("alive", tag=spec["tag"], alive=alive))))
for spec in cfg["subs"]:
    subscribe(spec)
reported = set()
def poll_matches():
    for tag, sub in subs:
        if tag not in reported and sub.publisher_count() > 0:
            reported.add(tag)
            emit("matched", tag=tag)
backend.create_timer(0.01, poll_matches)
backend.create_timer(cfg["duration"], backend.shutdown)
emit("ready", topics=[sub.topic_name for _, sub in subs])
backend.spin()
emit("done", received=received)
"""

# A node that publishes cfg["msgs"]: optionally after a match and a "go" line on stdin, then
# lingers until stdin closes (so transient-local history and liveliness stay up).
PUB_SCRIPT = _COMMON + r"""
def build(kind, fields):
    if kind == AUDIO_STAMPED:
        return AudioChunkMsg(fields["stamp_ns"], bytes.fromhex(fields["data"]),
                             fields["frame_id"])
    return MESSAGE_TYPES[kind](**fields)
pub = backend.create_publisher(cfg["type"], cfg["topic"], make_qos(cfg["qos"]))
emit("ready", topic=pub.topic_name)
deadline = time.monotonic() + cfg.get("match_timeout", 20.0)
while pub.matched_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.005)
emit("matched", count=pub.matched_count())
if cfg.get("wait_go"):
    sys.stdin.readline()
for fields in cfg["msgs"]:
    pub.publish(build(cfg["type"], fields))
    time.sleep(cfg.get("period", 0.0))
emit("published", matched=pub.matched_count())
if cfg.get("silent_s"):
    time.sleep(cfg["silent_s"])
    emit("exiting")
else:
    sys.stdin.read()
"""

# An independent ROS 2 peer: its own IdlStructs and the reference loopback XML, no kb_ros code.
RAW_WRITER_SCRIPT = r"""
import os, sys, time
sys.path.insert(0, "test")
from cyclonedds.domain import Domain, DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Policy, Qos
from cyclonedds.topic import Topic
from ros_peer import LOOPBACK_XML as XML, AudioData_, AudioDataStamped_, Header_, Time_

domain_id = int(os.environ["ROS_DOMAIN_ID"])
domain = Domain(domain_id, XML)
participant = DomainParticipant(domain_id)
topic = Topic(participant, "rt/kb/audio", AudioDataStamped_)
writer = DataWriter(participant, topic, Qos(Policy.Reliability.Reliable(10**8),
                                            Policy.History.KeepLast(50)))
deadline = time.monotonic() + 20
while writer.get_publication_matched_status().current_count == 0:
    assert time.monotonic() < deadline, "no match"
    time.sleep(0.005)
print("matched", flush=True)
sys.stdin.readline()
for i in range(5):
    writer.write(AudioDataStamped_(Header_(Time_(1700000000 + i, 999_999_999), "raw"),
                                   AudioData_(list(range(i, i + 3 + i)))))
print("written", flush=True)
sys.stdin.read()
"""


class Node:
    """A child process whose stdout JSON lines are collected by a reader thread."""

    def __init__(self, script: str, cfg: dict[str, Any], domain_id: int) -> None:
        env = {k: v for k, v in os.environ.items() if k != "CYCLONEDDS_URI"}
        env.update(ROS_DOMAIN_ID=str(domain_id), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     text=True, cwd=REPO)
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                self._queue.put(json.loads(line))
            elif line:
                self._queue.put({"event": line})
        self._queue.put(None)

    def expect(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        """Collect events until ``event`` arrives; fail on timeout or exit."""
        end = time.monotonic() + timeout
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"timed out waiting for {event!r}; got {self.events}")
            if item is None:
                pytest.fail(f"process exited ({self.proc.wait()}) before {event!r}; "
                            f"got {self.events}")
            self.events.append(item)
            if item["event"] == event:
                return item

    def send(self, line: str) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """Close stdin (lingering publishers exit), SIGTERM what still runs, kill if stuck."""
        assert self.proc.stdin
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        for action, grace in ((lambda: None, 0.5), (self.proc.terminate, 3), (self.proc.kill, 3)):
            action()
            try:
                self.proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                pass

    def of(self, event: str, tag: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event and tag in (None, e.get("tag"))]


@pytest.fixture
def domain_id(request: pytest.FixtureRequest) -> int:
    """Return a domain per test of this run: pid-derived base, test-specific offset (max 229)."""
    names = [item.name for item in request.session.items]
    return (os.getpid() % 23) * 10 + names.index(request.node.name) % 10


@pytest.fixture
def nodes() -> Any:
    started: list[Node] = []

    def start(script: str, cfg: dict[str, Any], domain: int) -> Node:
        node = Node(script, cfg, domain)
        started.append(node)
        return node

    yield start
    for node in started:
        node.close()


def chunk(i: int) -> dict[str, Any]:
    size = (0, 1, 3, 511, 512, 513)[i % 6] + i
    return {"stamp_ns": STAMP0 + i * 8_000_000, "frame_id": "mic" * (i % 3),
            "data": bytes((7 * i + k) % 256 for k in range(size)).hex()}


RELIABLE = {"reliability": "reliable", "durability": "volatile", "depth": 100}
BEST_EFFORT = {"reliability": "best_effort", "durability": "volatile", "depth": 100}


@pytest.mark.timeout(60)
def test_chunks_arrive_in_order_with_exact_stamps_and_bytes(nodes: Any, domain_id: int) -> None:
    msgs = [chunk(i) for i in range(40)]
    sub = nodes(SUB_SCRIPT, {"node": "listener", "duration": 20, "stop_after": len(msgs),
                             "subs": [{"tag": "a", "type": "audio_common_msgs/msg/"
                                       "AudioDataStamped", "topic": "audio",
                                       "qos": RELIABLE}]}, domain_id)
    assert sub.expect("ready")["topics"] == ["/kb/audio"]
    pub = nodes(PUB_SCRIPT, {"node": "talker", "type": "audio_common_msgs/msg/AudioDataStamped",
                             "topic": "audio", "qos": RELIABLE, "msgs": msgs, "wait_go": True,
                             "period": 0.002}, domain_id)
    assert pub.expect("matched")["count"] == 1
    sub.expect("matched")
    pub.send("go")
    assert sub.expect("done")["received"] == len(msgs)
    assert [e["msg"] for e in sub.of("msg")] == msgs


@pytest.mark.timeout(60)
def test_latched_info_reaches_a_late_joiner(nodes: Any, domain_id: int) -> None:
    info = {"channels": 2, "sample_rate": 16000, "sample_format": "S16LE", "bitrate": 512000,
            "coding_format": "wave"}
    pub = nodes(PUB_SCRIPT, {"node": "capture", "type": "audio_common_msgs/msg/AudioInfo",
                             "topic": "audio_info", "qos": "INFO_PUB", "msgs": [info],
                             "match_timeout": 0}, domain_id)
    pub.expect("published")
    sub = nodes(SUB_SCRIPT, {"node": "late", "duration": 20, "stop_after": 1,
                             "subs": [{"tag": "info", "type": "audio_common_msgs/msg/AudioInfo",
                                       "topic": "audio_info", "qos": "INFO_SUB"}]}, domain_id)
    sub.expect("done")
    assert [e["msg"] for e in sub.of("msg")] == [info]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("writer_qos", ["INFO_PUB", {**RELIABLE, "depth": 10}],
                         ids=["latched_writer", "ros2_default_writer"])
def test_info_subscriptions_hear_any_publisher_once(nodes: Any, domain_id: int,
                                                    writer_qos: Any) -> None:
    """
    ``subscribe_info`` hears latched publishers and ROS 2 default (volatile) ones alike.

    A latched subscription alone never matches a volatile publisher. Each message is handled
    once, though a latched publisher reaches both subscriptions, and a repeated one again.
    """
    infos = [{"channels": channels, "sample_rate": 48000, "sample_format": "S16LE",
              "bitrate": 0, "coding_format": "wave"} for channels in (1, 2, 2)]
    sub = nodes(SUB_SCRIPT, {"node": "listener", "duration": 4, "subs": [
        {"tag": "info", "info": True, "topic": "audio_info"}]}, domain_id)
    sub.expect("ready")
    pub = nodes(PUB_SCRIPT, {"node": "capture", "type": "audio_common_msgs/msg/AudioInfo",
                             "topic": "audio_info", "qos": writer_qos, "msgs": infos,
                             "wait_go": True}, domain_id)
    pub.expect("matched")
    sub.expect("matched")
    time.sleep(0.3)  # both subscriptions of a latched writer matched, not only the first
    pub.send("go")
    pub.expect("published")
    sub.expect("done")
    assert [e["msg"] for e in sub.of("msg")] == infos


@pytest.mark.timeout(60)
@pytest.mark.parametrize("writer_qos, reliable_matches",
                         [(BEST_EFFORT, False), ("AUDIO_PUB", True)],
                         ids=["best_effort_writer", "our_stream_publisher"])
def test_which_readers_a_writer_serves(nodes: Any, domain_id: int, writer_qos: Any,
                                       reliable_matches: bool) -> None:
    """
    A reliable reader gets nothing from a best-effort writer (as in rclpy), silently.

    kb_ros's stream publishers are reliable (keep last), so a ROS 2 default subscription, which
    is reliable, gets them as a best-effort one does.
    """
    audio = "audio_common_msgs/msg/AudioDataStamped"
    sub = nodes(SUB_SCRIPT, {"node": "listener", "duration": 3, "subs": [
        {"tag": "reliable", "type": audio, "topic": "audio", "qos": RELIABLE},
        {"tag": "best_effort", "type": audio, "topic": "audio", "qos": BEST_EFFORT}]}, domain_id)
    sub.expect("ready")
    pub = nodes(PUB_SCRIPT, {"node": "talker", "type": audio, "topic": "audio",
                             "qos": writer_qos, "msgs": [chunk(i) for i in range(20)],
                             "period": 0.01, "wait_go": True}, domain_id)
    pub.expect("matched")
    readers = 2 if reliable_matches else 1
    while len(sub.of("matched")) < readers:
        sub.expect("matched")
    pub.send("go")
    assert pub.expect("published")["matched"] == readers
    sub.expect("done")
    # the traffic was there (a best-effort reader may lose a sample on a loaded machine)...
    assert len(sub.of("msg", "best_effort")) >= 15
    assert len(sub.of("msg", "reliable")) == (20 if reliable_matches else 0)
    assert len(sub.of("matched", "reliable")) == reliable_matches


@pytest.mark.timeout(60)
def test_deadline_fires_when_stream_stops_and_liveliness_when_publisher_leaves(
        nodes: Any, domain_id: int) -> None:
    hints = "audio_common_msgs/msg/AudioDataStamped"
    sub = nodes(SUB_SCRIPT, {"node": "small_node", "duration": 15, "subs": [
        {"tag": "h", "type": hints, "topic": "hints", "qos": "HINT_SUB"}]}, domain_id)
    sub.expect("ready")
    pub = nodes(PUB_SCRIPT, {"node": "hint_node", "type": hints, "topic": "hints",
                             "qos": "HINT_PUB", "msgs": [chunk(i) for i in range(50)],
                             "period": 0.01, "silent_s": 1.0}, domain_id)
    pub.expect("published")
    deadline = sub.expect("deadline")
    last_msg = sub.of("msg")[-1]
    # Best effort: under load the reader may match a moment after the writer and miss the first.
    assert len(sub.of("msg")) >= 45 and last_msg["msg"]["stamp_ns"] == chunk(49)["stamp_ns"]
    assert sub.of("deadline")[0] is deadline and deadline["t"] > last_msg["t"]
    assert deadline["t"] - last_msg["t"] < 1.0  # requested deadline is 200 ms
    assert sub.of("alive")[0]["alive"] == 1
    pub.expect("exiting")
    while sub.expect("alive")["alive"] != 0:  # the publisher left: no live writers remain
        pass


@pytest.mark.timeout(60)
def test_namespace_and_remaps_resolve_like_ros(nodes: Any, domain_id: int) -> None:
    audio = "audio_common_msgs/msg/AudioDataStamped"
    sub = nodes(SUB_SCRIPT, {"node": "listener", "duration": 20, "stop_after": 3,
                             "argv": ["--ros-args", "-r", "__node:=renamed", "-r",
                                      "hints:=/robot1/mic_raw", "--"],
                             "subs": [{"tag": "remapped", "type": audio, "topic": "hints",
                                       "qos": RELIABLE},
                                      {"tag": "plain", "type": audio, "topic": "audio",
                                       "qos": BEST_EFFORT}]}, domain_id)
    assert sub.expect("ready")["topics"] == ["/robot1/mic_raw", "/kb/audio"]
    pub = nodes(PUB_SCRIPT, {"node": "capture", "argv": ["--ros-args", "-r", "__ns:=/robot1",
                                                         "--remap", "audio:=mic_raw"],
                             "type": audio, "topic": "audio", "qos": RELIABLE,
                             "msgs": [chunk(i) for i in range(3)], "wait_go": True}, domain_id)
    assert pub.expect("ready")["topic"] == "/robot1/mic_raw"
    pub.expect("matched")
    sub.expect("matched")
    pub.send("go")
    sub.expect("done")
    assert len(sub.of("msg", "remapped")) == 3 and sub.of("msg", "plain") == []


@pytest.mark.timeout(60)
def test_independent_cyclonedds_peer_is_received(nodes: Any, domain_id: int) -> None:
    sub = nodes(SUB_SCRIPT, {"node": "listener", "duration": 20, "stop_after": 5, "subs": [
        {"tag": "raw", "type": "audio_common_msgs/msg/AudioDataStamped", "topic": "audio",
         "qos": RELIABLE}]}, domain_id)
    sub.expect("ready")
    raw = nodes(RAW_WRITER_SCRIPT, {}, domain_id)
    raw.expect("matched")
    sub.expect("matched")
    raw.send("go")
    sub.expect("done")
    assert [e["msg"] for e in sub.of("msg")] == [
        {"stamp_ns": (1700000000 + i) * 10**9 + 999_999_999, "frame_id": "raw",
         "data": bytes(range(i, i + 3 + i)).hex()} for i in range(5)]


@pytest.mark.timeout(60)
def test_sigint_makes_spin_return_promptly(nodes: Any, domain_id: int) -> None:
    sub = nodes(SUB_SCRIPT, {"node": "listener", "duration": 30, "subs": []}, domain_id)
    sub.expect("ready")
    time.sleep(0.3)  # let spin() block in the WaitSet
    sent = time.monotonic()
    sub.proc.send_signal(signal.SIGINT)
    sub.expect("done", timeout=5)
    assert time.monotonic() - sent < 1.0
    assert sub.proc.wait(timeout=5) == 0


@pytest.mark.timeout(60)
def test_default_config_uses_loopback_only(tmp_path: Path, domain_id: int) -> None:
    trace = tmp_path / "cyclone.log"
    script = ("from kb_ros.transport.dds_backend import DdsBackend\n"
              "from kb_ros.transport.dds_config import resolve_config\n"
              "from kb_ros.transport.ros_args import parse_ros_args\n"
              f"config = resolve_config(trace_file={str(trace)!r})\n"
              "b = DdsBackend(parse_ros_args([], 'n'), config)\n"
              "b.close()\n")
    env = {k: v for k, v in os.environ.items() if k != "CYCLONEDDS_URI"}
    env.update(ROS_DOMAIN_ID=str(domain_id), PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=30)
    log = trace.read_text()
    selected = [line.split("selected interfaces:", 1)[1] for line in log.splitlines()
                if "selected interfaces:" in line]
    assert len(selected) == 1 and selected[0].split()[0] == LOOPBACK, selected
    assert selected[0].count("(index") == 1  # exactly one interface in use
    assert "ownip: udp/127.0.0.1" in log
    assert "Domain/General/AllowMulticast/#text: false" in log


def test_config_selection() -> None:
    assert domain_id_from_env({}) == 0
    assert domain_id_from_env({"ROS_DOMAIN_ID": "42"}) == 42
    for bad in ("-1", "233", "x"):
        with pytest.raises(ValueError, match="ROS_DOMAIN_ID"):
            domain_id_from_env({"ROS_DOMAIN_ID": bad})
    user = resolve_config(environ={"CYCLONEDDS_URI": "file:///etc/cyclone.xml"})
    assert user.xml is None  # Cyclone reads the user's file itself
    loopback = resolve_config(environ={"ROS_DOMAIN_ID": "7"})
    assert loopback.domain_id == 7 and '<NetworkInterface name="lo" multicast="false"/>' in (
        loopback.xml or "")
    with pytest.raises(ValueError, match="no network interface 'nonexist0'"):
        resolve_config("nonexist0")
    real = next((name for _, name in socket.if_nameindex() if name != "lo"), None)
    if real is None:
        pytest.skip("this machine has no network interface but lo")
    named = resolve_config(real, environ={"CYCLONEDDS_URI": "file:///etc/cyclone.xml"})
    assert named.xml == build_config_xml(real)
    assert f'<NetworkInterface name="{real}"/>' in named.xml and "Peer" not in named.xml
