"""
No data lost on shutdown: a stopped small_node publishes what it had received.

A capture_node stopped mid-stream exits cleanly: its worker stops before the middleware closes.

A small_node process stopped by SIGINT or SIGTERM first publishes an ``enhanced`` chunk for
every input chunk it had received.

The peer sends chunks faster than the node can enhance them, so the signal finds many waiting
in the node's reader; without the drain on shutdown they would be lost. Real DDS between real
processes.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kb_ros.cli.graph import LocalGraph
from ros_peer import AudioPeer

CHUNK_NS = 8_000_000
T0 = 1_760_000_000 * 10**9 + 250_000_000


def domain_id(offset: int) -> int:
    return 1 + (os.getpid() * 11 + offset) % 200


def chunk(k: int) -> bytes:
    return np.full(128, 0.01 * (k % 30), "<f4").tobytes()


BURST_CHUNKS = 60


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_every_received_chunk_is_published_before_exit(tmp_path, sig):
    """
    Sixty chunks come back to back, far faster than the node enhances them, then the signal.

    More chunks come after it. Every chunk sent before the signal was received (loopback
    takes well under the 2 ms before it), so each must come out; later ones may or may not,
    but only in order.
    """
    dom = domain_id(int(sig))
    with LocalGraph(dom, log_dir=tmp_path) as graph:
        node = graph.start("small_node", use_hints=False)
        graph.wait_ready(120)
        peer = AudioPeer(dom)
        peer.wait_matched()
        peer.announce(peer.audio_info)
        time.sleep(0.3)
        sent = [T0 + k * CHUNK_NS for k in range(120)]
        before_signal = queued = 0
        for k, stamp in enumerate(sent):
            peer.send(peer.audio, stamp, chunk(k))
            if k + 1 == BURST_CHUNKS:
                time.sleep(0.002)
                before_signal = k + 1
                queued = before_signal - len(peer.enhanced.read(N=4096))
                node.proc.send_signal(sig)
            elif before_signal:
                time.sleep(0.001)
        stamps = peer.collect(before_signal, timeout_s=60)
        assert node.proc.wait(timeout=30) == 0, "\n".join(node.lines[-20:])
    assert queued > 10  # the node was behind: the signal found chunks waiting
    assert len(stamps) >= before_signal and stamps == sent[:len(stamps)]
    assert all(len(m.audio.data) == 512 for m in peer.received)
    assert not any("dropped input" in line for line in node.lines)


@pytest.mark.timeout(180)
def test_audio_waiting_for_its_format_is_published_before_exit(tmp_path):
    """No audio_info ever comes: the chunks held for it are decoded as the default at exit."""
    dom = domain_id(50)
    with LocalGraph(dom, log_dir=tmp_path) as graph:
        node = graph.start("small_node", use_hints=False)
        graph.wait_ready(120)
        peer = AudioPeer(dom)
        peer.wait_matched()
        sent = [T0 + k * CHUNK_NS for k in range(10)]  # fewer than the 32 held for a format
        for k, stamp in enumerate(sent):
            peer.send(peer.audio, stamp, chunk(k))
        time.sleep(0.5)
        assert peer.collect(0, timeout_s=0.2) == []  # still waiting for audio_info
        node.proc.send_signal(signal.SIGTERM)
        stamps = peer.collect(len(sent), timeout_s=60)
        assert node.proc.wait(timeout=30) == 0, "\n".join(node.lines[-20:])
    assert stamps == sent
    assert any("no audio_info yet: assuming F32LE" in line for line in node.lines)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_capture_node_stopped_mid_stream_exits_cleanly(sig):
    """
    Stop capture_node streaming 50 x faster than real time: a publish is under way at the signal.

    The worker must stop before the middleware closes: publishing on a closed writer raised
    ``DDS_RETCODE_BAD_PARAMETER`` and made the node exit with status 1.
    """
    proc = subprocess.Popen([sys.executable, "-m", "kb_ros.nodes.capture_node", "--ros-args",
                             "-p", "rate:=50.0", "-p", "loop:=true"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "ROS_DOMAIN_ID": str(domain_id(70))})
    deadline = time.monotonic() + 60
    for line in proc.stdout:  # streaming starts once the file is open
        if "opened" in line or time.monotonic() > deadline:
            break
    time.sleep(0.5)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "capture failed" not in out and "Traceback" not in out
