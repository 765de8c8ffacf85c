"""
The encrypted bridge's connection: audio up, hints down, over one CurveZMQ connection per device.

A device connects a DEALER socket to the workstation's ROUTER socket. CURVE encrypts and
authenticates both ways: the device knows the workstation's public key, so an impostor cannot
answer; the workstation's ZAP handler accepts only device keys from its authorized-keys folder
and names each connection after its key file, so one workstation bridge serves several devices
and routes each one's hints back to it alone. Messages are two frames, ``[kind, payload]``;
the node chooses the kinds (topic names) and payloads (CDR bytes).

Both endpoints are polled from the node's spinning thread (``poll()`` on a timer; ``send()``
from subscription callbacks), so no node code runs concurrently; only pyzmq's ZAP thread runs
beside it, to check keys. libzmq's own heartbeats detect a dead or frozen peer, libzmq
reconnects on its own, and the monitor socket reports both, for the logs.

Queues stay short on purpose: a hint for audio that waited is useless to the device, so each
peer has an outbox of ``queue_messages`` that drops its *oldest* message when full (counted as
``stale``), and nothing is queued while the peer is away (``not_connected``). Latched kinds
(the ``*_info`` formats) are kept and re-sent on every (re)connection instead.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from kb_ros.transport.backend import Logger
from kb_ros.transport.bridge_keys import Keypair

PROTOCOL = b"kb_bridge/1"
HELLO = b"hello"  # a device's first message on every connection: the protocol version
ZAP_DOMAIN = "kb_ros"
MAX_MESSAGE_BYTES = 1 << 20  # libzmq drops a peer that sends more in one frame
RECEIVE_BATCH = 256  # messages taken per poll, so one poll stays short
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1000
LOG_EVERY = 100  # repeated connection failures: log the 1st, then every 100th
_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
           | zmq.EVENT_DISCONNECTED)
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


@dataclass(frozen=True)
class BridgeSettings:
    """Where the bridge connects or listens, and how it queues and watches its peers."""

    address: str  # device: the workstation's host; workstation: local address or interface
    port: int
    queue_messages: int = 8
    heartbeat_ivl_ms: int = 500
    heartbeat_timeout_ms: int = 2000
    auth_retry_s: float = 5.0  # libzmq never retries a rejected key itself

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.address}:{self.port}"


@dataclass
class BridgeCounters:
    """Messages by kind, drops by reason, connection events: the node's diagnostics."""

    sent: Counter = field(default_factory=Counter)
    received: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    connects: int = 0
    disconnects: int = 0
    handshake_failures: int = 0
    rejected_keys: int = 0


@dataclass(frozen=True)
class BridgeMessage:
    """A message from a peer: the peer's name (a device name, or ``workstation``)."""

    peer: str
    kind: str
    payload: bytes


class PeerChannel:
    """One peer: whether it is connected, its outbox (oldest dropped first), its latched kinds."""

    def __init__(self, name: str, max_queued: int) -> None:
        self.name = name
        self.connected = False
        self.routing_id: bytes | None = None  # the workstation's ROUTER address of a device
        self.outbox: deque[tuple[bytes, bytes]] = deque()
        self.max_queued = max_queued
        self.latched: dict[bytes, bytes] = {}
        self.latched_due = False


class _LogThrottle:
    """Counts occurrences per key; says when to log (the first, then every ``LOG_EVERY``-th)."""

    def __init__(self) -> None:
        self._seen: Counter = Counter()

    def __call__(self, key: object) -> int | None:
        self._seen[key] += 1
        n = self._seen[key]
        return n if n == 1 or n % LOG_EVERY == 0 else None


class BridgeEndpoint:
    """What both sides share: socket options, monitor events, outboxes, polling, closing."""

    def __init__(self, socket_type: int, settings: BridgeSettings, keys: Keypair,
                 accepted_kinds: set[str], logger: Logger) -> None:
        self.settings = settings
        self.counters = BridgeCounters()
        self.log = logger
        self._accepted_kinds = accepted_kinds
        self._throttle = _LogThrottle()
        self.context = zmq.Context()
        self.socket = self.context.socket(socket_type)
        sock = self.socket
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = settings.queue_messages
        sock.maxmsgsize = MAX_MESSAGE_BYTES
        sock.heartbeat_ivl = settings.heartbeat_ivl_ms
        sock.heartbeat_timeout = settings.heartbeat_timeout_ms
        sock.heartbeat_ttl = settings.heartbeat_timeout_ms
        sock.curve_publickey, sock.curve_secretkey = keys.public, keys.secret
        self.monitor = sock.get_monitor_socket(_EVENTS)

    def _open(self, attach: Callable[[str], None]) -> None:
        """Bind or connect to the settings' endpoint; a bad address is an OSError."""
        try:
            attach(self.settings.endpoint)
        except zmq.ZMQError as err:
            self.close()
            raise OSError(f"cannot use {self.settings.endpoint}: {err}") from err

    # -- sending --------------------------------------------------------------------------

    def _queue(self, channel: PeerChannel, kind: str, payload: bytes, latched: bool) -> None:
        key = kind.encode()
        if latched:
            channel.latched[key] = payload
            channel.latched_due = True
        elif not channel.connected:
            self.counters.dropped["not_connected"] += 1
            return
        else:
            if len(channel.outbox) >= channel.max_queued:
                channel.outbox.popleft()
                self.counters.dropped["stale"] += 1
            channel.outbox.append((key, payload))
        self._flush(channel)

    def _flush(self, channel: PeerChannel) -> None:
        """Send latched kinds if due, then the outbox, until the socket would block."""
        if not channel.connected:
            return
        if channel.latched_due:
            for key, payload in channel.latched.items():
                if not self._try_send(channel, key, payload):
                    return
            channel.latched_due = False
        while channel.outbox:
            key, payload = channel.outbox[0]
            if not self._try_send(channel, key, payload):
                return
            channel.outbox.popleft()

    def _try_send(self, channel: PeerChannel, key: bytes, payload: bytes) -> bool:
        try:
            self.socket.send_multipart(self._frames(channel, key, payload), zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as err:
            if err.errno != zmq.EHOSTUNREACH:  # the ROUTER no longer knows this device
                raise
            self._lost(channel, "its connection is gone")
            return False
        self.counters.sent[key.decode()] += 1
        return True

    def _frames(self, channel: PeerChannel, key: bytes, payload: bytes) -> list[bytes]:
        raise NotImplementedError

    # -- connection state -----------------------------------------------------------------

    def _connected(self, channel: PeerChannel) -> None:
        channel.connected = True
        channel.latched_due = True
        self.counters.connects += 1

    def _lost(self, channel: PeerChannel, why: str) -> None:
        """Forget a peer's connection: its queued messages are stale by the time it is back."""
        if not channel.connected:
            return
        channel.connected = False
        channel.routing_id = None
        self.counters.disconnects += 1
        if channel.outbox:
            self.counters.dropped["disconnected"] += len(channel.outbox)
            channel.outbox.clear()
        self.log.warning(f"{channel.name} disconnected ({why})")

    def _on_event(self, event: int, value: int) -> None:
        raise NotImplementedError

    def _handshake_failed(self, event: int, value: int, advice: str) -> None:
        self.counters.handshake_failures += 1
        n = self._throttle(event)
        if n:
            self.log.error(f"CurveZMQ handshake failed ({zmq.Event(event).name}, {value}; "
                           f"{n} so far): {advice}")

    # -- polling --------------------------------------------------------------------------

    def poll(self) -> list[BridgeMessage]:
        """Handle connection events, take what peers sent, retry queued sends. Never blocks."""
        while True:
            try:
                head, _endpoint = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            event, value = struct.unpack("=Hi", head)
            self._on_event(event, value)
        received = []
        for _ in range(RECEIVE_BATCH):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            message = self._parse(frames)
            if message is None:
                continue
            if message.kind not in self._accepted_kinds:
                self.counters.dropped["unknown_kind"] += 1
                continue
            self.counters.received[message.kind] += 1
            received.append(message)
        for channel in self.peers():
            self._flush(channel)
        return received

    def _parse(self, frames: list[zmq.Frame]) -> BridgeMessage | None:
        raise NotImplementedError

    def peers(self) -> list[PeerChannel]:
        raise NotImplementedError

    def close(self) -> None:
        """Close the sockets at once (queued messages are stale anyway) and the context."""
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)
        self.context.term()


class DeviceEndpoint(BridgeEndpoint):
    """The device side: connects to the workstation, reconnecting by itself when it is gone."""

    def __init__(self, settings: BridgeSettings, keys: Keypair, server_public_key: bytes,
                 accepted_kinds: set[str], logger: Logger) -> None:
        super().__init__(zmq.DEALER, settings, keys, accepted_kinds, logger)
        self.socket.curve_serverkey = server_public_key
        self.socket.immediate = 1  # never queue for a connection that is not up
        self.socket.reconnect_ivl = RECONNECT_IVL_MS
        self.socket.reconnect_ivl_max = RECONNECT_IVL_MAX_MS
        self.workstation = PeerChannel("workstation", settings.queue_messages)
        self.workstation.latched[HELLO] = PROTOCOL
        self._retry_at: float | None = None  # monotonic time to try a rejected key again
        self._open(self.socket.connect)

    def send(self, kind: str, payload: bytes, *, latched: bool = False) -> None:
        """Send to the workstation now, or queue it; ``latched`` kinds are re-sent on connect."""
        self._queue(self.workstation, kind, payload, latched)

    def _frames(self, channel: PeerChannel, key: bytes, payload: bytes) -> list[bytes]:
        return [key, payload]

    def peers(self) -> list[PeerChannel]:
        return [self.workstation]

    def poll(self) -> list[BridgeMessage]:
        """Also connect again once ``auth_retry_s`` after a rejection (it may be authorized)."""
        if self._retry_at is not None and time.monotonic() >= self._retry_at:
            self._retry_at = None
            with contextlib.suppress(zmq.ZMQError):  # libzmq may have dropped it already
                self.socket.disconnect(self.settings.endpoint)
            self.socket.connect(self.settings.endpoint)
        return super().poll()

    def _on_event(self, event: int, value: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._connected(self.workstation)
            self.log.info(f"connected to the workstation at {self.settings.endpoint} "
                          "(encrypted, authenticated)")
        elif event == zmq.EVENT_DISCONNECTED:
            self._lost(self.workstation, "connection closed or heartbeat timed out; hints "
                       "stop until it is back, reconnecting")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._retry_at = time.monotonic() + self.settings.auth_retry_s
            self._handshake_failed(event, value, "the workstation rejected this device's key "
                                   "(is its .key in the workstation's authorized_keys_dir?); "
                                   f"trying again every {self.settings.auth_retry_s:g} s")
        elif event & _HANDSHAKE_FAILED:
            self._handshake_failed(event, value, "is server_public_key the workstation's key?")

    def _parse(self, frames: list[zmq.Frame]) -> BridgeMessage | None:
        if len(frames) != 2:
            self.counters.dropped["malformed"] += 1
            return None
        return BridgeMessage(self.workstation.name, frames[0].bytes.decode(errors="replace"),
                             frames[1].bytes)


class _DeviceAuthenticator(ThreadAuthenticator):
    """ZAP handler: only authorized device keys get in, and each connection carries its name."""

    def __init__(self, context: zmq.Context, devices: dict[bytes, str],
                 on_reject: Callable[[bytes], None]) -> None:
        super().__init__(context)
        self._devices = devices
        self._on_reject = on_reject

    def callback(self, domain: str, key: bytes) -> bool:
        """Say whether a Z85 device key is authorized (credentials-provider hook, ZAP thread)."""
        if key in self._devices:
            return True
        self._on_reject(key)
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        """Name an accepted connection (its frames' ``User-Id``) after the device's key file."""
        return self._devices[z85.encode(client_public_key)]


class WorkstationEndpoint(BridgeEndpoint):
    """The workstation side: listens, accepts authorized devices, routes hints to each."""

    def __init__(self, settings: BridgeSettings, keys: Keypair, devices: dict[bytes, str],
                 accepted_kinds: set[str], logger: Logger) -> None:
        super().__init__(zmq.ROUTER, settings, keys, accepted_kinds, logger)
        self.devices = {name: PeerChannel(f"device {name}", settings.queue_messages)
                        for name in devices.values()}
        self._fd_device: dict[int, tuple[str, bytes]] = {}  # socket fd -> device, routing id
        self._reject_throttle = _LogThrottle()
        self.authenticator = _DeviceAuthenticator(self.context, devices, self._rejected)
        self.authenticator.start()
        self.authenticator.configure_curve_callback(ZAP_DOMAIN, self.authenticator)
        self.socket.curve_server = True
        self.socket.zap_domain = ZAP_DOMAIN.encode()
        self.socket.router_mandatory = 1  # unknown or gone device: an error, not a silent drop
        self._open(self.socket.bind)

    def send(self, device: str, kind: str, payload: bytes, *, latched: bool = False) -> None:
        """Send to ``device`` now, or queue it; ``latched`` kinds are re-sent on connect."""
        self._queue(self.devices[device], kind, payload, latched)

    def _frames(self, channel: PeerChannel, key: bytes, payload: bytes) -> list[bytes]:
        return [channel.routing_id, key, payload]

    def peers(self) -> list[PeerChannel]:
        return list(self.devices.values())

    def _rejected(self, key: bytes) -> None:
        """Log a refused device key (ZAP thread): first sight, then every LOG_EVERY-th."""
        self.counters.rejected_keys += 1
        n = self._reject_throttle(key)
        if n:
            self.log.warning(f"rejected a client: key {key.decode()} is not in the authorized "
                             f"keys ({n} rejections of this key so far)")

    def _on_event(self, event: int, value: int) -> None:
        if event == zmq.EVENT_DISCONNECTED:
            name, routing_id = self._fd_device.pop(value, (None, None))
            if name is not None and self.devices[name].routing_id == routing_id:
                self._lost(self.devices[name], "connection closed or heartbeat timed out")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.counters.handshake_failures += 1  # the ZAP handler logged the key
        elif event & _HANDSHAKE_FAILED:
            self._handshake_failed(event, value, "a client that does not know this "
                                   "workstation's key, or is not a kb_ros bridge")

    def _parse(self, frames: list[zmq.Frame]) -> BridgeMessage | None:
        name = frames[1].get("User-Id") if len(frames) == 3 else None
        channel = self.devices.get(name)
        if channel is None:
            self.counters.dropped["malformed"] += 1
            return None
        routing_id = frames[0].bytes
        if channel.routing_id != routing_id:  # a new connection of this device
            self._lost(channel, "replaced by a new connection")
            channel.routing_id = routing_id
            self._fd_device[frames[1].get(zmq.SRCFD)] = (name, routing_id)
            self._connected(channel)
            self.log.info(f"device {name} connected")
        if frames[1].bytes == HELLO:
            if frames[2].bytes != PROTOCOL and self._throttle((HELLO, name)):
                self.log.error(f"device {name} speaks {frames[2].bytes!r}, this workstation "
                               f"{PROTOCOL!r}: update one side")
            return None
        return BridgeMessage(name, frames[1].bytes.decode(errors="replace"), frames[2].bytes)

    def close(self) -> None:
        """Stop the ZAP thread, then close the sockets and the context."""
        self.authenticator.stop()
        super().close()
