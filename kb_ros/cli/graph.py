"""
Start kb_ros nodes as separate processes on loopback DDS and stop them cleanly.

What ``ros2 launch`` does under ROS 2, for the standalone backend: used by ``kb-ros demo`` and by
the multi-process tests, so both exercise the real executables.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

READY_MARK = "ready"


def renice(pid: int, nice: int) -> bool:
    """
    Set the niceness of every thread of a process (Linux keeps it per thread).

    Threads started later inherit it from their creator. False where it is not permitted (a
    negative value needs root or CAP_SYS_NICE) or the process is gone.
    """
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)
    except (OSError, AttributeError):
        return False
    return True


class NodeProcess:
    """One node executable in its own process, its log lines collected as they come."""

    def __init__(self, executable: str, name: str, namespace: str, params: dict[str, Any],
                 env: dict[str, str], log_path: Path | None = None, nice: int = 0) -> None:
        self.name = name
        self.executable, self.namespace, self.params = executable, namespace, dict(params)
        self.nice = nice
        argv = [sys.executable, "-m", f"kb_ros.nodes.{executable}", "--backend", "dds",
                "--ros-args", "-r", f"__ns:={namespace}", "-r", f"__node:={name}"]
        for key, value in params.items():
            argv += ["-p", f"{key}:={_ros_value(value)}"]
        self.lines: list[str] = []
        self.ready = False
        self._interrupted = False
        self._settled = threading.Event()  # ready, or the output ended
        self._log = open(log_path, "w") if log_path else None
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.niced = renice(self.proc.pid, nice) if nice else False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if self._log:
                self._log.write(line)
                self._log.flush()
            if f"]: {READY_MARK}" in line:
                self.ready = True
                self._settled.set()
        self._settled.set()

    def wait_ready(self, timeout_s: float) -> None:
        if not self._settled.wait(timeout_s) or not self.ready:
            tail = "\n".join(self.lines[-15:])
            raise RuntimeError(f"{self.name} did not start (exit {self.proc.poll()}):\n{tail}")

    def kill(self) -> int:
        """SIGKILL, as a crash or the OOM killer would: no clean shutdown; returns -9."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.stop()

    def interrupt(self) -> None:
        """Ask for a clean shutdown, as Ctrl-C would (once: a second Ctrl-C may abort)."""
        if self.proc.poll() is None and not self._interrupted:
            self._interrupted = True
            self.proc.send_signal(signal.SIGINT)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGINT, then SIGKILL if the process does not exit in time; returns its exit code."""
        if self.proc.poll() is None:
            self.interrupt()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=2.0)
        if self._log:
            self._log.close()
        return self.proc.returncode


def _ros_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class LocalGraph:
    """A set of node processes sharing one DDS domain on loopback; a context manager."""

    def __init__(self, domain_id: int, log_dir: Path | None = None) -> None:
        self.env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1")
        self.env.pop("CYCLONEDDS_URI", None)
        self.log_dir = log_dir
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
        self.nodes: dict[str, NodeProcess] = {}
        self.retired: list[NodeProcess] = []  # killed or replaced processes, oldest first

    def start(self, executable: str, name: str | None = None, namespace: str = "/kb",
              *, nice: int = 0, **params: Any) -> NodeProcess:
        """
        Start a node process with ROS parameters ``params``.

        ``nice`` below 0 raises its priority where permitted (``NodeProcess.niced`` says): a
        device runs its audio path at raised priority.
        """
        name = name or executable
        if name in self.nodes:
            self.retired.append(self.nodes.pop(name))
        generation = sum(node.name == name for node in self.retired)
        log_name = f"{name}.{generation + 1}.log" if generation else f"{name}.log"
        log_path = self.log_dir / log_name if self.log_dir else None
        node = NodeProcess(executable, name, namespace, params, self.env, log_path, nice)
        self.nodes[name] = node
        return node

    def kill(self, name: str) -> int:
        """SIGKILL one node (a crash); it stays in ``retired`` with its log lines."""
        node = self.nodes.pop(name)
        self.retired.append(node)
        return node.kill()

    def restart(self, name: str) -> NodeProcess:
        """Start a fresh process of a node with its executable, namespace and parameters."""
        old = self.nodes.get(name) or next(n for n in reversed(self.retired) if n.name == name)
        return self.start(old.executable, name, old.namespace, nice=old.nice, **old.params)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        for node in self.nodes.values():
            node.wait_ready(max(0.1, deadline - time.monotonic()))

    def stop(self) -> dict[str, int]:
        """Interrupt every node at once (replaced ones too), then collect the exit codes."""
        for node in [*self.retired, *self.nodes.values()]:
            node.interrupt()
        for node in self.retired:
            node.stop()
        return {name: node.stop() for name, node in self.nodes.items()}

    def __enter__(self) -> "LocalGraph":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
