"""``kb-ros keys``: make the CurveZMQ keys of the encrypted bridge and say what goes where."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_keys_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``keys`` subcommand to the ``kb-ros`` parser."""
    keys = sub.add_parser(
        "keys", help="make CurveZMQ keys for link_node's encrypted bridge",
        description="Make a workstation keypair (once) and a keypair per device, laid out in "
                    "one folder per machine. Secret keys are written with mode 0600.")
    keys.add_argument("--out", type=Path, required=True,
                      help="key folder (created; rerun with new --device names to add devices)")
    keys.add_argument("--device", action="append", required=True, metavar="NAME",
                      help="device name (repeatable); it becomes the device's namespace on "
                           "the workstation")
    keys.set_defaults(run=run_keys)


def run_keys(args: argparse.Namespace) -> int:
    """Create the keys and print where each folder goes and how link_node uses it."""
    from kb_ros.transport.bridge_keys import create_key_folders

    ws, devices = create_key_folders(args.out, args.device)
    ws_dir = ws.secret_key.parent
    print(f"workstation: copy {ws_dir}/ to the workstation (keep {ws.secret_key.name} "
          "private; it never leaves that machine), then run")
    print(f"  link_node --ros-args -p mode:=bridge_workstation "
          f"-p secret_key:={ws.secret_key} -p authorized_keys_dir:={ws.authorized_keys_dir}")
    print("  and one hint_node per device in <namespace>/<device> "
          "(bridge_address:=<interface address> to listen beyond this machine)")
    for device in devices:
        print(f"device {device.name}: copy {device.secret_key.parent}/ to the device, then run")
        print(f"  link_node --ros-args -p mode:=bridge_device -p secret_key:={device.secret_key} "
              f"-p server_public_key:={device.server_public_key} "
              "-p bridge_address:=<workstation address>")
    print(f"to revoke a device, delete its key from {ws.authorized_keys_dir} and restart the "
          "workstation's link_node")
    return 0
