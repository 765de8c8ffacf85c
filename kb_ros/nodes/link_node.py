"""
link_node: what stands between device and workstation.

``mode:=emulate`` (default): both sides share one DDS graph; audio is relayed up to the hint
node's namespace and hints back down through an emulated link (delay, jitter, loss,
duplication, reordering; seeded), so one machine behaves like a robot talking to a
workstation. The latched *_info topics are relayed at once.

``mode:=bridge_device`` / ``mode:=bridge_workstation``: the two sides are separate DDS graphs
(machines, domains) joined by one authenticated, encrypted CurveZMQ connection per device
(``kb_ros.transport.curve_bridge``; keys from ``kb-ros keys``). The device side sends ``audio``
and ``audio_info`` up and publishes the ``hints`` and ``hint_info`` that come back. The
workstation side publishes each authorized device's audio under ``<device>/``, where that
device's hint_node runs, and sends that namespace's hints back to it alone. Messages cross as
the ROS 2 wire bytes (CDR) of their standard types. pyzmq is imported in these modes only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rosbags.serde import SerdeError

from kb_ros.bags.convert import MessageCodec
from kb_ros.nodes.common import OK, WARN, DropLog, declare_all
from kb_ros.nodes.runner import run_node
from kb_ros.transport import qos
from kb_ros.transport.backend import (Backend, DiagnosticReport, ParamSpec, Publisher,
                                      subscribe_info)
from kb_ros.transport.emulated_link import EmulatedLink, LinkProfile
from kb_ros.transport.messages import AUDIO_INFO, AUDIO_STAMPED, AudioChunkMsg

if TYPE_CHECKING:
    from kb_ros.transport.curve_bridge import BridgeEndpoint

MODES = ("emulate", "bridge_device", "bridge_workstation")
PARAMS = [
    ParamSpec("mode", "emulate", "emulate: an emulated network inside one DDS graph; "
              "bridge_device / bridge_workstation: the two ends of the encrypted CurveZMQ "
              "bridge between two DDS graphs", read_only=True, choices=MODES),
    ParamSpec("remote_namespace", "remote", "emulate: namespace of the hint node, relative to "
              "ours", read_only=True),
    ParamSpec("uplink_delay_ms", 24.0, "emulate: one-way delay device -> workstation",
              read_only=True, float_range=(0.0, 10000.0)),
    ParamSpec("downlink_delay_ms", 24.0, "emulate: one-way delay workstation -> device",
              read_only=True, float_range=(0.0, 10000.0)),
    ParamSpec("jitter_ms", 0.0, "emulate: extra uniform random delay, each way",
              read_only=True, float_range=(0.0, 10000.0)),
    ParamSpec("loss", 0.0, "emulate: probability a message is lost, each way", read_only=True,
              float_range=(0.0, 1.0)),
    ParamSpec("duplicate", 0.0, "emulate: probability a message is delivered twice",
              read_only=True, float_range=(0.0, 1.0)),
    ParamSpec("reorder", False, "emulate: let jitter reorder messages (else FIFO)",
              read_only=True),
    ParamSpec("seed", 0, "emulate: seed of the link's random choices", read_only=True,
              int_range=(0, 2**31 - 1)),
    ParamSpec("outage_start_s", 0.0, "emulate: an outage starts this long after the first "
              "audio message", read_only=True, float_range=(0.0, 86400.0)),
    ParamSpec("outage_s", 0.0, "emulate: outage length; everything sent either way during it "
              "is lost (0: no outage)", read_only=True, float_range=(0.0, 86400.0)),
    ParamSpec("tick_ms", 1.0, "How often the emulated link delivers due messages, or the "
              "bridge takes what arrived", read_only=True, float_range=(0.1, 100.0)),
    ParamSpec("bridge_address", "127.0.0.1", "bridge_device: the workstation's host to "
              "connect to; bridge_workstation: the local address or interface name to listen "
              "on (127.0.0.1: this machine only; 0.0.0.0: every interface)", read_only=True),
    ParamSpec("bridge_port", 7717, "TCP port of the bridge", read_only=True,
              int_range=(1, 65535)),
    ParamSpec("secret_key", "", "Bridge: this side's secret key file from kb-ros keys "
              "(server.key_secret or <device>.key_secret; must be private, mode 0600)",
              read_only=True),
    ParamSpec("server_public_key", "", "bridge_device: the workstation's public key file "
              "(server.key)", read_only=True),
    ParamSpec("authorized_keys_dir", "", "bridge_workstation: folder of the device public "
              "keys (<device>.key) it accepts; each device's topics are <device>/audio etc.",
              read_only=True),
    ParamSpec("queue_messages", 8, "Bridge: messages queued per peer and direction; when "
              "full the oldest is dropped (8 = 64 ms of audio)", read_only=True,
              int_range=(1, 1000)),
    ParamSpec("heartbeat_ms", 500, "Bridge: ZMTP heartbeat interval", read_only=True,
              int_range=(100, 60000)),
    ParamSpec("heartbeat_timeout_ms", 2000, "Bridge: a peer silent this long is "
              "disconnected and logged", read_only=True, int_range=(100, 600000)),
]

# What crosses the bridge, by kind: the topic name relative to the device's namespace.
UPLINK = ("audio", "audio_info")
DOWNLINK = ("hints", "hint_info")
MSG_TYPES = {"audio": AUDIO_STAMPED, "audio_info": AUDIO_INFO,
             "hints": AUDIO_STAMPED, "hint_info": AUDIO_INFO}
LATCHED = {"audio_info", "hint_info"}  # re-sent on every (re)connection
PUB_QOS = {"audio": qos.AUDIO_PUB, "audio_info": qos.INFO_PUB,
           "hints": qos.HINT_PUB, "hint_info": qos.INFO_PUB}
SUB_QOS = {"audio": qos.AUDIO_SUB, "hints": qos.AUDIO_SUB}  # the *_info: subscribe_info


class EmulatedLinkNode:
    """mode emulate: audio up to ``remote_namespace``, hints back, through emulated links."""

    def __init__(self, backend: Backend, p: dict[str, Any]) -> None:
        self.backend = backend
        remote = p["remote_namespace"].strip("/")
        self.outage_start_s, self.outage_s = p["outage_start_s"], p["outage_s"]

        def profile(delay_ms: float) -> LinkProfile:
            return LinkProfile(delay_ms, p["jitter_ms"], p["loss"], p["duplicate"], p["reorder"])

        self.uplink = EmulatedLink[AudioChunkMsg](profile(p["uplink_delay_ms"]), p["seed"])
        self.downlink = EmulatedLink[AudioChunkMsg](profile(p["downlink_delay_ms"]),
                                                    p["seed"] + 1)
        self.audio_out = backend.create_publisher(AUDIO_STAMPED, f"{remote}/audio", qos.AUDIO_PUB)
        self.hints_out = backend.create_publisher(AUDIO_STAMPED, "hints", qos.HINT_PUB)
        audio_info_out = backend.create_publisher(AUDIO_INFO, f"{remote}/audio_info",
                                                  qos.INFO_PUB)
        hint_info_out = backend.create_publisher(AUDIO_INFO, "hint_info", qos.INFO_PUB)
        subscribe_info(backend, "audio_info", audio_info_out.publish)
        subscribe_info(backend, f"{remote}/hint_info", hint_info_out.publish)
        backend.create_subscription(AUDIO_STAMPED, "audio", self.on_audio, qos.AUDIO_SUB)
        backend.create_subscription(AUDIO_STAMPED, f"{remote}/hints", self.on_hint,
                                    qos.AUDIO_SUB)
        backend.create_timer(p["tick_ms"] / 1e3, self.deliver)
        backend.add_diagnostic_task("link", self.diagnose)
        backend.get_logger().info(
            f"ready: {p['uplink_delay_ms']:.1f} ms up, {p['downlink_delay_ms']:.1f} ms down, "
            f"jitter {p['jitter_ms']:.1f} ms, loss {p['loss']:.2f}")

    def on_audio(self, msg: AudioChunkMsg) -> None:
        now = self.backend.now_ns()
        if self.uplink.stats.offered == 0 and self.outage_s > 0:
            start = now + int(self.outage_start_s * 1e9)
            for link in (self.uplink, self.downlink):
                link.schedule_outage(start, start + int(self.outage_s * 1e9))
            self.backend.get_logger().info(
                f"outage of {self.outage_s} s scheduled in {self.outage_start_s} s")
        self.uplink.offer(msg, now)

    def on_hint(self, msg: AudioChunkMsg) -> None:
        self.downlink.offer(msg, self.backend.now_ns())

    def deliver(self) -> None:
        now = self.backend.now_ns()
        for msg in self.uplink.due(now):
            self.audio_out.publish(msg)
        for msg in self.downlink.due(now):
            self.hints_out.publish(msg)

    def diagnose(self) -> DiagnosticReport:
        values = {}
        for direction, link in (("up", self.uplink), ("down", self.downlink)):
            values.update({f"{direction}.{name}": n for name, n in vars(link.stats).items()})
            values[f"{direction}.in_flight"] = len(link)
        return DiagnosticReport(OK, "emulating", values)


class BridgeRelay:
    """
    One end of the bridge: DDS topics to and from an endpoint of ``curve_bridge``.

    The endpoint is polled on a timer (the spinning thread), so the relay and the endpoint
    never run concurrently with the node's callbacks.
    """

    def __init__(self, backend: Backend, endpoint: BridgeEndpoint, tick_ms: float) -> None:
        self.backend = backend
        self.log = backend.get_logger()
        self.endpoint = endpoint
        self.codec = MessageCodec()
        self.publishers: dict[str, dict[str, Publisher]] = {}  # peer -> kind -> publisher
        self.drop_log = DropLog(self.log)
        backend.create_timer(tick_ms / 1e3, self.poll)
        backend.add_diagnostic_task("bridge", self.diagnose)

    def relay(self, peer: str, prefix: str, outbound: tuple[str, ...], inbound: tuple[str, ...],
              send: Callable[[str, bytes, bool], None]) -> None:
        """Send each outbound kind's topic ``prefix + kind`` to ``peer``; publish its inbound."""
        for kind in outbound:
            def forward(msg: Any, kind: str = kind) -> None:
                send(kind, self.codec.serialize(MSG_TYPES[kind], msg), kind in LATCHED)

            if MSG_TYPES[kind] == AUDIO_INFO:
                subscribe_info(self.backend, prefix + kind, forward)
            else:
                self.backend.create_subscription(MSG_TYPES[kind], prefix + kind, forward,
                                                 SUB_QOS[kind])
        self.publishers[peer] = {
            kind: self.backend.create_publisher(MSG_TYPES[kind], prefix + kind, PUB_QOS[kind])
            for kind in inbound}

    def poll(self) -> None:
        """Publish what arrived over the bridge; retry queued sends."""
        for message in self.endpoint.poll():
            msg = self.decode(message.peer, message.kind, message.payload)
            if msg is not None:
                self.publishers[message.peer][message.kind].publish(msg)

    def decode(self, peer: str, kind: str, payload: bytes) -> Any:
        """Return the message in a CDR payload from ``peer``; None (counted, logged) if bad."""
        try:
            return self.codec.deserialize(MSG_TYPES[kind], payload)
        except SerdeError as err:
            self.endpoint.counters.dropped["malformed"] += 1
            self.drop_log("malformed", f"{kind} from {peer}: {err!r}")
            return None

    def diagnose(self) -> DiagnosticReport:
        """WARN while no peer is connected; counts of messages, drops and connection events."""
        counters = self.endpoint.counters
        peers = self.endpoint.peers()
        connected = [peer.name for peer in peers if peer.connected]
        level, message = OK, f"connected: {', '.join(connected)}"
        if not connected:
            level, message = WARN, "nothing connected: no hints cross the bridge"
        values = {"endpoint": self.endpoint.settings.endpoint, "connected": len(connected),
                  "peers": len(peers), "connects": counters.connects,
                  "disconnects": counters.disconnects,
                  "handshake_failures": counters.handshake_failures,
                  "rejected_keys": counters.rejected_keys,
                  "dropped": sum(counters.dropped.values())}
        for name, counter in (("sent", counters.sent), ("received", counters.received),
                              ("dropped", counters.dropped)):
            values.update({f"{name}.{key}": n for key, n in sorted(counter.items())})
        return DiagnosticReport(level, message, values)

    def close(self) -> None:
        self.endpoint.close()


def _key_path(p: dict[str, Any], name: str) -> Path:
    if not p[name]:
        raise ValueError(f"mode {p['mode']} needs the parameter {name} (see kb-ros keys)")
    return Path(p[name]).expanduser()


def open_bridge(backend: Backend, p: dict[str, Any]) -> BridgeRelay:
    """Build the bridge end ``p['mode']`` names; pyzmq is imported here and only here."""
    try:
        from kb_ros.transport import bridge_keys, curve_bridge
    except ImportError as err:
        raise RuntimeError(f"mode {p['mode']} needs pyzmq (pip install pyzmq, or apt install "
                           f"python3-zmq): {err}") from err
    settings = curve_bridge.BridgeSettings(p["bridge_address"], p["bridge_port"],
                                           p["queue_messages"], p["heartbeat_ms"],
                                           p["heartbeat_timeout_ms"])
    keys = bridge_keys.load_secret_key(_key_path(p, "secret_key"))
    log = backend.get_logger()
    if p["mode"] == "bridge_device":
        server_key = bridge_keys.load_public_key(_key_path(p, "server_public_key"))
        endpoint = curve_bridge.DeviceEndpoint(settings, keys, server_key, set(DOWNLINK), log)
        relay = BridgeRelay(backend, endpoint, p["tick_ms"])
        relay.relay(endpoint.workstation.name, "", UPLINK, DOWNLINK,
                    lambda kind, payload, latched: endpoint.send(kind, payload,
                                                                 latched=latched))
        log.info(f"ready: bridge to the workstation at {settings.endpoint}")
        return relay
    devices = sorted(bridge_keys.load_authorized_devices(
        _key_path(p, "authorized_keys_dir")).items(), key=lambda item: item[1])
    endpoint = curve_bridge.WorkstationEndpoint(settings, keys, dict(devices), set(UPLINK), log)
    relay = BridgeRelay(backend, endpoint, p["tick_ms"])
    for _, name in devices:
        relay.relay(name, f"{name}/", DOWNLINK, UPLINK,
                    lambda kind, payload, latched, name=name: endpoint.send(
                        name, kind, payload, latched=latched))
    log.info(f"ready: bridge listening on {settings.endpoint} for devices "
             f"{', '.join(name for _, name in devices)}")
    return relay


def make_link_node(backend: Backend) -> EmulatedLinkNode | BridgeRelay:
    """Declare the parameters, then build the mode they name."""
    p = declare_all(backend, PARAMS)
    if p["mode"] == "emulate":
        return EmulatedLinkNode(backend, p)
    return open_bridge(backend, p)


def main(argv: list[str] | None = None) -> None:
    run_node(make_link_node, "link_node", argv)


if __name__ == "__main__":
    main()
