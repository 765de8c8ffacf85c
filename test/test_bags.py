"""
Bags: make -> info -> replay -> score for mcap and sqlite3, and what can go wrong on the way.

Also determinism, a bag from an independent writer, gaps and odd block sizes, corrupt and
truncated bags, and a killed recorder.

The models are tiny random checkpoints made here: these tests check the plumbing (stamps, chunk
counts, formats, errors), not enhancement quality, and must not depend on the shipped weights.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from rosbags.rosbag2 import Writer

from kb_ros.audio.clock import NS_PER_S, ChunkClock
from kb_ros.audio.pcm import AudioFormat, decode_pcm, encode_pcm
from kb_ros.audio.wav import read_wav, resample, write_wav
from kb_ros.bags.convert import make_typestore
from kb_ros.bags.errors import BagError
from kb_ros.bags.reader import BagReader
from kb_ros.bags.replay import ReplayOptions, replay_bag
from kb_ros.bags.topics import info_topic, offered_qos
from kb_ros.bags.writer import BagWriter
from kb_ros.models.checkpoint import save_model
from kb_ros.models.config import get_config
from kb_ros.models.model import StreamingModel
from kb_ros.resources import demo_sample_path
from kb_ros.transport.messages import AUDIO_INFO, AUDIO_STAMPED, AudioChunkMsg, AudioInfoMsg
from kb_ros.transport.qos import QosSpec, Reliability

RATE = 16000
NS_PER_FRAME = NS_PER_S // RATE  # 62500: stamps of whole samples are exact
START_SAMPLE = 1_700_000_000 * RATE + 37  # an epoch-like first sample, off the 128 grid
N_FRAMES = 188 * 128


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Make a random hint producer and a random kb model that accepts its hints."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    large = StreamingModel(get_config("large", emb_dim=16, lstm_hidden=16, attn_heads=2))
    large_id = save_model(large, folder / "large")["model_id"]
    save_model(StreamingModel(get_config("kb")), folder / "kb",
               recipe={"hint_producers": [large_id]})
    return {"model": str(folder / "kb"), "large_model": str(folder / "large")}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, Path]:
    """188 chunks (1.5 s) of the shipped demo mixture and its clean reference."""
    folder = tmp_path_factory.mktemp("sample")
    return {kind: write_wav(folder / f"{kind}.wav", read_wav(demo_sample_path(kind))[0][:N_FRAMES])
            for kind in ("mix", "clean")}


def kb_ros(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kb_ros.cli.main", "bag", *args], text=True,
                          capture_output=True, timeout=timeout)


def topic_messages(bag: Path, topic: str) -> list:
    with BagReader(bag) as reader:
        return [msg for _, _, msg in reader.messages([topic])]


def write_audio_bag(path: Path, topic: str, blocks: list[tuple[int, np.ndarray]],
                    fmt: AudioFormat, storage: str = "mcap",
                    info: AudioInfoMsg | None = None) -> None:
    """
    Write a bag of ``(first sample index, audio)`` blocks, stamped from the sample index.

    ``info`` replaces the ``audio_info`` message that announces ``fmt``.
    """
    with BagWriter(path, storage) as writer:
        writer.add_topic(info_topic(topic), AUDIO_INFO, offered_qos(info_topic(topic)))
        writer.add_topic(topic, AUDIO_STAMPED, offered_qos(topic))
        writer.write(info_topic(topic), info or AudioInfoMsg.from_format(fmt), 1)
        for first, audio in blocks:
            stamp = first * NS_PER_S // fmt.sample_rate
            writer.write(topic, AudioChunkMsg(stamp, encode_pcm(audio, fmt), "mic"),
                         (first + len(audio)) * NS_PER_S // fmt.sample_rate)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_make_info_replay_score_round_trip(storage, models, sample, tmp_path):
    made = kb_ros("make", "--mix", str(sample["mix"]), "--ref", str(sample["clean"]),
                  "-o", str(tmp_path / "in"), "--storage", storage, "--start-s", "1700000000",
                  "--json")
    assert made.returncode == 0, made.stderr
    n_chunks = N_FRAMES // 128
    assert json.loads(made.stdout)["blocks"] == n_chunks
    assert (tmp_path / "in" / f"in.{'mcap' if storage == 'mcap' else 'db3'}").exists()
    assert "version: 8" in (tmp_path / "in" / "metadata.yaml").read_text()

    info = kb_ros("info", str(tmp_path / "in"), "--json")
    assert info.returncode == 0, info.stderr
    info = json.loads(info.stdout)
    counts = {t["name"]: t["count"] for t in info["topics"]}
    assert counts == {"/kb/audio": n_chunks, "/kb/audio_info": 1, "/kb/reference": n_chunks,
                      "/kb/reference_info": 1}
    qos = {t["name"]: t["qos"] for t in info["topics"]}
    assert qos["/kb/audio_info"] == ["reliable/transient_local/depth 1"]
    assert qos["/kb/audio"] == ["reliable/volatile/depth 32"]
    audio = info["audio"]["/kb/audio"]
    assert audio["format"]["sample_format"] == "F32LE" and audio["block_frames"] == [128, 128]
    assert audio["gaps"] == 0 and audio["steps_back"] == 0
    assert audio["audio_s"] == pytest.approx(n_chunks * 128 / RATE)

    replay = kb_ros("replay", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--fast",
                    "--storage", storage, "--link-delay-ms", "24", "--json",
                    "--model", models["model"], "--large-model", models["large_model"])
    assert replay.returncode == 0, replay.stderr
    report = json.loads(replay.stdout)
    assert report["input_chunks"] == report["enhanced_chunks"] == n_chunks
    assert report["reference_topic"] == "/kb/reference"
    assert set(report["si_snri_db"]) == {"boosted", "large"}
    assert all(np.isfinite(v) for v in report["si_snri_db"].values())
    # 24 ms each way = 6 chunks: from the 7th chunk on, every chunk gets a 6-chunk-old hint.
    assert report["hints"]["age_histogram"] == {"6": n_chunks - 6}
    assert report["stamp_to_output_ms"]["p50"] >= 8.0

    inputs = topic_messages(tmp_path / "in", "/kb/audio")
    enhanced = topic_messages(tmp_path / "out", "/kb/enhanced")
    assert [m.stamp_ns for m in enhanced] == [m.stamp_ns for m in inputs]
    hints = topic_messages(tmp_path / "out", "/kb/hints")
    assert {m.stamp_ns for m in hints} <= {m.stamp_ns for m in inputs}
    assert topic_messages(tmp_path / "out", "/kb/hint_info")[0].coding_format.startswith(
        "wave;kb_hint=1;model=large-")
    assert topic_messages(tmp_path / "out", "/diagnostics")[-1].status[0].values["chunks"] \
        == str(n_chunks)
    assert "hint hit rate" in kb_ros("replay", str(tmp_path / "in"), "-o",
                                     str(tmp_path / "out2"), "--model", models["model"],
                                     "--large-model", models["large_model"]).stdout


def test_fast_replays_are_bit_identical(models, sample, tmp_path):
    from kb_ros.bags.make import STYLES, MakeOptions, make_bag

    make_bag(MakeOptions(sample["mix"], tmp_path / "in", style=STYLES["audio_capture"]))
    outputs = []
    for run in ("a", "b"):
        opts = ReplayOptions(tmp_path / "in", tmp_path / run, audio_topic="/audio/audio_stamped",
                             **models)
        outputs.append((replay_bag(opts)["enhanced_sha256"],
                        [(m.stamp_ns, m.data) for m in topic_messages(tmp_path / run,
                                                                      "/kb/enhanced")]))
    assert outputs[0] == outputs[1]
    assert len(outputs[0][1]) == N_FRAMES // 128
    # Real time only paces the chunks: hint arrival is modelled from stamps either way.
    t0 = time.monotonic()
    realtime = replay_bag(ReplayOptions(tmp_path / "in", tmp_path / "rt", realtime=True,
                                        audio_topic="/audio/audio_stamped", **models))
    assert time.monotonic() - t0 >= N_FRAMES / RATE - 0.01
    assert realtime["enhanced_sha256"] == outputs[0][0]


def test_bag_from_an_independent_mcap_writer_replays(models, tmp_path):
    """mcap_ros2 encodes CDR itself and stores no QoS and no metadata.yaml: a bare .mcap."""
    from mcap_ros2.writer import Writer as McapRos2Writer

    sep = "=" * 80 + "\n"
    stamped = (f"std_msgs/Header header\naudio_common_msgs/AudioData audio\n{sep}"
               f"MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n{sep}"
               f"MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n{sep}"
               f"MSG: audio_common_msgs/AudioData\nuint8[] data\n")
    info = ("uint8 channels\nuint32 sample_rate\nstring sample_format\nuint32 bitrate\n"
            "string coding_format\n")
    audio = (np.random.default_rng(1).standard_normal((128 * 60, 1)) * 0.1).astype(np.float32)
    fmt = AudioFormat(sample_format="S16LE")
    path = tmp_path / "independent.mcap"
    with path.open("wb") as f:
        writer = McapRos2Writer(f)
        info_schema = writer.register_msgdef("audio_common_msgs/msg/AudioInfo", info)
        audio_schema = writer.register_msgdef("audio_common_msgs/msg/AudioDataStamped", stamped)
        writer.write_message("/kb/audio_info", info_schema, {
            "channels": 1, "sample_rate": RATE, "sample_format": "S16LE", "bitrate": 256000,
            "coding_format": "wave"}, log_time=1)
        for k in range(60):
            stamp = 1_700_000_000 * NS_PER_S + k * 8_000_000
            sec, nanosec = divmod(stamp, NS_PER_S)
            writer.write_message("/kb/audio", audio_schema, {
                "header": {"stamp": {"sec": sec, "nanosec": nanosec}, "frame_id": "mic"},
                "audio": {"data": encode_pcm(audio[k * 128:(k + 1) * 128], fmt)}},
                log_time=stamp + 8_000_000)
        writer.finish()

    info_out = kb_ros("info", str(path), "--json")
    assert info_out.returncode == 0, info_out.stderr
    assert json.loads(info_out.stdout)["audio"]["/kb/audio"]["format"]["sample_format"] == "S16LE"
    report = replay_bag(ReplayOptions(path, tmp_path / "out", **models))
    assert report["input_chunks"] == report["enhanced_chunks"] == 60
    assert report["input_drops"] == {}
    replayed = topic_messages(tmp_path / "out", "/kb/audio")
    np.testing.assert_array_equal(
        np.concatenate([decode_pcm(m.data, AudioFormat()) for m in replayed]),
        decode_pcm(encode_pcm(audio, fmt), fmt))


def test_publish_time_stamps_replay_whole_with_a_wider_stamp_tolerance(
        models, sample, tmp_path):
    """
    A driver that stamps 10 ms buffers when it publishes them: stamps late by 0-12 ms at random.

    At the default 5 ms tolerance such jitter reads as gaps and steps back (counted, blocks
    dropped); at 30 ms every block continues the stream and the audio arrives whole.
    """
    mix = read_wav(sample["mix"])[0][:150 * 160]
    late_ns = np.random.default_rng(3).uniform(0, 12e6, 150).astype(np.int64)
    bag = tmp_path / "publish_time"
    with BagWriter(bag, "mcap") as writer:
        writer.add_topic("/kb/audio", AUDIO_STAMPED, offered_qos("/kb/audio"))
        writer.add_topic("/kb/audio_info", AUDIO_INFO, offered_qos("/kb/audio_info"))
        writer.write("/kb/audio_info", AudioInfoMsg.from_format(AudioFormat()), 1)
        for k in range(150):
            stamp = (START_SAMPLE + 160 * k) * NS_PER_FRAME + int(late_ns[k])
            writer.write("/kb/audio", AudioChunkMsg(stamp, encode_pcm(
                mix[k * 160:(k + 1) * 160], AudioFormat())), stamp + 1)
    strict = replay_bag(ReplayOptions(bag, tmp_path / "strict", **models))
    assert sum(strict["input_drops"].values()) > 0
    report = replay_bag(ReplayOptions(bag, tmp_path / "wide", stamp_tolerance_ms=30.0, **models))
    assert report["input_drops"] == {}
    heard = np.concatenate([decode_pcm(m.data, AudioFormat())[:, 0]
                            for m in topic_messages(tmp_path / "wide", "/kb/audio")])
    start = int(np.argmax(np.correlate(heard[:400], mix[:200, 0], "valid")))
    np.testing.assert_array_equal(heard[start:start + 149 * 160 - 256],
                                  mix[:149 * 160 - 256, 0])


def test_a_ros1_bag_of_audio_capture_replays(models, sample, tmp_path):
    """ROS 1's audio_capture: 160-frame S16LE AudioDataStamped (Header with seq) in a .bag."""
    from rosbags.rosbag1 import Writer as Ros1Writer
    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    store = get_typestore(Stores.ROS1_NOETIC)
    store.register({**get_types_from_msg("uint8[] data\n", "audio_common_msgs/msg/AudioData"),
                    **get_types_from_msg("Header header\naudio_common_msgs/AudioData audio\n",
                                         AUDIO_STAMPED),
                    **get_types_from_msg("uint8 channels\nuint32 sample_rate\nstring "
                                         "sample_format\nuint32 bitrate\nstring "
                                         "coding_format\n", AUDIO_INFO)})
    types = store.types
    mix = read_wav(sample["mix"])[0][:75 * 160]
    fmt = AudioFormat(sample_format="S16LE")
    path = tmp_path / "robot.bag"
    writer = Ros1Writer(path)
    writer.open()
    info = writer.add_connection("/audio/audio_info", AUDIO_INFO, typestore=store, latching=1)
    audio = writer.add_connection("/audio/audio_stamped", AUDIO_STAMPED, typestore=store)
    writer.write(info, 1, store.serialize_ros1(types[AUDIO_INFO](
        channels=1, sample_rate=RATE, sample_format="S16LE", bitrate=256000,
        coding_format="wave"), AUDIO_INFO))
    for k in range(75):
        sec, nanosec = divmod((START_SAMPLE + 160 * k) * NS_PER_FRAME, NS_PER_S)
        msg = types[AUDIO_STAMPED](
            header=types["std_msgs/msg/Header"](
                seq=k, stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                frame_id="mic"),
            audio=types["audio_common_msgs/msg/AudioData"](data=np.frombuffer(
                encode_pcm(mix[k * 160:(k + 1) * 160], fmt), np.uint8)))
        writer.write(audio, 2 + k, store.serialize_ros1(msg, AUDIO_STAMPED))
    writer.close()
    report = replay_bag(ReplayOptions(path, tmp_path / "out", audio_topic="/audio/audio_stamped",
                                      **models))
    assert report["input_drops"] == {} and report["enhanced_chunks"] >= 92
    heard = np.concatenate([decode_pcm(m.data, AudioFormat())[:, 0]
                            for m in topic_messages(tmp_path / "out", "/kb/audio")])
    start = START_SAMPLE % 128  # the first chunk, on the absolute grid, begins this far before
    np.testing.assert_allclose(heard[start:start + 90 * 128], mix[:90 * 128, 0],
                               atol=1 / 32767)


def test_audio_types_without_a_definition_in_the_bag_use_ours(models, tmp_path):
    """
    rosbag2 stores an empty definition for a type it cannot find on the recording machine.

    Here the audio topics have none while another topic has a full one (which stops rosbags
    from falling back to its defaults on its own); kb_ros's audio_common_msgs fill the gap.
    """
    from mcap.writer import Writer as McapWriter

    store = make_typestore()
    fmt = AudioFormat(sample_format="S16LE")
    audio = (np.random.default_rng(2).standard_normal((128 * 20, 1)) * 0.1).astype(np.float32)
    path = tmp_path / "no_audio_definitions.mcap"
    with path.open("wb") as f:
        writer = McapWriter(f)
        writer.start("ros2", "")
        channels = {}
        for topic, msgtype, definition in (("/kb/audio", AUDIO_STAMPED, ""),
                                           ("/kb/audio_info", AUDIO_INFO, ""),
                                           ("/note", "std_msgs/msg/String", "string data\n")):
            schema = writer.register_schema(msgtype, "ros2msg" if definition else "",
                                            definition.encode())
            channels[topic] = writer.register_channel(topic, "cdr", schema)

        def write(topic: str, msgtype: str, msg: object, time_ns: int) -> None:
            writer.add_message(channels[topic], log_time=time_ns, publish_time=time_ns,
                               data=bytes(store.serialize_cdr(msg, msgtype)))

        write("/note", "std_msgs/msg/String", store.types["std_msgs/msg/String"](data="hi"), 1)
        write("/kb/audio_info", AUDIO_INFO, store.types[AUDIO_INFO](
            channels=1, sample_rate=RATE, sample_format="S16LE", bitrate=256000,
            coding_format="wave"), 2)
        for k in range(20):
            sec, nanosec = divmod((START_SAMPLE + 128 * k) * NS_PER_FRAME, NS_PER_S)
            write("/kb/audio", AUDIO_STAMPED, store.types[AUDIO_STAMPED](
                header=store.types["std_msgs/msg/Header"](
                    stamp=store.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                    frame_id="mic"),
                audio=store.types["audio_common_msgs/msg/AudioData"](
                    data=np.frombuffer(encode_pcm(audio[k * 128:(k + 1) * 128], fmt),
                                       np.uint8))), 3 + k)
        writer.finish()

    info_out = kb_ros("info", str(path), "--json")
    assert info_out.returncode == 0, info_out.stderr
    assert json.loads(info_out.stdout)["audio"]["/kb/audio"]["blocks"] == 20
    report = replay_bag(ReplayOptions(path, tmp_path / "out", **models))
    assert report["input_drops"] == {} and report["enhanced_chunks"] >= 19


def test_a_same_named_audio_info_of_another_package_is_named_as_such(tmp_path):
    """mgonzs13/audio_common ships an AudioInfo of other fields under the same type name."""
    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    store = get_typestore(Stores.EMPTY)
    store.register(get_types_from_msg("int32 format\nint32 channels\nint32 rate\nint32 chunk\n",
                                      AUDIO_INFO))
    bag = tmp_path / "other_audio_info"
    ours = make_typestore()
    with Writer(bag, version=8) as writer:
        info = writer.add_connection("/audio/audio_info", AUDIO_INFO, typestore=store)
        audio = writer.add_connection("/audio/audio_stamped", AUDIO_STAMPED, typestore=ours)
        writer.write(info, 1, store.serialize_cdr(store.types[AUDIO_INFO](
            format=8, channels=1, rate=16000, chunk=512), AUDIO_INFO))
        writer.write(audio, 2, ours.serialize_cdr(ours.types[AUDIO_STAMPED](
            header=ours.types["std_msgs/msg/Header"](
                stamp=ours.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0),
                frame_id="mic"),
            audio=ours.types["audio_common_msgs/msg/AudioData"](
                data=np.zeros(256, np.uint8))), AUDIO_STAMPED))
    result = kb_ros("info", str(bag))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "has the fields ['format', 'channels', 'rate', 'chunk']" in result.stderr
    assert "corrupt" not in result.stderr
    wrong_topic = kb_ros("replay", str(bag), "-o", str(tmp_path / "out"), "--audio-topic",
                         "/audio/audio_info")
    assert wrong_topic.returncode == 2
    assert "topics: ['/audio/audio_stamped']" in wrong_topic.stderr


def test_odd_blocks_with_gaps_give_one_output_chunk_per_grid_chunk(models, tmp_path):
    """audio_capture-like S16LE blocks of odd sizes from an off-grid start, three lost."""
    sizes = [160, 97, 211] * 40
    firsts = START_SAMPLE + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rng = np.random.default_rng(2)
    blocks = [(int(first), (rng.standard_normal((n, 1)) * 0.1).astype(np.float32))
              for first, n in zip(firsts, sizes)]
    lost = {20, 21, 77}
    kept = [b for k, b in enumerate(blocks) if k not in lost]
    fmt = AudioFormat(sample_format="S16LE")
    write_audio_bag(tmp_path / "in", "/audio/audio_stamped", kept, fmt)

    info = kb_ros("info", str(tmp_path / "in"), "--json")
    stamps = json.loads(info.stdout)["audio"]["/audio/audio_stamped"]
    assert (stamps["gaps"], stamps["block_frames"]) == (2, [97, 211])
    lost_frames = sum(sizes[k] for k in lost)
    assert stamps["missing_ms"] == pytest.approx(lost_frames / RATE * 1e3)

    report = replay_bag(ReplayOptions(tmp_path / "in", tmp_path / "out",
                                      audio_topic="/audio/audio_stamped", **models))
    # Chunks lie on the absolute 128-frame grid; lost blocks are silence, not shifted audio.
    end = int(firsts[-1]) + sizes[-1]
    grid = range(START_SAMPLE // 128, end // 128)
    expected_stamps = [ChunkClock(0).stamp_ns(j) for j in grid]
    enhanced = topic_messages(tmp_path / "out", "/kb/enhanced")
    assert [m.stamp_ns for m in enhanced] == expected_stamps
    assert report["input_chunks"] == report["enhanced_chunks"] == len(grid)
    assert report["input_stamps"]["gaps"] == 2

    truth = np.zeros(end - grid[0] * 128, np.float32)
    for first, audio in kept:
        truth[first - grid[0] * 128:][:len(audio)] = decode_pcm(encode_pcm(audio, fmt), fmt)[:, 0]
    seen = np.concatenate([decode_pcm(m.data, AudioFormat())[:, 0]
                           for m in topic_messages(tmp_path / "out", "/kb/audio")])
    np.testing.assert_array_equal(seen, truth[:len(seen)])


def test_missing_chunks_of_our_own_topic_keep_their_stamps(models, tmp_path):
    chunks = [(START_SAMPLE + 128 * k, np.full((128, 1), 0.01 * (k % 7), np.float32))
              for k in range(80) if k not in (10, 11, 40)]
    write_audio_bag(tmp_path / "in", "/kb/audio", chunks, AudioFormat(), storage="sqlite3")
    report = replay_bag(ReplayOptions(tmp_path / "in", tmp_path / "out", **models))
    enhanced = topic_messages(tmp_path / "out", "/kb/enhanced")
    assert [m.stamp_ns for m in enhanced] == [first * NS_PER_FRAME for first, _ in chunks]
    assert report["input_stamps"]["gaps"] == 2
    assert report["hints"]["invalid_total"] == 0


def test_stray_stamps_do_not_blow_up_scoring(models, tmp_path):
    """
    A reference block stamped near the epoch and one near 2038, and an input restart in 2038.

    Scores cover the input's own stamps: the strays change nothing, the restart is scored as
    its own run instead of an axis of the decades between (tebibytes: MemoryError).
    """
    rng = np.random.default_rng(4)
    blocks = {topic: [(START_SAMPLE + 128 * k, (0.1 * rng.standard_normal((128, 1))).astype(
        np.float32)) for k in range(60)] for topic in ("/kb/audio", "/kb/reference")}
    late = 2_100_000_000 * RATE  # in 2036, still an int32 second
    strays = {"/kb/audio": [(late + 128 * k, blocks["/kb/audio"][k][1]) for k in range(5)],
              "/kb/reference": [(1, blocks["/kb/reference"][0][1]),
                                (late + 128 * 9, blocks["/kb/reference"][1][1])]}
    scores = []
    for name, extra in (("clean", {}), ("stray_refs", {"/kb/reference": strays["/kb/reference"]}),
                        ("restart", strays)):
        with BagWriter(tmp_path / name, "mcap") as writer:
            for topic in ("/kb/audio", "/kb/reference"):
                writer.add_topic(info_topic(topic), AUDIO_INFO, offered_qos(info_topic(topic)))
                writer.add_topic(topic, AUDIO_STAMPED, offered_qos(topic))
                writer.write(info_topic(topic), AudioInfoMsg(), 1)
                for first, audio in blocks[topic] + extra.get(topic, []):
                    stamp = first * NS_PER_FRAME
                    writer.write(topic, AudioChunkMsg(stamp, encode_pcm(audio, AudioFormat())),
                                 stamp + 128 * NS_PER_FRAME)
        report = replay_bag(ReplayOptions(tmp_path / name, tmp_path / f"out_{name}", **models))
        assert report["reference_topic"] == "/kb/reference"
        assert all(np.isfinite(v) for v in report["si_snri_db"].values()), report["si_snri_db"]
        scores.append(report["si_snri_db"])
    assert scores[1] == scores[0]
    assert report["input_stamps"]["gaps"] == 1 and report["enhanced_chunks"] == 60 + 3


def test_audio_in_a_format_replay_cannot_use_fails_clearly(models, tmp_path):
    """
    Refuse a bag of audio_capture's default mp3 coding: its only audio_info is unusable.

    Decoding it as the default F32LE 16 kHz would replay noise. A bad info after a good one is
    only counted (as small_node does): the stream keeps the good format.
    """
    audio = [(START_SAMPLE + 160 * k, np.full((160, 1), 0.01, np.float32)) for k in range(40)]
    write_audio_bag(tmp_path / "mp3", "/audio/audio_stamped", audio,
                    AudioFormat(sample_format="S16LE"),
                    info=AudioInfoMsg(sample_format="S16LE", coding_format="mp3"))
    result = kb_ros("replay", str(tmp_path / "mp3"), "-o", str(tmp_path / "out_mp3"),
                    "--audio-topic", "/audio/audio_stamped", "--model", models["model"],
                    "--large-model", models["large_model"])
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert str(tmp_path / "mp3") in result.stderr and "mp3" in result.stderr
    assert not (tmp_path / "out_mp3").exists()  # no half-written bag in the way of a rerun

    with BagWriter(tmp_path / "late_bad_info", "mcap") as writer:
        writer.add_topic("/kb/audio_info", AUDIO_INFO, offered_qos("/kb/audio_info"))
        writer.add_topic("/kb/audio", AUDIO_STAMPED, offered_qos("/kb/audio"))
        writer.write("/kb/audio_info", AudioInfoMsg(sample_format="S16LE"), 1)
        for k, (first, block) in enumerate(audio):
            if k == 20:
                writer.write("/kb/audio_info", AudioInfoMsg(sample_rate=44101), first * 62500)
            writer.write("/kb/audio", AudioChunkMsg(first * NS_PER_FRAME, encode_pcm(
                block, AudioFormat(sample_format="S16LE"))), (first + 160) * NS_PER_FRAME)
    report = replay_bag(ReplayOptions(tmp_path / "late_bad_info", tmp_path / "out_late",
                                      **models))
    assert report["input_drops"] == {} and report["enhanced_chunks"] == 40 * 160 // 128
    assert len(report["format_errors"]) == 1


def test_a_48khz_bag_replays_one_chunk_per_8_ms_block(models, sample, tmp_path):
    """
    A robot's 48 kHz microphone recorded in 8 ms S16LE blocks: replay converts it to 16 kHz.

    Every block gives one enhanced chunk with the block's stamp, and the replayed input is the
    recording at 16 kHz, 10 samples later (the converter's 0.625 ms group delay).
    """
    mix = read_wav(sample["mix"])[0][:60 * 128]
    mix48 = resample(mix, 16000, 48000)
    fmt = AudioFormat(sample_rate=48000, sample_format="S16LE")
    blocks = [(3 * START_SAMPLE + 384 * k, mix48[384 * k:384 * (k + 1)]) for k in range(60)]
    write_audio_bag(tmp_path / "48k", "/audio/audio_stamped", blocks, fmt)
    out = tmp_path / "out_48k"
    result = kb_ros("replay", str(tmp_path / "48k"), "-o", str(out), "--json",
                    "--audio-topic", "/audio/audio_stamped", "--model", models["model"],
                    "--large-model", models["large_model"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["input_drops"] == {} and report["enhanced_chunks"] == 60
    stamps = [(START_SAMPLE + 128 * k) * NS_PER_FRAME for k in range(60)]
    assert [m.stamp_ns for m in topic_messages(out, "/kb/enhanced")] == stamps
    heard = np.concatenate([decode_pcm(m.data, AudioFormat())[:, 0]
                            for m in topic_messages(out, "/kb/audio")])
    error = heard[10 + 64:] - mix[64:-10, 0]
    assert 10 * np.log10(np.sum(mix[64:-10, 0] ** 2) / np.sum(error ** 2)) > 35


def write_s16_bag(path: Path, mix: np.ndarray, info: AudioInfoMsg | None = None,
                  info_topic: str = "/kb/audio_info", info_after_blocks: int = 0) -> None:
    """
    Write ``/kb/audio`` in S16LE, 128-frame blocks from ``START_SAMPLE``.

    ``info`` (if any) goes on ``info_topic``, recorded after the first ``info_after_blocks``
    blocks.
    """
    with BagWriter(path, "mcap") as writer:
        writer.add_topic("/kb/audio", AUDIO_STAMPED, offered_qos("/kb/audio"))
        if info is not None:
            writer.add_topic(info_topic, AUDIO_INFO, offered_qos("/kb/audio_info"))
        for k in range(len(mix) // 128):
            stamp = (START_SAMPLE + 128 * k) * NS_PER_FRAME
            if info is not None and k == info_after_blocks:
                writer.write(info_topic, info, stamp)
            writer.write("/kb/audio", AudioChunkMsg(stamp, encode_pcm(
                mix[k * 128:(k + 1) * 128], AudioFormat(sample_format="S16LE"))),
                stamp + 128 * NS_PER_FRAME)


def replayed_input(out: Path, frames: int) -> np.ndarray:
    """Return the replay's ``audio`` topic (the re-chunked input), placed by its stamps."""
    heard = np.zeros(frames + 256, np.float32)
    for msg in topic_messages(out, "/kb/audio"):
        first = msg.stamp_ns // NS_PER_FRAME - START_SAMPLE + 128
        heard[first:first + 128] = decode_pcm(msg.data, AudioFormat())[:, 0]
    return heard[128:128 + frames]


@pytest.mark.timeout(300)
def test_a_bag_without_audio_info_replays_in_the_format_given(models, sample, tmp_path):
    """
    S16LE audio recorded without its audio_info: ``--input-format`` says how to decode it.

    Without it the replay is refused (the bytes read as F32LE would be noise). With it the
    replay's ``audio`` topic (the re-chunked input, F32LE) is the recording, to 16-bit precision.
    """
    mix = read_wav(sample["mix"])[0][:60 * 128]
    bag = tmp_path / "no_info"
    write_s16_bag(bag, mix)
    refused = kb_ros("replay", str(bag), "-o", str(tmp_path / "bad"), "--model",
                     models["model"], "--large-model", models["large_model"])
    assert refused.returncode == 2 and "--input-format" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and not (tmp_path / "bad").exists()
    out = tmp_path / "out_s16"
    result = kb_ros("replay", str(bag), "-o", str(out), "--input-format", "S16LE", "--json",
                    "--model", models["model"], "--large-model", models["large_model"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["input_drops"] == {} and report["enhanced_chunks"] >= 59
    infos = topic_messages(out, "/kb/audio_info")
    assert [info.to_format() for info in infos] == [AudioFormat()]
    np.testing.assert_allclose(replayed_input(out, 59 * 128), mix[:59 * 128, 0], atol=1 / 32767)

    assert kb_ros("replay", str(bag), "-o", str(tmp_path / "bad"), "--input-channels",
                  "2").returncode == 2
    odd_rate = kb_ros("replay", str(bag), "-o", str(tmp_path / "bad"), "--input-format",
                      "S16LE", "--input-rate", "44101")
    assert odd_rate.returncode == 2 and "44101 Hz" in odd_rate.stderr
    assert len(odd_rate.stderr.splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_an_info_recorded_late_on_another_topic_decodes_the_audio_from_its_start(
        models, sample, tmp_path):
    """
    The AudioInfo comes after 20 audio blocks, on a topic of its own, spelt ``WAVE``/``s16le``.

    A recording that catches a latched info late, a driver with its own names: every block is
    still decoded as the info says, from the first one.
    """
    mix = read_wav(sample["mix"])[0][:60 * 128]
    bag = tmp_path / "late_info"
    write_s16_bag(bag, mix, AudioInfoMsg(1, RATE, "s16le", 256_000, "WAVE"),
                  info_topic="/robot1/mic/info", info_after_blocks=20)
    out = tmp_path / "out"  # the path of a bag's metadata.yaml stands for the bag
    report = replay_bag(ReplayOptions(bag / "metadata.yaml", out, info_topic="/robot1/mic/info",
                                      **models))
    assert report["input_drops"] == {} and report["enhanced_chunks"] >= 59
    np.testing.assert_allclose(replayed_input(out, 59 * 128), mix[:59 * 128, 0], atol=1 / 32767)
    with pytest.raises(BagError, match="no audio_common_msgs/msg/AudioInfo on /kb/audio_info"):
        replay_bag(ReplayOptions(bag, tmp_path / "out2", **models))
    compressed = tmp_path / "late_info_0.mcap.zstd"  # a file-compressed bag's storage file
    compressed.write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(BagError, match="pass the bag directory"):
        replay_bag(ReplayOptions(compressed, tmp_path / "out3", **models))


def test_a_bag_from_a_newer_rosbag2_is_read_from_its_storage_file(models, sample, tmp_path):
    """A metadata.yaml newer than rosbags knows is refused; the mcap still has all replay needs."""
    mix = read_wav(sample["mix"])[0][:40 * 128]
    write_audio_bag(tmp_path / "newer", "/kb/audio",
                    [(START_SAMPLE + 128 * k, mix[k * 128:(k + 1) * 128]) for k in range(40)],
                    AudioFormat(sample_format="S16LE"))
    metadata = tmp_path / "newer" / "metadata.yaml"
    text = metadata.read_text()
    assert "version: 8" in text
    metadata.write_text(text.replace("version: 8", "version: 10"))
    with BagReader(tmp_path / "newer") as reader:
        assert reader.topics["/kb/audio"].count == 40
        assert reader.topics["/kb/audio"].qos  # offered QoS comes from the mcap channels
        assert reader.topics["/kb/audio_info"].count == 1
    report = replay_bag(ReplayOptions(tmp_path / "newer", tmp_path / "out", **models))
    assert report["input_drops"] == {} and report["enhanced_chunks"] >= 39


def _corrupt_cases(tmp_path: Path) -> dict[str, Path]:
    """Damaged copies of a good mcap and a good sqlite3 bag, and other broken bags."""
    chunks = [(START_SAMPLE + 128 * k, np.zeros((128, 1), np.float32)) for k in range(400)]
    for storage in ("mcap", "sqlite3"):
        write_audio_bag(tmp_path / storage, "/kb/audio", chunks, AudioFormat(), storage)
    cases = {}

    def damaged(name: str, storage: str, damage: Callable[[Path], None]) -> None:
        cases[name] = Path(shutil.copytree(tmp_path / storage, tmp_path / name))
        damage(next(p for p in cases[name].iterdir() if p.suffix in (".mcap", ".db3")))

    def truncate(path: Path) -> None:
        os.truncate(path, path.stat().st_size // 2)

    def scramble(path: Path) -> None:
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 4096] = np.random.default_rng(3).bytes(4096)
        path.write_bytes(bytes(data))

    damaged("mcap_truncated", "mcap", truncate)
    damaged("mcap_scrambled", "mcap", scramble)
    damaged("db3_truncated", "sqlite3", truncate)
    damaged("db3_scrambled", "sqlite3", scramble)
    damaged("bad_metadata", "mcap", lambda path: None)
    (cases["bad_metadata"] / "metadata.yaml").write_text("rosbag2_bagfile_information: [1, 2\n")
    damaged("unclosed", "mcap", lambda path: None)
    (cases["unclosed"] / "metadata.yaml").unlink()
    cases["bad_message"] = tmp_path / "bad_message"
    with Writer(cases["bad_message"], version=8) as writer:
        connection = writer.add_connection("/kb/audio", AUDIO_STAMPED, typestore=make_typestore())
        writer.write(connection, 1, b"\x00\x01\x00\x00\xff")
    cases["empty"] = tmp_path / "empty"
    cases["empty"].mkdir()
    return cases


@pytest.mark.timeout(300)
def test_corrupt_or_truncated_bags_fail_clearly(models, tmp_path):
    for name, bag in _corrupt_cases(tmp_path).items():
        runs = [kb_ros("info", str(bag))]
        if name in ("mcap_truncated", "db3_scrambled", "bad_message"):
            runs.append(kb_ros("replay", str(bag), "-o", str(tmp_path / f"out_{name}"),
                               "--model", models["model"], "--large-model",
                               models["large_model"]))
        for result in runs:
            assert result.returncode == 2, (name, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr, (name, result.stderr)
            assert str(bag) in result.stderr, (name, result.stderr)
    assert "kb-ros bag repair" in kb_ros("info", str(tmp_path / "unclosed")).stderr


def _publish_audio(domain_id: int, chunks: int, latched_info: bool = True) -> None:
    """
    Publish ``audio_info`` and ``chunks`` 8 ms chunks on /kb/audio.

    The info is latched and sent before the recorder joins, as capture_node does, or
    published with ROS 2's default QoS (volatile) once it has joined, as many drivers do.
    """
    from kb_ros.transport import qos
    from kb_ros.transport.dds_backend import DdsBackend
    from kb_ros.transport.dds_config import DdsConfig, build_config_xml
    from kb_ros.transport.ros_args import RosArgs

    backend = DdsBackend(RosArgs("publisher", "/kb"),
                         DdsConfig(domain_id, build_config_xml(), "loopback only"))
    try:
        audio = backend.create_publisher(AUDIO_STAMPED, "audio", qos.AUDIO_PUB)
        info = backend.create_publisher(AUDIO_INFO, "audio_info", qos.INFO_PUB if latched_info
                                        else QosSpec(Reliability.RELIABLE, depth=10))
        if latched_info:
            info.publish(AudioInfoMsg())
        deadline = time.monotonic() + 30
        while audio.matched_count() < 1:
            assert time.monotonic() < deadline, "the recorder never subscribed"
            time.sleep(0.05)
        time.sleep(0.3)  # let the latched info reach the recorder too
        if not latched_info:
            info.publish(AudioInfoMsg())
        for k in range(chunks):
            audio.publish(AudioChunkMsg(START_SAMPLE * NS_PER_FRAME + k * 8_000_000,
                                        bytes(512), "mic"))
            time.sleep(0.008)
    finally:
        backend.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_killed_recording_keeps_every_flushed_message(storage, tmp_path):
    domain_id = 100 + (os.getpid() + (storage == "mcap")) % 100
    bag = tmp_path / "rec"
    recorder = subprocess.Popen(
        [sys.executable, "-m", "kb_ros.cli.main", "bag", "record", "--topics", "/kb/audio",
         "/kb/audio_info", "-o", str(bag), "--storage", storage, "--flush-s", "0.2"],
        env=dict(os.environ, ROS_DOMAIN_ID=str(domain_id)), stderr=subprocess.PIPE, text=True)
    try:
        _publish_audio(domain_id, 150)
        time.sleep(0.8)  # several flush periods
    finally:
        recorder.send_signal(signal.SIGKILL)
        recorder.wait(10)
    assert not (bag / "metadata.yaml").exists()
    info = kb_ros("info", str(bag))
    assert info.returncode == 2 and "kb-ros bag repair" in info.stderr

    repaired = kb_ros("repair", str(bag), "-o", str(tmp_path / "fixed"), "--json")
    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(repaired.stdout)["counts"] == {"/kb/audio_info": 1, "/kb/audio": 150}
    stamps = [m.stamp_ns for m in topic_messages(tmp_path / "fixed", "/kb/audio")]
    assert stamps == [START_SAMPLE * NS_PER_FRAME + k * 8_000_000 for k in range(150)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("latched_info", [True, False], ids=["latched_info", "volatile_info"])
def test_interrupted_recording_is_a_complete_bag(tmp_path, latched_info):
    domain_id = 100 + (os.getpid() + 2 + latched_info) % 100
    bag = tmp_path / "rec"
    recorder = subprocess.Popen(
        [sys.executable, "-m", "kb_ros.cli.main", "bag", "record", "-o", str(bag), "--json"],
        env=dict(os.environ, ROS_DOMAIN_ID=str(domain_id)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    _publish_audio(domain_id, 50, latched_info)
    time.sleep(0.3)
    recorder.send_signal(signal.SIGINT)
    out, err = recorder.communicate(timeout=20)
    assert recorder.returncode == 0, err
    counts = json.loads(out)["counts"]
    assert counts["/kb/audio"] == 50 and counts["/kb/audio_info"] == 1  # heard, and once
    with BagReader(bag) as reader:
        assert reader.topics["/kb/audio"].count == 50
        assert reader.topics["/kb/enhanced_info"].qos[0].durability.name == "TRANSIENT_LOCAL"


@pytest.mark.timeout(300)
def test_graph_replay_runs_the_node_processes(models, sample, tmp_path):
    """Real processes on a loaded machine: chunk counts and stamps are exact, timing is not."""
    made = kb_ros("make", "--mix", str(sample["mix"]), "--ref", str(sample["clean"]),
                  "-o", str(tmp_path / "in"), "--style", "audio_capture")
    assert made.returncode == 0, made.stderr
    result = kb_ros("replay", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--graph",
                    "--audio-topic", "/audio/audio_stamped", "--json", "--model",
                    models["model"], "--large-model", models["large_model"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["engine"] == "graph"
    assert report["input_chunks"] == report["enhanced_chunks"] == N_FRAMES // 128
    assert set(report["si_snri_db"]) == {"boosted", "large"}
    stamps = [m.stamp_ns for m in topic_messages(tmp_path / "out", "/kb/enhanced")]
    assert stamps == sorted(stamps) and len(set(np.diff(stamps))) == 1
    fast = kb_ros("replay", str(tmp_path / "in"), "-o", str(tmp_path / "x"), "--graph", "--fast")
    assert fast.returncode == 2 and "real time only" in fast.stderr


@pytest.mark.timeout(300)
def test_graph_replay_announces_the_input_format_given(models, sample, tmp_path):
    """The nodes get ``--input-format`` as the audio_info the bag lacks: nothing is dropped."""
    write_s16_bag(tmp_path / "in", read_wav(sample["mix"])[0][:60 * 128])
    result = kb_ros("replay", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--graph",
                    "--input-format", "S16LE", "--json", "--model", models["model"],
                    "--large-model", models["large_model"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["input_drops"] == {"total": 0}
    assert report["input_chunks"] == report["enhanced_chunks"] >= 59
    infos = topic_messages(tmp_path / "out", "/kb/audio_info")
    assert [info.to_format() for info in infos] == [AudioFormat(sample_format="S16LE")]
