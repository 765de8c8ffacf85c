"""
The encrypted CurveZMQ bridge: its keys, its endpoints in process, and real node processes.

In the multi-process tests device and workstation run on separate loopback DDS domains, so
only the two link_nodes in bridge mode connect them. Keys come from ``kb-ros keys``.
"""

import contextlib
import os
import signal
import socket
import stat
import time

import numpy as np
import pytest
import zmq.auth

from kb_ros.cli.graph import LocalGraph, NodeProcess
from kb_ros.cli.main import main as kb_ros_main
from kb_ros.cli.recorder import TopicLog, TopicRecorder
from kb_ros.models.checkpoint import read_manifest
from kb_ros.nodes.link_node import BridgeRelay
from kb_ros.resources import shipped_model_path
from kb_ros.transport import qos
from kb_ros.transport.bridge_keys import (load_authorized_devices, load_public_key,
                                          load_secret_key)
from kb_ros.transport.curve_bridge import (BridgeMessage, BridgeSettings, DeviceEndpoint,
                                           WorkstationEndpoint)
from kb_ros.transport.dds_backend import DdsBackend, RosLogger
from kb_ros.transport.messages import (AUDIO_INFO, AUDIO_STAMPED, DIAGNOSTIC_ARRAY,
                                       AudioChunkMsg, AudioInfoMsg)
from kb_ros.transport.ros_args import parse_ros_args

CHUNK_NS = 8_000_000
HEARTBEAT = {"heartbeat_ms": 200, "heartbeat_timeout_ms": 1000}


def domain_id(offset: int) -> int:
    return 1 + (os.getpid() * 11 + offset) % 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def logged(node: NodeProcess, text: str) -> int:
    return sum(text in line for line in node.lines)


@pytest.fixture
def keys(tmp_path, capfd):
    """Keys for devices ``robot`` and ``robot2``, and an ``intruder`` the workstation never saw."""
    assert kb_ros_main(["keys", "--out", str(tmp_path / "keys"), "--device", "robot",
                        "--device", "robot2"]) == 0
    assert kb_ros_main(["keys", "--out", str(tmp_path / "other"), "--device", "intruder"]) == 0
    return tmp_path / "keys", tmp_path / "other", capfd.readouterr().out


def workstation_params(keys_dir, port):
    return {"mode": "bridge_workstation", "bridge_port": port,
            "secret_key": str(keys_dir / "workstation" / "server.key_secret"),
            "authorized_keys_dir": str(keys_dir / "workstation" / "authorized_keys"),
            **HEARTBEAT}


def device_params(device_dir, name, port):
    return {"mode": "bridge_device", "bridge_port": port,
            "secret_key": str(device_dir / f"{name}.key_secret"),
            "server_public_key": str(device_dir / "server.key"), **HEARTBEAT}


def test_keys_layout_private_secrets_and_instructions(keys):
    keys_dir, _, printed = keys
    ws, robot = keys_dir / "workstation", keys_dir / "robot"
    for secret in (ws / "server.key_secret", robot / "robot.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert zmq.auth.load_certificate(secret)[1] is not None
    server_public, _ = zmq.auth.load_certificate(ws / "server.key")
    assert zmq.auth.load_certificate(robot / "server.key") == (server_public, None)
    assert zmq.auth.load_certificates(ws / "authorized_keys") == {
        zmq.auth.load_certificate(keys_dir / name / f"{name}.key")[0]: True
        for name in ("robot", "robot2")}
    assert f"secret_key:={ws / 'server.key_secret'}" in printed
    assert f"server_public_key:={robot / 'server.key'}" in printed
    # Adding a device keeps the workstation's key; an existing device is never overwritten.
    assert kb_ros_main(["keys", "--out", str(keys_dir), "--device", "robot3"]) == 0
    assert zmq.auth.load_certificate(ws / "server.key")[0] == server_public
    assert len(list((ws / "authorized_keys").glob("*.key"))) == 3
    assert kb_ros_main(["keys", "--out", str(keys_dir), "--device", "robot"]) == 2
    assert kb_ros_main(["keys", "--out", str(keys_dir), "--device", "../x"]) == 2


def test_link_node_refuses_a_secret_key_others_can_read(keys, tmp_path):
    keys_dir, _, _ = keys
    secret = keys_dir / "robot" / "robot.key_secret"
    secret.chmod(0o644)
    with LocalGraph(domain_id(0), log_dir=tmp_path / "logs") as graph:
        link = graph.start("link_node", **device_params(keys_dir / "robot", "robot", 1))
        assert link.proc.wait(timeout=60) == 2
    assert logged(link, "chmod 600")


def poll_until(endpoints, condition, timeout_s: float = 10.0) -> list:
    """Poll bridge endpoints (as link_node's timer does) until ``condition()``; return arrivals."""
    received = []
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        for endpoint in endpoints:
            received += endpoint.poll()
        time.sleep(0.001)
    return received


@pytest.mark.timeout(60)
def test_endpoints_route_each_device_send_formats_first_and_drop_stale_audio(keys):
    keys_dir, other_dir, _ = keys
    port = free_port()

    def settings(**kw):
        return BridgeSettings("127.0.0.1", port, queue_messages=4, **kw)

    def device_endpoint(name):
        folder = keys_dir / name
        return DeviceEndpoint(settings(), load_secret_key(folder / f"{name}.key_secret"),
                              load_public_key(folder / "server.key"), {"hints", "hint_info"},
                              RosLogger(name))

    robot_dir, ws_dir = keys_dir / "robot", keys_dir / "workstation"
    device, device2 = device_endpoint("robot"), device_endpoint("robot2")
    intruder = DeviceEndpoint(settings(auth_retry_s=0.2),
                              load_secret_key(other_dir / "intruder" / "intruder.key_secret"),
                              load_public_key(robot_dir / "server.key"), {"hints"},
                              RosLogger("intruder"))
    device.send("audio", b"before the workstation is up")
    device.send("audio_info", b"format", latched=True)
    assert device.counters.dropped == {"not_connected": 1}
    ws = WorkstationEndpoint(settings(), load_secret_key(ws_dir / "server.key_secret"),
                             load_authorized_devices(ws_dir / "authorized_keys"),
                             {"audio", "audio_info"}, RosLogger("ws"))
    try:
        first = poll_until([device, device2, ws, intruder],
                           lambda: ws.counters.received["audio_info"]
                           and device2.workstation.connected)
        assert first == [BridgeMessage("robot", "audio_info", b"format")]  # hello is internal
        ws.send("robot", "hint_info", b"hint format", latched=True)
        assert poll_until([device, ws], lambda: device.counters.received["hint_info"]) == [
            BridgeMessage("workstation", "hint_info", b"hint format")]

        # One workstation bridge, two devices: each one's audio is named after its key, and
        # hints go to the device they are addressed to, only.
        device2.send("audio", b"from robot2")
        assert poll_until([device2, ws], lambda: ws.counters.received["audio"]) == [
            BridgeMessage("robot2", "audio", b"from robot2")]
        ws.send("robot", "hints", b"for robot")
        ws.send("robot2", "hints", b"for robot2")
        got: dict[str, list] = {"robot": [], "robot2": []}

        def both_got_hints() -> bool:
            got["robot"] += device.poll()
            got["robot2"] += device2.poll()
            return all(got.values())

        poll_until([ws], both_got_hints)
        time.sleep(0.2)  # anything misrouted has arrived by now
        both_got_hints()
        assert got == {name: [BridgeMessage("workstation", "hints", f"for {name}".encode())]
                       for name in got}

        # The workstation stops reading: once the socket buffers are full, the device keeps
        # the newest queue_messages and drops the oldest, so what arrives later is fresh.
        audio_before = ws.counters.received["audio"]
        for index in range(60):
            device.send("audio", index.to_bytes(4, "little") * (1 << 17))
            device.poll()
        stale = device.counters.dropped["stale"]
        arrived = poll_until([device, ws], lambda: ws.counters.received["audio"] - audio_before
                             == device.counters.sent["audio"] and not device.workstation.outbox)
        indices = [int.from_bytes(m.payload[:4], "little") for m in arrived]
        assert stale > 0 and len(indices) + stale == 60
        assert indices == sorted(indices) and indices[-4:] == [56, 57, 58, 59]

        # libzmq gives up on a rejected key; the device tries again by itself.
        poll_until([device, ws, intruder], lambda: ws.counters.rejected_keys >= 3, 10)
        assert intruder.counters.received == {} and not intruder.workstation.connected
        assert ws.counters.dropped == {}
    finally:
        for endpoint in (device, device2, intruder, ws):
            endpoint.close()


def test_relay_drops_and_counts_malformed_messages(keys, capfd, monkeypatch):
    keys_dir, _, _ = keys
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain_id(9)))
    backend = DdsBackend(parse_ros_args(["--ros-args", "-r", "__ns:=/kb"], "link_node"))
    robot_dir = keys_dir / "robot"
    endpoint = DeviceEndpoint(BridgeSettings("127.0.0.1", free_port()),
                              load_secret_key(robot_dir / "robot.key_secret"),
                              load_public_key(robot_dir / "server.key"), {"hints"},
                              backend.get_logger())
    relay = BridgeRelay(backend, endpoint, tick_ms=1.0)
    try:
        hint = AudioChunkMsg(1_700_000_000_000_000_000, bytes(256), "mic")
        good = relay.codec.serialize(AUDIO_STAMPED, hint)
        assert relay.decode("workstation", "hints", good) == hint
        for bad in (b"", good[:-3], b"\x00\x01\x00\x00" + b"\xff" * 40):
            assert relay.decode("workstation", "hints", bad) is None
        assert endpoint.counters.dropped == {"malformed": 3}
        assert relay.diagnose().values["dropped.malformed"] == 3
    finally:
        relay.close()
        backend.close()
    assert "dropped input (malformed, 1 so far): hints from workstation" in capfd.readouterr().err


@pytest.mark.timeout(90)
def test_latched_info_reaches_late_peers_and_strangers_get_nothing(keys, tmp_path):
    """
    Formats cross both ways, also to a peer that (re)connects later; no stranger gets through.

    Strangers: an intruder whose key the workstation does not know, and a device that expects
    another workstation's key (as it would when an impostor answers).
    """
    keys_dir, other_dir, _ = keys
    port = free_port()
    robot_dir = keys_dir / "robot"
    strangers = {
        "intruder": device_params(other_dir / "intruder", "intruder", port)
        | {"server_public_key": str(robot_dir / "server.key")},
        "misled": device_params(robot_dir, "robot", port)
        | {"server_public_key": str(other_dir / "intruder" / "server.key")},
    }
    ws_rec, dev_rec = TopicRecorder(domain_id(1)), TopicRecorder(domain_id(2))
    ws_audio = ws_rec.record(AUDIO_STAMPED, "/kb/robot/audio")
    ws_audio_info = ws_rec.record(AUDIO_INFO, "/kb/robot/audio_info", qos.INFO_SUB)
    ws_diagnostics = ws_rec.record(DIAGNOSTIC_ARRAY, "/diagnostics", qos.DIAGNOSTICS)
    hint_info_pub = ws_rec.backend.create_publisher(AUDIO_INFO, "/kb/robot/hint_info",
                                                    qos.INFO_PUB)
    hints_pub = ws_rec.backend.create_publisher(AUDIO_STAMPED, "/kb/robot/hints", qos.HINT_PUB)
    dev_hints = dev_rec.record(AUDIO_STAMPED, "/kb/hints")
    dev_hint_info = dev_rec.record(AUDIO_INFO, "/kb/hint_info", qos.INFO_SUB)
    audio_info_pub = dev_rec.backend.create_publisher(AUDIO_INFO, "/kb/audio_info", qos.INFO_PUB)
    audio_pub = dev_rec.backend.create_publisher(AUDIO_STAMPED, "/kb/audio", qos.AUDIO_PUB)
    stranger_recs = {name: TopicRecorder(domain_id(3 + k)) for k, name in enumerate(strangers)}
    stranger_logs = [log for rec in stranger_recs.values() for log in (
        rec.record(AUDIO_STAMPED, "/kb/hints"), rec.record(AUDIO_INFO, "/kb/hint_info",
                                                           qos.INFO_SUB))]
    recorders = [ws_rec, dev_rec, *stranger_recs.values()]
    for recorder in recorders:
        recorder.start()
    hint_info = AudioInfoMsg(sample_format="S16LE", coding_format="wave;kb_hint=1;model=m-1")
    audio_info = AudioInfoMsg(sample_format="F32LE")
    hint_info_pub.publish(hint_info)
    audio_info_pub.publish(audio_info)

    with contextlib.ExitStack() as stack:
        graphs = {name: stack.enter_context(LocalGraph(domain_id(3 + k), tmp_path / name))
                  for k, name in enumerate(strangers)}
        stranger_links = {name: graphs[name].start("link_node", **params)
                          for name, params in strangers.items()}
        # The devices start before the workstation: their formats wait for the connection.
        dev = stack.enter_context(LocalGraph(domain_id(2), tmp_path / "dev"))
        dev_link = dev.start("link_node", **device_params(robot_dir, "robot", port))
        for graph in (*graphs.values(), dev):
            graph.wait_ready(60)
        ws = stack.enter_context(LocalGraph(domain_id(1), tmp_path / "ws"))
        ws_link = ws.start("link_node", **workstation_params(keys_dir, port),
                           **{"diagnostic_updater.period": 0.2})
        ws.wait_ready(60)
        assert wait_until(lambda: len(dev_hint_info) and len(ws_audio_info), 20)

        stamps = [1_700_000_000_000_000_000 + k * CHUNK_NS for k in range(40)]
        rng = np.random.default_rng(0)
        payloads = [rng.standard_normal(128).astype("<f4").tobytes() for _ in stamps]
        for stamp, data in zip(stamps, payloads):
            audio_pub.publish(AudioChunkMsg(stamp, data, "mic"))
            hints_pub.publish(AudioChunkMsg(stamp, data[:256], "mic"))
            time.sleep(CHUNK_NS / 1e9)
        assert wait_until(lambda: len(ws_audio) >= len(stamps) and len(dev_hints) >= len(stamps),
                          10)
        time.sleep(0.5)  # a diagnostics period with these counts
        ws_status = [s.values for r in ws_diagnostics.messages for s in r.msg.status
                     if s.hardware_id.endswith("/link_node")][-1]

        # A frozen workstation stops answering heartbeats: the device notices and reconnects
        # once it is back, and both formats are delivered again over the new connection.
        ws_link.proc.send_signal(signal.SIGSTOP)
        try:
            assert wait_until(lambda: logged(dev_link, "heartbeat timed out"), 10)
        finally:
            ws_link.proc.send_signal(signal.SIGCONT)
        assert wait_until(lambda: logged(dev_link, "connected to the workstation") == 2, 15)
        assert wait_until(lambda: len(dev_hint_info) >= 2 and len(ws_audio_info) >= 2, 10)
    for recorder in recorders:
        recorder.stop()

    assert [r.msg for r in dev_hint_info.messages] == [hint_info] * len(dev_hint_info)
    assert [r.msg for r in ws_audio_info.messages] == [audio_info] * len(ws_audio_info)
    assert [(r.msg.stamp_ns, r.msg.data, r.msg.frame_id) for r in ws_audio.messages] == [
        (stamp, data, "mic") for stamp, data in zip(stamps, payloads)]
    assert [(r.msg.stamp_ns, r.msg.data) for r in dev_hints.messages] == [
        (stamp, data[:256]) for stamp, data in zip(stamps, payloads)]
    assert logged(ws_link, "device robot connected") == 2
    assert ws_status["received.audio"] == str(len(stamps))
    assert ws_status["sent.hints"] == str(len(stamps)) and ws_status["dropped"] == "0"

    assert all(len(log) == 0 for log in stranger_logs)
    intruder_key = zmq.auth.load_certificate(other_dir / "intruder" / "intruder.key")[0]
    assert logged(ws_link, f"rejected a client: key {intruder_key.decode()}")
    assert logged(stranger_links["intruder"], "the workstation rejected this device's key")
    assert logged(stranger_links["misled"], "is server_public_key the workstation's key?")
    assert ws_status["rejected_keys"] == "1" and int(ws_status["handshake_failures"]) >= 2


class DeviceSide:
    """capture (started later), small_node and the device bridge on one domain, recorded."""

    def __init__(self, graph: LocalGraph, domain: int, keys_dir, port: int) -> None:
        self.graph = graph
        self.recorder = TopicRecorder(domain)
        self.audio = self.recorder.record(AUDIO_STAMPED, "/kb/audio")
        self.enhanced = self.recorder.record(AUDIO_STAMPED, "/kb/enhanced")
        self.hints = self.recorder.record(AUDIO_STAMPED, "/kb/hints")
        self.hint_info = self.recorder.record(AUDIO_INFO, "/kb/hint_info", qos.INFO_SUB)
        self.diagnostics = self.recorder.record(DIAGNOSTIC_ARRAY, "/diagnostics",
                                                qos.DIAGNOSTICS)
        self.recorder.start()
        self.small = graph.start("small_node", **{"diagnostic_updater.period": 0.2})
        self.link = graph.start("link_node", **device_params(keys_dir / "robot", "robot", port),
                                **{"diagnostic_updater.period": 0.2})

    def status(self, node: str, before_ns: int | None = None) -> dict[str, str]:
        """Return a node's newest diagnostics values (received before ``before_ns``)."""
        return [s.values for r in self.diagnostics.messages for s in r.msg.status
                if s.hardware_id.endswith(f"/{node}")
                and (before_ns is None or r.arrival_ns < before_ns)][-1]

    def small_status(self, before_ns: int | None = None) -> dict[str, str]:
        return self.status("small_node", before_ns)

    def hits(self) -> int:
        """Return the hints the small node has used so far (0 before its first diagnostics)."""
        try:
            return int(self.small_status()["hits"])
        except IndexError:
            return 0

    def finish(self, capture: NodeProcess) -> None:
        """Stop the capture, let every chunk come out, take the final diagnostics."""
        capture.stop()
        assert capture.proc.returncode == 0, "\n".join(capture.lines[-20:])
        assert wait_until(lambda: len(self.enhanced) >= len(self.audio), 15)
        time.sleep(0.6)
        self.graph.stop()
        self.recorder.stop()

    def check_one_output_per_input(self) -> None:
        in_stamps = [r.msg.stamp_ns for r in self.audio.messages]
        assert [r.msg.stamp_ns for r in self.enhanced.messages] == in_stamps
        assert np.all(np.diff(in_stamps) == CHUNK_NS)
        for rec in self.enhanced.messages:
            assert np.isfinite(np.frombuffer(rec.msg.data, "<f4")).all()
        assert int(self.small_status()["chunks"]) == len(in_stamps)


def hints_since(log: TopicLog, since_ns: int) -> int:
    return sum(r.arrival_ns >= since_ns for r in log.messages)


@pytest.mark.timeout(150)
def test_device_rides_out_workstation_restarts_and_rejects_an_untrained_producer(
        keys, tmp_path):
    """
    One stream, four workstation states: the device outputs every chunk throughout.

    1. boosted by the large model the kb model was trained with; 2. the workstation bridge is
    killed: no hints, the device runs on its no-hint path; 3. restarted: boosted again; 4. the
    bridge now serves a hint node running another model: its hints cross and are rejected.
    """
    keys_dir, _, _ = keys
    port = free_port()
    with LocalGraph(domain_id(4), log_dir=tmp_path / "dev") as dev_graph, \
            LocalGraph(domain_id(5), log_dir=tmp_path / "ws") as ws_graph, \
            LocalGraph(domain_id(6), log_dir=tmp_path / "other_ws") as other_ws_graph:
        device = DeviceSide(dev_graph, domain_id(4), keys_dir, port)
        ws_graph.start("hint_node", namespace="/kb/robot")
        other_ws_graph.start("hint_node", namespace="/kb/robot", model="small")
        ws_link = ws_graph.start("link_node", "ws_link", **workstation_params(keys_dir, port))
        # The shipped sample, looped; it starts once small_node, link_node and recorder listen.
        capture = dev_graph.start("capture_node", rate=1.0, loop=True, wait_for_subscribers=3,
                                  wait_timeout_s=300.0)
        for graph in (dev_graph, ws_graph, other_ws_graph):
            graph.wait_ready(120)
        assert wait_until(lambda: device.hits() >= 10, 60)

        ws_link.proc.kill()  # 2.
        killed_ns = time.time_ns()
        ws_link.stop()
        assert wait_until(lambda: logged(device.link, "disconnected"), 10)
        time.sleep(0.5)
        restarted_ns, hits_before = time.time_ns(), device.hits()  # 3.
        ws_link = ws_graph.start("link_node", "ws_link2", **workstation_params(keys_dir, port))
        ws_graph.wait_ready(60)
        assert wait_until(lambda: device.hits() >= hits_before + 10, 60)

        ws_link.stop()  # 4.
        other_ws_graph.start("link_node", **workstation_params(keys_dir, port))
        other_id = read_manifest(shipped_model_path("small"))["model_id"]
        assert wait_until(lambda: f"model={other_id}" in device.hint_info.messages[-1].msg
                          .coding_format, 60)
        switched_ns = time.time_ns() + 300_000_000  # hints still in flight are past
        assert wait_until(lambda: hints_since(device.hints, switched_ns) >= 25, 30)
        device.finish(capture)

    device.check_one_output_per_input()
    # 2: nothing crossed while the workstation was gone, and the device kept going on its own.
    assert not any(killed_ns + 300_000_000 < r.arrival_ns < restarted_ns
                   for r in device.hints.messages)
    resumed_ns = min(r.arrival_ns for r in device.hints.messages if r.arrival_ns > restarted_ns)
    at_kill, at_resume = device.small_status(killed_ns), device.small_status(resumed_ns)
    at_switch, final = device.small_status(switched_ns), device.small_status()
    assert int(at_kill["hits"]) >= 10
    assert int(at_resume["misses"]) - int(at_kill["misses"]) >= 60  # >= 0.5 s on no hint
    assert int(at_switch["hits"]) - int(at_resume["hits"]) >= 10  # 3: boosted again
    # 4: hints from a producer the kb model was not trained with are counted and never used.
    assert final["hits"] == at_switch["hits"]
    rejected = (int(final["invalid.unknown_producer"])
                - int(at_switch.get("invalid.unknown_producer", 0)))
    assert rejected >= 0.9 * hints_since(device.hints, switched_ns)
    assert logged(device.small, "will be rejected")
    assert logged(device.link, "connected to the workstation") == 3
    # Audio from the outage was dropped and counted, not queued for the next connection.
    bridge = device.status("link_node")
    assert int(bridge["dropped.not_connected"]) >= 60
    assert int(bridge["connects"]) == 3 and int(bridge["disconnects"]) == 2
    assert "dropped.malformed" not in bridge
