"""kb-ros: the command line for everything that is not a node (demo, eval, data, train)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from kb_ros.cli.arg_types import finite_float
from kb_ros.cli.bag import add_bag_parser
from kb_ros.cli.bench import add_bench_parser
from kb_ros.cli.faults import add_faults_parser
from kb_ros.cli.keys import add_keys_parser
from kb_ros.models.config import PRESETS


def _demo(args: argparse.Namespace) -> int:
    from kb_ros.cli.demo import default_options, run_demo

    opts = default_options(args.out)
    if args.ref and not args.mix:
        raise ValueError("--ref goes with --mix (the shipped sample has its own reference)")
    if args.mix:
        opts.mix_wav, opts.clean_wav = args.mix, args.ref
    opts.link_delay_ms, opts.jitter_ms, opts.loss = args.link_delay_ms, args.jitter_ms, args.loss
    opts.plot = not args.no_plot
    report = run_demo(opts)
    ok = report["enhanced_chunks"] == report["input_chunks"] and report["in_order"]
    return 0 if ok else 1


def _eval(args: argparse.Namespace) -> int:
    if args.table or args.complexity:
        from kb_ros.cli.results import run_results

        return run_results(args)
    if args.mix is None or args.ref is None:
        raise ValueError("give --mix and --ref, or --table, or --complexity")
    from kb_ros.cli.evaluate import evaluate_files

    result = evaluate_files(args.mix, args.ref, args.delay_chunks,
                            warn=lambda line: print(f"kb-ros eval: {line}", file=sys.stderr))
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result["si_snri_db"].items():
            print(f"SI-SNRi {name:<8} {value:6.2f} dB")
        ages = sorted(int(age) for age in result["hints"]["age_histogram"])
        used = ""
        if ages:
            span = str(ages[0]) if ages[0] == ages[-1] else f"{ages[0]}-{ages[-1]}"
            used = f", hint age {span} chunks"
        print(f"hint hit rate   {result['hint_hit_rate']:.1%} at {args.delay_chunks} chunks "
              f"delay{used}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from kb_ros.training.trainer import TrainSettings, train

    best = train(TrainSettings(
        preset=args.preset, data_dir=args.data, out_dir=args.out, steps=args.steps,
        batch=args.batch, segment_s=args.segment_s, lr=args.lr, val_every=args.val_every,
        checkpoint_every=args.checkpoint_every, seed=args.seed, threads=args.threads,
        device=args.device, large_model=args.large_model, init_from=args.init_from,
        max_minutes=args.max_minutes))
    print(f"best checkpoint: {best}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from kb_ros.data import human
    from kb_ros.data.corpus import build_corpus

    human_examples = args.human if args.task == "se" else 0
    if human_examples and not human.available():
        print(f"no human split: {human.SPEECH_DIR} has no recordings (apt install "
              f"{human.PACKAGE})", file=sys.stderr)
        human_examples = 0
    for split, n in (("train", args.train), ("val", args.val), ("test", args.test),
                     ("human", human_examples)):
        if n:
            print(build_corpus(args.out, split, n, args.seconds, args.seed, args.task,
                               args.reverb_prob, args.workers))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kb-ros", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the nodes on loopback DDS on a speech sample")
    demo.add_argument("--out", type=Path, help="output folder (default kb_demo_out/<time>)")
    demo.add_argument("--mix", type=Path, help="input WAV instead of the shipped sample")
    demo.add_argument("--ref", type=Path, help="clean reference WAV for --mix (for SI-SNRi)")
    demo.add_argument("--link-delay-ms", type=finite_float, default=24.0,
                      help="one-way link delay")
    demo.add_argument("--jitter-ms", type=finite_float, default=0.0, help="link jitter, each way")
    demo.add_argument("--loss", type=finite_float, default=0.0, help="link loss probability")
    demo.add_argument("--no-plot", action="store_true", help="skip the PNG")
    demo.set_defaults(run=_demo)

    ev = sub.add_parser("eval", help="score the chunk pipeline offline: a mixture, or the "
                        "results table")
    ev.add_argument("--mix", type=Path, help="noisy input WAV")
    ev.add_argument("--ref", type=Path, help="clean reference WAV")
    ev.add_argument("--delay-chunks", type=int, default=6, help="hint delay in 8 ms chunks")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--table", action="store_true",
                    help="every model on the test split: write --out and a PNG beside it")
    ev.add_argument("--complexity", action="store_true",
                    help="print params, MACs and step time per chunk of every preset")
    ev.add_argument("--data", type=Path, default=Path("data/se"), help="corpus with test.npz")
    ev.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"), help="--table page")
    ev.add_argument("--examples", type=int, help="first N test examples (default: all)")
    ev.add_argument("--workers", type=int, default=2, help="processes evaluating rows")
    ev.add_argument("--model", action="append", default=[], metavar="ROLE=MODEL",
                    help="model of a role (small, medium, small_gc, large, kb, kb_d4, kb_gc): "
                    "shipped name or checkpoint path")
    ev.add_argument("--timing-steps", type=int, default=1000, help="steps timed per preset")
    ev.set_defaults(run=_eval)

    data = sub.add_parser("data", help="synthesize a training corpus (TTS speech + noise)")
    data.add_argument("--out", type=Path, required=True, help="corpus folder")
    data.add_argument("--train", type=int, default=640, help="training examples")
    data.add_argument("--val", type=int, default=96, help="validation examples")
    data.add_argument("--test", type=int, default=96, help="test examples")
    data.add_argument("--human", type=int, default=32,
                      help="examples of real human speech (alsa-utils' recordings) over test "
                      "noises, task se only (0: none)")
    data.add_argument("--seconds", type=finite_float, default=4.0, help="length of each example")
    data.add_argument("--task", choices=("se", "ss"), default="se",
                      help="se: enhancement; ss: 2-speaker separation")
    data.add_argument("--reverb-prob", type=finite_float, default=0.0,
                      help="share of reverberant rooms")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--workers", type=int, default=2)
    data.set_defaults(run=_data)

    tr = sub.add_parser("train", help="train (or resume) a model preset on a corpus")
    tr.add_argument("preset", choices=sorted(PRESETS), metavar="preset",
                    help=", ".join(PRESETS))
    tr.add_argument("--data", type=Path, required=True, help="corpus folder from kb-ros data")
    tr.add_argument("--out", type=Path, required=True, help="run folder (resumes if present)")
    tr.add_argument("--large-model", type=Path, help="frozen hint producer (kb preset)")
    tr.add_argument("--init-from", type=Path,
                    help="start from this checkpoint's weights where names and shapes match")
    tr.add_argument("--steps", type=int, default=2000)
    tr.add_argument("--batch", type=int, default=8)
    tr.add_argument("--segment-s", type=finite_float, default=2.0, help="training crop length")
    tr.add_argument("--lr", type=finite_float, default=1e-3)
    tr.add_argument("--val-every", type=int, default=200)
    tr.add_argument("--checkpoint-every", type=int, default=50)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    tr.add_argument("--max-minutes", type=finite_float, help="stop resumably after this long")
    tr.set_defaults(run=_train)

    add_bag_parser(sub)
    add_bench_parser(sub)
    add_faults_parser(sub)
    add_keys_parser(sub)
    return parser


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """Unwind on SIGTERM as on Ctrl-C, so ``finally`` blocks stop the processes we started."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if on_main_thread else None
    try:
        return args.run(args)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"kb-ros {args.command}: {err}", file=sys.stderr)
        return 2
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
