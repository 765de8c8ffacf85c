"""
CurveZMQ key files for the encrypted bridge: made by ``kb-ros keys``, read by link_node.

One keypair for the workstation (the server), one per device (a client). The workstation
accepts exactly the device public keys in its authorized-keys folder, and a device's name is
its key file's name: ``robot1.key`` authorizes device ``robot1``, whose topics the workstation
bridge serves under ``robot1/``. Files are pyzmq's certificate format (``zmq.auth``), so
czmq/pyzmq tools read them too. Secret key files are created with mode 0600 and refused when
others can read them, as ssh does.

Layout written by ``create_key_folders(out, devices)`` (copy each folder to its machine)::

    out/workstation/server.key_secret          the workstation's secret key (0600)
    out/workstation/server.key                 its public key
    out/workstation/authorized_keys/<d>.key    each device's public key
    out/<d>/<d>.key_secret                     device <d>'s secret key (0600)
    out/<d>/<d>.key                            its public key
    out/<d>/server.key                         the workstation's public key
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq.auth
from zmq.utils import z85

WORKSTATION_DIR = "workstation"
SERVER_NAME = "server"
AUTHORIZED_DIR = "authorized_keys"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
DEVICE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # a ROS name token: used as a namespace


@dataclass(frozen=True)
class Keypair:
    """A CurveZMQ keypair, both keys Z85-encoded (40 characters) as libzmq takes them."""

    public: bytes
    secret: bytes


@dataclass(frozen=True)
class WorkstationKeyPaths:
    secret_key: Path
    authorized_keys_dir: Path


@dataclass(frozen=True)
class DeviceKeyPaths:
    name: str
    secret_key: Path
    server_public_key: Path


def workstation_paths(folder: Path) -> WorkstationKeyPaths:
    """Where the workstation's files lie in a folder laid out as ``out/workstation``."""
    return WorkstationKeyPaths(folder / f"{SERVER_NAME}{SECRET_SUFFIX}", folder / AUTHORIZED_DIR)


def device_paths(folder: Path, name: str) -> DeviceKeyPaths:
    """Where device ``name``'s files lie in a folder laid out as ``out/<name>``."""
    return DeviceKeyPaths(name, folder / f"{name}{SECRET_SUFFIX}",
                          folder / f"{SERVER_NAME}{PUBLIC_SUFFIX}")


def check_device_name(name: str) -> str:
    """Return ``name`` if it can name a device (a ROS namespace token), else raise ValueError."""
    if not DEVICE_NAME.fullmatch(name) or name in (WORKSTATION_DIR, SERVER_NAME):
        raise ValueError(f"device name {name!r} must match {DEVICE_NAME.pattern} and not be "
                         f"{WORKSTATION_DIR!r} or {SERVER_NAME!r}")
    return name


def _create_keypair(folder: Path, name: str) -> None:
    """Write ``name.key`` and ``name.key_secret``; the secret is never readable by others."""
    old_umask = os.umask(0o077)
    try:
        public_file, _ = zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(old_umask)
    os.chmod(public_file, 0o644)


def _make_private_dir(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)


def create_key_folders(out: Path,
                       devices: list[str]) -> tuple[WorkstationKeyPaths, list[DeviceKeyPaths]]:
    """
    Create (or extend) the key layout of the module docstring under ``out``.

    The workstation keypair is made once and reused, so devices can be added later; an
    existing device keypair is never overwritten (ValueError), since the workstation may
    already trust it.
    """
    for name in devices:
        check_device_name(name)
    if len(set(devices)) != len(devices):
        raise ValueError(f"device names repeat: {devices}")
    ws_dir = out / WORKSTATION_DIR
    ws = workstation_paths(ws_dir)
    for name in devices:
        if (out / name).exists() or (ws.authorized_keys_dir / f"{name}{PUBLIC_SUFFIX}").exists():
            raise ValueError(f"keys for device {name!r} already exist under {out}: remove them "
                             "first to replace them (and update the workstation's copy)")
    _make_private_dir(ws_dir)
    ws.authorized_keys_dir.mkdir(exist_ok=True)
    if not ws.secret_key.exists():
        _create_keypair(ws_dir, SERVER_NAME)
    server_public = ws_dir / f"{SERVER_NAME}{PUBLIC_SUFFIX}"
    made = []
    for name in devices:
        folder = out / name
        _make_private_dir(folder)
        _create_keypair(folder, name)
        shutil.copyfile(server_public, folder / server_public.name)
        shutil.copyfile(folder / f"{name}{PUBLIC_SUFFIX}",
                        ws.authorized_keys_dir / f"{name}{PUBLIC_SUFFIX}")
        made.append(device_paths(folder, name))
    return ws, made


def _checked(key: bytes | None, path: Path, what: str) -> bytes:
    """Return ``key`` if it is a Z85-encoded 32-byte CurveZMQ key, else raise ValueError."""
    try:
        if key is not None and len(z85.decode(key)) == 32:
            return key
    except (ValueError, KeyError, IndexError):
        pass
    raise ValueError(f"{path} holds no valid {what} (make keys with kb-ros keys)")


def load_secret_key(path: Path) -> Keypair:
    """Read this side's keypair from a ``.key_secret`` file; refuse one others can read."""
    if not path.is_file():
        raise ValueError(f"secret key file {path} does not exist (make keys with kb-ros keys)")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise ValueError(f"secret key file {path} is accessible by other users: "
                         f"chmod 600 {path}")
    public, secret = zmq.auth.load_certificate(path)
    return Keypair(_checked(public, path, "public key"),
                   _checked(secret, path, "secret key (is it a public .key file?)"))


def load_public_key(path: Path) -> bytes:
    """Read a public key (Z85) from a ``.key`` file."""
    if not path.is_file():
        raise ValueError(f"public key file {path} does not exist")
    try:
        public, _ = zmq.auth.load_certificate(path)
    except ValueError:
        public = None
    return _checked(public, path, "public key")


def load_authorized_devices(folder: Path) -> dict[bytes, str]:
    """
    Map each authorized device public key (Z85) to its device name, the file's stem.

    Raises ValueError for a missing or empty folder, a bad name or a key listed twice: a
    workstation that would silently accept nobody, or the wrong device, is misconfigured.
    """
    if not folder.is_dir():
        raise ValueError(f"authorized keys folder {folder} does not exist")
    devices: dict[bytes, str] = {}
    for path in sorted(folder.glob(f"*{PUBLIC_SUFFIX}")):
        name = check_device_name(path.stem)
        public = load_public_key(path)
        if public in devices:
            raise ValueError(f"{path} repeats the key of device {devices[public]!r}")
        devices[public] = name
    if not devices:
        raise ValueError(f"no device keys (*{PUBLIC_SUFFIX}) in {folder}: "
                         "add them with kb-ros keys")
    return devices
