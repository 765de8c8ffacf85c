"""
Hostile files and options at the front door: node executables and ``kb-ros`` commands.

Each must end with one clear line and a non-zero status (or a counted drop), never a traceback,
a hang or a half-written output in the way of the rerun. Found by an adversarial audit; each case
is the real executable in its own process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kb_ros.audio.pcm import AudioFormat, encode_pcm
from kb_ros.audio.wav import read_wav, write_wav
from kb_ros.bags.topics import offered_qos
from kb_ros.bags.writer import BagWriter
from kb_ros.models.checkpoint import save_model
from kb_ros.models.config import get_config
from kb_ros.models.model import StreamingModel
from kb_ros.resources import demo_sample_path
from kb_ros.transport.messages import AUDIO_INFO, AUDIO_STAMPED, AudioChunkMsg, AudioInfoMsg

T0 = 1_700_000_000 * 10**9


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROS_DOMAIN_ID": str(100 + os.getpid() % 90)}
    return subprocess.run([sys.executable, "-m", *args], text=True, capture_output=True,
                          timeout=timeout, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str, code: int = 2):
    """Check the status, no traceback, and the last line of stderr naming ``words``."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert all(word in last for word in words), result.stderr


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("wavs")
    mix, _ = read_wav(demo_sample_path("mix"))
    clean, _ = read_wav(demo_sample_path("clean"))
    return {"empty": write_wav(folder / "empty.wav", np.zeros(0, np.float32)),
            "short": write_wav(folder / "short.wav", mix[:100]),
            "silent": write_wav(folder / "silent.wav", np.zeros(16000, np.float32)),
            "mix": write_wav(folder / "mix.wav", mix[:16000]),
            "clean": write_wav(folder / "clean.wav", clean[:12000])}


def test_capture_node_ends_on_a_wav_without_audio(wavs):
    result = run("kb_ros.nodes.capture_node", "--ros-args", "-p", f"wav:={wavs['empty']}")
    assert_one_line_error(result, "holds no audio", code=1)


def test_a_damaged_checkpoint_stops_the_node_at_start(tmp_path):
    save_model(StreamingModel(get_config("small")), tmp_path / "model")
    (tmp_path / "model" / "manifest.json").write_text("[]")
    result = run("kb_ros.nodes.small_node", "--ros-args", "-p", f"model:={tmp_path / 'model'}",
                 "-p", "use_hints:=false")
    assert_one_line_error(result, "cannot start", str(tmp_path / "model"))


def test_playback_node_refuses_a_wav_it_could_never_write(tmp_path):
    result = run("kb_ros.nodes.playback_node", "--ros-args",
                 "-p", f"wav:={tmp_path / 'no_folder' / 'out.wav'}")
    assert_one_line_error(result, "does not exist")


def test_an_unknown_network_interface_is_named(tmp_path):
    result = run("kb_ros.nodes.link_node", "--dds-interface", "nonexist0")
    assert_one_line_error(result, "nonexist0", "lo")
    out = tmp_path / "rec"
    result = run("kb_ros.cli.main", "bag", "record", "-o", str(out), "--duration-s", "0.5",
                 "--dds-interface", "nonexist0")
    assert_one_line_error(result, "nonexist0")
    assert not out.exists()


def test_a_params_file_that_is_not_text_is_named(tmp_path):
    (tmp_path / "p.yaml").write_bytes(b"\xfa\xfb\x00")
    result = run("kb_ros.nodes.link_node", "--ros-args", "--params-file",
                 str(tmp_path / "p.yaml"))
    assert result.returncode == 2 and "not UTF-8" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,words", [
    (["make", "--start-s", "-5"], ["--start-s", "2147483647"]),
    (["make", "--start-s", "2147483647.99"], ["--start-s"]),
    (["make", "--start-s", "inf"], ["--start-s", "finite"]),
    (["make", "--block-frames", "0"], ["block size"]),
    (["make", "--topic", "bad topic"], ["--topic", "invalid topic name"]),
    (["record", "--duration-s", "nan"], ["--duration-s", "finite"]),
    (["record", "--duration-s", "-1"], ["duration_s"]),
])
def test_bad_bag_options_fail_before_writing(wavs, tmp_path, args, words):
    out = tmp_path / "out"
    extra = ["--mix", str(wavs["mix"])] if args[0] == "make" else []
    result = run("kb_ros.cli.main", "bag", *args, *extra, "-o", str(out))
    assert_one_line_error(result, *words)
    assert not out.exists()  # nothing in the way of the corrected rerun


@pytest.mark.parametrize("option", ["--link-delay-ms", "--jitter-ms"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_replay_options_are_named(tmp_path, option, value):
    result = run("kb_ros.cli.main", "bag", "replay", str(tmp_path), "-o", str(tmp_path / "o"),
                 option, value)
    assert_one_line_error(result, option, "finite")


@pytest.mark.parametrize("mix,ref,words", [
    ("empty", "clean", ["empty.wav", "0 samples"]),
    ("mix", "short", ["short.wav", "100 samples"]),
    ("mix", "silent", ["silent.wav", "silent"]),
    ("silent", "clean", ["silent.wav", "silent"]),
])
def test_eval_refuses_what_cannot_be_scored(wavs, mix, ref, words):
    result = run("kb_ros.cli.main", "eval", "--mix", str(wavs[mix]), "--ref", str(wavs[ref]))
    assert_one_line_error(result, *words)


@pytest.mark.timeout(300)
def test_eval_says_when_it_scores_the_shorter_file(wavs):
    result = run("kb_ros.cli.main", "eval", "--mix", str(wavs["mix"]), "--ref",
                 str(wavs["clean"]), "--json", timeout=240)
    assert result.returncode == 0, result.stderr
    assert "scoring the first 0.750 s" in result.stderr
    assert np.isfinite(json.loads(result.stdout)["si_snri_db"]["boosted"])


def test_bag_info_and_replay_count_only_what_replay_uses(tmp_path):
    """Every 10th block has no stamp and one holds NaN: counted as such, not as gaps."""
    fmt = AudioFormat()
    with BagWriter(tmp_path / "bag", "mcap") as writer:
        writer.add_topic("/kb/audio_info", AUDIO_INFO, offered_qos("/kb/audio_info"))
        writer.add_topic("/kb/audio", AUDIO_STAMPED, offered_qos("/kb/audio"))
        writer.write("/kb/audio_info", AudioInfoMsg(), 1)
        for k in range(60):
            stamp = 0 if k % 10 == 5 else T0 + k * 8_000_000
            block = np.full((128, 1), np.nan if k == 33 else 0.01, np.float32)
            payload = (block.astype("<f4").tobytes() if k == 33 else encode_pcm(block, fmt))
            writer.write("/kb/audio", AudioChunkMsg(stamp, payload), T0 + (k + 1) * 8_000_000)
    info = run("kb_ros.cli.main", "bag", "info", str(tmp_path / "bag"), "--json")
    assert info.returncode == 0, info.stderr
    audio = json.loads(info.stdout)["audio"]["/kb/audio"]
    assert (audio["bad_stamps"], audio["bad_payloads"]) == (6, 1)
    replay = run("kb_ros.cli.main", "bag", "replay", str(tmp_path / "bag"), "-o",
                 str(tmp_path / "out"), "--json", timeout=240)
    assert replay.returncode == 0, replay.stderr
    report = json.loads(replay.stdout)
    assert report["input_drops"] == {"bad_stamp": 6, "non_finite": 1}
    # each dropped block leaves a gap of one chunk (filled with silence), nothing else
    assert report["input_stamps"]["gaps"] == 7 and report["input_stamps"]["steps_back"] == 0
    assert report["input_stamps"]["missing_ms"] == pytest.approx(7 * 8.0)
