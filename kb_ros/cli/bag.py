"""
``kb-ros bag {record,make,info,replay,repair}``: rosbag2 workflows without ROS 2.

Failures print one line naming the bag and exit non-zero (``kb_ros.cli.main`` turns a
``BagError``, a ValueError, into exit code 2), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from kb_ros.audio.clock import SAMPLE_RATE, STAMP_TOLERANCE_RANGE_MS, STAMP_TOLERANCE_S
from kb_ros.audio.pcm import SAMPLE_FORMATS, AudioFormat
from kb_ros.audio.resample import resampling_ratio
from kb_ros.cli.arg_types import finite_float, topic_name

STORAGE_CHOICES = ("mcap", "sqlite3")


def _make(args: argparse.Namespace) -> int:
    from kb_ros.bags.make import STYLES, MakeOptions, make_bag

    style = STYLES[args.style]
    style = replace(style, audio_topic=args.topic or style.audio_topic,
                    sample_format=args.format or style.sample_format,
                    block_frames=(style.block_frames if args.block_frames is None
                                  else args.block_frames))
    start_ns = round((time.time() if args.start_s is None else args.start_s) * 1e9)
    summary = make_bag(MakeOptions(args.mix, args.out, args.ref, style, args.storage, start_ns,
                                   args.frame_id))
    print(json.dumps(summary) if args.json else
          f"wrote {summary['bag']} ({summary['storage']}): {summary['blocks']} blocks of "
          f"{summary['block_frames']} frames ({summary['seconds']:.2f} s) on "
          f"{', '.join(summary['topics'])}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from kb_ros.bags.info import bag_info, format_info

    info = bag_info(args.bag)
    print(json.dumps(info) if args.json else format_info(info))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from kb_ros.bags.replay import ReplayOptions, replay_bag
    from kb_ros.transport.emulated_link import LinkProfile

    low, high = STAMP_TOLERANCE_RANGE_MS
    if not low <= args.stamp_tolerance_ms <= high:
        raise ValueError(f"--stamp-tolerance-ms must be in [{low:g}, {high:g}], got "
                         f"{args.stamp_tolerance_ms}")
    if args.graph and args.pace == "fast":
        raise ValueError("--graph replays through live processes: real time only")
    opts = ReplayOptions(
        bag=args.bag, out=args.out, audio_topic=args.audio_topic,
        reference_topic=args.reference_topic, info_topic=args.info_topic,
        stamp_tolerance_ms=args.stamp_tolerance_ms,
        namespace=args.namespace,
        link=LinkProfile(args.link_delay_ms, args.jitter_ms, args.loss), seed=args.seed,
        realtime=args.graph or args.pace == "realtime", model=args.model,
        large_model=args.large_model, accept_any_hint_model=args.accept_any_hint_model,
        storage=args.storage, input_format=_input_format(args))
    if args.graph:
        from kb_ros.bags.replay_graph import replay_graph

        report = replay_graph(opts)
    else:
        report = replay_bag(opts)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _input_format(args: argparse.Namespace) -> AudioFormat | None:
    """``--input-format``/``-channels``/``-rate`` as a validated format (None: the bag's info)."""
    if args.input_format is None:
        if args.input_channels is not None or args.input_rate is not None:
            raise ValueError("--input-channels and --input-rate go with --input-format")
        return None
    fmt = AudioFormat(channels=1 if args.input_channels is None else args.input_channels,
                      sample_rate=args.input_rate or SAMPLE_RATE,
                      sample_format=args.input_format).validate()
    resampling_ratio(fmt.sample_rate, SAMPLE_RATE)  # refuse an odd rate now, not mid-replay
    return fmt


def format_report(report: dict) -> str:
    hints = report["hints"]
    compute = report["compute_ms"]["small"]
    latency = report["stamp_to_output_ms"]
    stamps = report["input_stamps"]
    rows = [("input", f"{report['input_messages']} messages on {report['audio_topic']} -> "
                      f"{report['input_chunks']} chunks (gaps {stamps['gaps']}, "
                      f"{stamps['missing_ms']:.1f} ms missing; drops "
                      f"{sum(report['input_drops'].values())})"),
            ("enhanced chunks", str(report["enhanced_chunks"])),
            ("hint hit rate", f"{report['hint_hit_rate']:.1%} (link {report['link_delay_ms']:g} "
                              f"ms each way; late {hints['late']}, invalid "
                              f"{hints['invalid_total']})"),
            ("hint ages (chunks: count)", json.dumps(hints["age_histogram"])),
            ("compute per chunk p50 / p99", f"{compute['p50']:.2f} / {compute['p99']:.2f} ms"),
            ("stamp -> output p50 / p99", f"{latency['p50']:.2f} / {latency['p99']:.2f} ms "
                                          f"({report['mode']})")]
    for name, value in report.get("si_snri_db", {}).items():
        rows.append((f"SI-SNRi {name}", f"{value:.2f} dB vs {report['reference_topic']}"))
    width = max(len(name) for name, _ in rows)
    lines = [f"kb-ros bag replay ({report['engine']}, {report['mode']}): {report['bag']}"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    lines.append(f"  output bag: {report['output_bag']}")
    return "\n".join(lines)


def _record(args: argparse.Namespace) -> int:
    from kb_ros.bags.record import BagRecorder, RecordOptions
    from kb_ros.bags.topics import live_topics

    topics = args.topics or live_topics(args.namespace)
    recorder = BagRecorder(RecordOptions(args.out, topics, args.storage, args.duration_s,
                                         args.flush_s, args.dds_interface))
    print(f"recording {', '.join(recorder.topics)} on DDS domain "
          f"{recorder.backend.config.domain_id} ({recorder.backend.config.description}) to "
          f"{args.out}; Ctrl-C stops", file=sys.stderr)
    summary = recorder.run()
    print(json.dumps(summary) if args.json else
          f"wrote {summary['bag']}: "
          + ", ".join(f"{t} {n}" for t, n in summary["counts"].items()))
    return 0


def _repair(args: argparse.Namespace) -> int:
    from kb_ros.bags.repair import repair_bag

    summary = repair_bag(args.bag, args.out)
    print(json.dumps(summary) if args.json else
          f"recovered {sum(summary['counts'].values())} messages into {summary['bag']}: "
          + ", ".join(f"{t} {n}" for t, n in summary["counts"].items()))
    return 0


def add_bag_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``kb-ros bag`` and its subcommands on the top-level subparsers."""
    bag = sub.add_parser("bag", help="record, make, inspect, replay and repair rosbag2 bags")
    cmds = bag.add_subparsers(dest="bag_command", required=True)

    make = cmds.add_parser("make", help="write a bag of audio (+ reference) from WAV files")
    make.add_argument("--mix", type=Path, required=True, help="input WAV (any rate: resampled)")
    make.add_argument("--ref", type=Path, help="clean reference WAV: adds a `reference` topic")
    make.add_argument("-o", "--out", type=Path, required=True, help="new bag directory")
    make.add_argument("--style", choices=("kb", "audio_capture"), default="kb",
                      help="kb: /kb/audio, F32LE, 128 frames; audio_capture: "
                           "/audio/audio_stamped, S16LE, 160 frames")
    make.add_argument("--topic", type=topic_name, help="audio topic (default: the style's)")
    make.add_argument("--format", choices=sorted(SAMPLE_FORMATS), help="PCM sample format")
    make.add_argument("--block-frames", type=int, help="frames per message")
    make.add_argument("--storage", choices=STORAGE_CHOICES, default="mcap")
    make.add_argument("--start-s", type=finite_float,
                      help="stamp of the first sample, epoch seconds (default: now)")
    make.add_argument("--frame-id", default="mic", help="header.frame_id")
    make.add_argument("--json", action="store_true", help="print one JSON object")
    make.set_defaults(run=_make)

    info = cmds.add_parser("info", help="topics, types, counts, span, audio format, stamp gaps")
    info.add_argument("bag", type=Path, help="bag directory, .mcap/.db3 file or ROS 1 .bag")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=_info)

    replay = cmds.add_parser("replay", help="feed a bag through the chunk pipeline into a new "
                                            "bag and report hit rate, latency, SI-SNRi")
    replay.add_argument("bag", type=Path, help="bag directory, .mcap/.db3 file or ROS 1 .bag")
    replay.add_argument("-o", "--out", type=Path, required=True, help="new output bag directory")
    replay.add_argument("--audio-topic", type=topic_name, default="/kb/audio",
                        help="input topic (audio_capture: /audio/audio_stamped)")
    replay.add_argument("--info-topic", type=topic_name,
                        help="the input's AudioInfo topic (default: audio_info beside "
                             "--audio-topic, or <audio topic>_info)")
    replay.add_argument("--stamp-tolerance-ms", type=finite_float,
                        default=STAMP_TOLERANCE_S * 1e3,
                        help="how far a block's stamp may stray from the stream's sample count "
                             "and still continue it (the nodes' stamp_tolerance_ms; 20-30 for "
                             "drivers that stamp buffers with their publish time)")
    replay.add_argument("--reference-topic", type=topic_name,
                        help="clean reference for SI-SNRi (default: `reference` beside the "
                             "audio topic, when the bag has it)")
    replay.add_argument("--namespace", type=topic_name, default="/kb",
                        help="namespace of the output topics")
    replay.add_argument("--link-delay-ms", type=finite_float, default=24.0,
                        help="one-way link delay")
    replay.add_argument("--jitter-ms", type=finite_float, default=0.0,
                        help="link jitter, each way")
    replay.add_argument("--loss", type=finite_float, default=0.0, help="link loss probability")
    replay.add_argument("--seed", type=int, default=0, help="seed of the link's random choices")
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="pace", action="store_const", const="realtime",
                      help="release chunks at their capture pace (latency under real load)")
    pace.add_argument("--fast", dest="pace", action="store_const", const="fast",
                      help="as fast as the models run; bit-identical output (the default "
                           "in process)")
    replay.add_argument("--graph", action="store_true",
                        help="through the real node processes on a private loopback DDS "
                             "domain (real time) instead of in process")
    replay.add_argument("--model", default="kb", help="small model: shipped name or checkpoint")
    replay.add_argument("--large-model", default="large", help="hint model: name or checkpoint")
    replay.add_argument("--accept-any-hint-model", action="store_true",
                        help="use hints even from a model the small model was not trained with")
    replay.add_argument("--input-format", choices=sorted(SAMPLE_FORMATS),
                        help="decode the audio as this PCM format instead of what the "
                        "bag's audio_info says (for a bag recorded without it: such a bag is "
                        "refused without this)")
    replay.add_argument("--input-channels", type=int,
                        help="channels of --input-format (default 1)")
    replay.add_argument("--input-rate", type=int,
                        help="sample rate of --input-format in Hz (default 16000; others are "
                        "converted to 16 kHz)")
    replay.add_argument("--storage", choices=STORAGE_CHOICES, default="mcap",
                        help="storage of the output bag")
    replay.add_argument("--json", action="store_true", help="print the report as one JSON object")
    replay.set_defaults(run=_replay)

    record = cmds.add_parser("record", help="record live topics of the standalone DDS graph")
    record.add_argument("--topics", nargs="+",
                        help="topics (default: every kb_ros topic of --namespace and "
                             "/diagnostics); *_info: AudioInfo, /diagnostics: DiagnosticArray, "
                             "others: AudioDataStamped")
    record.add_argument("--namespace", type=topic_name, default="/kb",
                        help="namespace for the default topics")
    record.add_argument("-o", "--out", type=Path, required=True, help="new bag directory")
    record.add_argument("--storage", choices=STORAGE_CHOICES, default="mcap")
    record.add_argument("--duration-s", type=finite_float,
                        help="stop after this long (default: Ctrl-C)")
    record.add_argument("--flush-s", type=finite_float, default=0.5,
                        help="flush period: the most a killed recorder loses")
    record.add_argument("--dds-interface", help="network interface (default: loopback only)")
    record.add_argument("--json", action="store_true", help="print the summary as JSON")
    record.set_defaults(run=_record)

    repair = cmds.add_parser("repair", help="recover a recording that was killed before closing")
    repair.add_argument("bag", type=Path, help="the unfinished bag directory or storage file")
    repair.add_argument("-o", "--out", type=Path, required=True, help="new bag directory")
    repair.add_argument("--json", action="store_true", help="print the summary as JSON")
    repair.set_defaults(run=_repair)
