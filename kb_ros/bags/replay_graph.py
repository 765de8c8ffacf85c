"""
``kb-ros bag replay --graph``: a bag's audio published into the real node processes.

small_node, hint_node (in ``<namespace>/remote``) and link_node run as separate processes on a
private loopback DDS domain, as in ``kb-ros demo``; the bag's audio messages are published on
``<namespace>/audio`` as they are (any block size: the nodes re-chunk them), each when its last
sample would have been captured, paced by the stamps. What the nodes publish is recorded into
the output bag, with bag times on the stamps' own timeline. This runs in real time only and is
not bit-reproducible (scheduling decides which hints arrive in time); it checks that the
processes, DDS and QoS behave as the in-process replay predicts.
"""

from __future__ import annotations

import ast
import os
import time

from kb_ros.audio.clock import NS_PER_S
from kb_ros.audio.pcm import AudioFormat, PcmError, decode_pcm
from kb_ros.audio.stream import PcmChunkStream
from kb_ros.bags.errors import BagError
from kb_ros.bags.info import GapCounter
from kb_ros.bags.reader import BagReader
from kb_ros.bags.replay import (ReplayOptions, initial_input_info, input_topics, push_audio,
                                score_timelines, scoring_timelines)
from kb_ros.bags.topics import DIAGNOSTICS_TOPIC, offered_qos, subscription_qos, topic_type
from kb_ros.bags.writer import BagWriter
from kb_ros.boosting.stats import LatencyStats
from kb_ros.cli.graph import LocalGraph
from kb_ros.cli.recorder import TopicLog, TopicRecorder
from kb_ros.transport import qos
from kb_ros.transport.dds_backend import DdsBackend
from kb_ros.transport.dds_config import DdsConfig, build_config_xml
from kb_ros.transport.messages import AUDIO_INFO, AUDIO_STAMPED, AudioInfoMsg
from kb_ros.transport.ros_args import RosArgs

OUTPUTS = ("hints", "hint_info", "enhanced", "enhanced_info", "remote/hints")
SUBSCRIBERS_OF_AUDIO = 2  # small_node and link_node
SETTLE_S = 0.5  # for the latched audio_info to reach the nodes before the first chunk
STARTUP_TIMEOUT_S = 120.0
DIAGNOSTICS_PERIOD_S = 0.25


class StampPacer:
    """Maps stamps to the wall clock, so each message goes out when its last sample exists."""

    def __init__(self, first_stamp_ns: int) -> None:
        self.first_stamp_ns = first_stamp_ns
        self.wall0_ns = time.time_ns()

    def wait_for(self, stamp_ns: int) -> None:
        wait_ns = self.wall_ns(stamp_ns) - time.time_ns()
        if wait_ns > 0:
            time.sleep(wait_ns / NS_PER_S)

    def wall_ns(self, stamp_ns: int) -> int:
        return self.wall0_ns + stamp_ns - self.first_stamp_ns

    def stream_ns(self, wall_ns: int) -> int:
        return wall_ns - self.wall0_ns + self.first_stamp_ns


def _play(messages: list[tuple[str, object]], namespace: str, domain_id: int,
          input_stats: GapCounter, stamp_tolerance_ms: float) -> tuple[StampPacer, int]:
    """
    Publish ``(role, msg)`` pairs on ``<namespace>/audio(_info)``.

    Returns the pacer and the number of chunks the nodes will make of them (re-chunked here as
    they do it).
    """
    stream = PcmChunkStream(stamp_tolerance_s=stamp_tolerance_ms / 1e3)
    chunks = 0
    player = DdsBackend(RosArgs("bag_player", namespace),
                        DdsConfig(domain_id, build_config_xml(), "loopback only"))
    try:
        audio = player.create_publisher(AUDIO_STAMPED, "audio", qos.AUDIO_PUB)
        info = player.create_publisher(AUDIO_INFO, "audio_info", qos.INFO_PUB)
        deadline = time.monotonic() + 30.0
        while audio.matched_count() < SUBSCRIBERS_OF_AUDIO:
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes never subscribed to the replayed audio")
            time.sleep(0.05)

        def publish_info(msg: AudioInfoMsg) -> None:
            info.publish(msg)
            try:
                stream.set_format(msg.to_format())
            except PcmError:
                pass  # the nodes ignore it too

        first = next(k for k, (role, _) in enumerate(messages) if role == "audio")
        for _, msg in messages[:first]:  # latched, but not ordered against the audio topic
            publish_info(msg)
        time.sleep(SETTLE_S)
        pacer = StampPacer(messages[first][1].stamp_ns)
        for role, msg in messages[first:]:
            if role == "audio_info":
                publish_info(msg)
                continue
            fmt = stream.format
            made, kept = push_audio(stream, input_stats, msg)
            if kept:  # what the nodes drop goes out at once, unpaced
                frames = len(msg.data) // fmt.bytes_per_frame
                pacer.wait_for(msg.stamp_ns + frames * NS_PER_S // fmt.sample_rate)
            audio.publish(msg)
            chunks += len(made)
        return pacer, chunks
    finally:
        player.close()


def _last_status(log: TopicLog, node_name: str) -> dict[str, str] | None:
    """Return the newest status a node published (its hardware_id is its fully qualified name)."""
    for rec in reversed(log.messages):
        for status in rec.msg.status:
            if status.hardware_id.endswith("/" + node_name):
                return status.values
    return None


def _wait_for_status(log: TopicLog, node_names: tuple[str, ...], timeout_s: float) -> None:
    """Once the recorder hears every node, discovery is done and no output is missed."""
    deadline = time.monotonic() + timeout_s
    while any(_last_status(log, name) is None for name in node_names):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no diagnostics from {node_names} within {timeout_s:.0f} s")
        time.sleep(0.05)


def replay_graph(opts: ReplayOptions) -> dict:
    """Replay ``opts.bag`` through the node processes into ``opts.out``; returns the report."""
    if opts.out.exists():
        raise BagError(f"{opts.out} exists already; the output bag must be new")
    with BagReader(opts.bag) as reader:
        roles, ref_topic = input_topics(reader, opts)
        by_topic = {topic: role for role, topic in roles.items()}
        messages = initial_input_info(reader, opts, roles) + [
            (by_topic[topic], msg) for topic, _, msg in reader.messages(by_topic)]
    if not any(role == "audio" for role, _ in messages):
        raise BagError(f"{opts.bag}: no messages on {opts.audio_topic}")
    ns = "/" + opts.namespace.strip("/")
    domain_id = 100 + os.getpid() % 100
    recorder = TopicRecorder(domain_id, "bag_replay_recorder")
    logs = {name: recorder.record(topic_type(name), f"{ns}/{name}",
                                  subscription_qos(f"{ns}/{name}")) for name in OUTPUTS}
    logs["diagnostics"] = recorder.record(topic_type(DIAGNOSTICS_TOPIC), DIAGNOSTICS_TOPIC,
                                          qos.DIAGNOSTICS)
    recorder.start()
    input_stats = GapCounter()
    graph = LocalGraph(domain_id)
    try:
        graph.start("small_node", namespace=ns, model=opts.model,
                    accept_any_hint_model=opts.accept_any_hint_model,
                    output_format=opts.output_format,
                    stamp_tolerance_ms=opts.stamp_tolerance_ms,
                    **{"diagnostic_updater.period": DIAGNOSTICS_PERIOD_S})
        graph.start("hint_node", namespace=f"{ns}/remote", model=opts.large_model,
                    hint_format=opts.hint_format, stamp_tolerance_ms=opts.stamp_tolerance_ms)
        graph.start("link_node", namespace=ns, uplink_delay_ms=opts.link.delay_ms,
                    downlink_delay_ms=opts.link.delay_ms, jitter_ms=opts.link.jitter_ms,
                    loss=opts.link.loss, seed=opts.seed)
        graph.wait_ready(timeout_s=STARTUP_TIMEOUT_S)
        _wait_for_status(logs["diagnostics"], ("small_node", "hint_node"), STARTUP_TIMEOUT_S)
        pacer, chunks = _play([m for m in messages if m[0] in ("audio", "audio_info")], ns,
                              domain_id, input_stats, opts.stamp_tolerance_ms)
        recorder.wait_for(f"{ns}/enhanced", chunks, timeout_s=5.0)
        time.sleep(2 * DIAGNOSTICS_PERIOD_S)  # one more status, with the final counters
    finally:
        exit_codes = graph.stop()
        recorder.stop()
    _write_bag(opts, ns, messages, logs, pacer)
    status = _last_status(logs["diagnostics"], "small_node") or {}
    latency = LatencyStats()
    for rec in logs["enhanced"].messages:
        latency.add((rec.arrival_ns - pacer.wall_ns(rec.msg.stamp_ns)) / 1e6)
    report = {
        "engine": "graph", "mode": "realtime", "bag": str(opts.bag),
        "output_bag": str(opts.out), "audio_topic": opts.audio_topic,
        "small_model": opts.model, "large_model": opts.large_model,
        "link_delay_ms": opts.link.delay_ms, "domain_id": domain_id,
        "input_messages": sum(role == "audio" for role, _ in messages),
        "input_chunks": chunks, "enhanced_chunks": len(logs["enhanced"]),
        "input_drops": {"total": int(status.get("input_drops", 0))},
        "input_stamps": input_stats.as_dict(),
        "hint_hit_rate": float(status.get("hit_rate", 0.0)),
        "hints": {"chunks": int(status.get("chunks", 0)), "hits": int(status.get("hits", 0)),
                  "misses": int(status.get("misses", 0)), "late": int(status.get("late", 0)),
                  "invalid_total": int(status.get("invalid", 0)),
                  "age_histogram": _histogram(status.get("age_histogram", "{}"))},
        "compute_ms": {"small": {"p50": float(status.get("compute_p50_ms", "nan")),
                                 "p99": float(status.get("compute_p99_ms", "nan"))}},
        "stamp_to_output_ms": latency.summary(),
        "small_node_status": status, "exit_codes": exit_codes,
        "reference_topic": ref_topic,
    }
    if ref_topic is not None:
        report["si_snri_db"] = _scores(messages, logs, opts)
    return report


def _histogram(text: str) -> dict:
    """small_node reports its age histogram as the text of a dict."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_bag(opts: ReplayOptions, ns: str, messages: list[tuple[str, object]],
               logs: dict[str, TopicLog], pacer: StampPacer) -> None:
    """Write inputs at their stamps and outputs at their arrival, on the stamps' timeline."""
    entries = []
    for role, msg in messages:
        if role in ("audio", "audio_info"):
            time_ns = msg.stamp_ns if role == "audio" else pacer.first_stamp_ns
            entries.append((time_ns, f"{ns}/{role}", msg))
    for log in logs.values():
        entries += [(pacer.stream_ns(rec.arrival_ns), log.topic, rec.msg)
                    for rec in log.messages]
    entries.sort(key=lambda entry: entry[0])
    with BagWriter(opts.out, opts.storage, keep_on_error=False) as writer:
        for topic in dict.fromkeys(topic for _, topic, _ in entries):
            writer.add_topic(topic, topic_type(topic), offered_qos(topic))
        for time_ns, topic, msg in entries:
            writer.write(topic, msg, time_ns)


def _decoded(msgs: list[tuple[str, object]], data_role: str,
             info_role: str) -> list[tuple[int, object]]:
    """
    ``(stamp, audio)`` of the ``data_role`` messages.

    Each is decoded in the format the last ``info_role`` message announced (undecodable ones
    skipped, as the nodes skip them).
    """
    fmt = AudioFormat()
    out = []
    for role, msg in msgs:
        try:
            if role == info_role:
                fmt = msg.to_format()
            elif role == data_role:
                out.append((msg.stamp_ns, decode_pcm(msg.data, fmt)))
        except PcmError:
            continue
    return out


def _scores(messages: list[tuple[str, object]], logs: dict[str, TopicLog],
            opts: ReplayOptions) -> dict[str, float]:
    def received(data: str, info: str) -> list[tuple[int, object]]:
        msgs = [("info", rec.msg) for rec in logs[info].messages[-1:]]
        return _decoded(msgs + [("data", rec.msg) for rec in logs[data].messages], "data",
                        "info")

    timelines = scoring_timelines()
    sources = {"reference": _decoded(messages, "reference", "reference_info"),
               "mix": _decoded(messages, "audio", "audio_info"),
               "boosted": received("enhanced", "enhanced_info"),
               "large": received("remote/hints", "hint_info")}
    for name, blocks in sources.items():
        for stamp_ns, audio in blocks:
            timelines[name].add(stamp_ns, audio)
    return score_timelines(timelines)
