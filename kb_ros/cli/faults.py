"""
``kb-ros faults``: the fault-injection suite on the live node processes.

Runs the scenarios of ``faults_scenarios`` (all, or those named), prints a verdict per scenario
(or one JSON object with ``--json``) and writes docs/RELIABILITY.md with ``--doc``. Exit status
0 when every scenario passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # the suite pulls in torch and cyclonedds: only when it runs
    from kb_ros.cli.faults_runner import ScenarioResult


def run_faults(names: list[str], work_dir: Path, hint_model: str | None = None,
               on_result: Callable[["ScenarioResult"], None] | None = None
               ) -> list["ScenarioResult"]:
    """Run the named scenarios one after another, each on its own DDS domain."""
    from kb_ros.cli.faults_runner import DEFAULT_HINT_MODEL, domain_for, run_scenario
    from kb_ros.cli.faults_scenarios import BY_NAME

    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {sorted(BY_NAME)}")
    results = []
    for index, name in enumerate(names):
        result = run_scenario(BY_NAME[name], domain_for(index), work_dir,
                              hint_model or DEFAULT_HINT_MODEL)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _print_verdict(result: "ScenarioResult") -> None:
    print(f"{'PASS' if result.passed else 'FAIL'}  {result.name}  ({result.wall_s:.0f} s)",
          flush=True)
    for check in result.checks:
        print(f"      {'ok  ' if check.passed else 'FAIL'} {check.name}: {check.detail}",
              flush=True)


def _faults(args: argparse.Namespace) -> int:
    from kb_ros.cli.faults_report import as_json, machine_description, render_markdown
    from kb_ros.cli.faults_scenarios import SCENARIOS

    if args.list:
        for scenario in SCENARIOS:
            print(f"{scenario.name:32} {scenario.injected}")
        return 0
    machine = machine_description()  # the load before the suite adds its own
    names = args.scenario or [s.name for s in SCENARIOS]
    command = "kb-ros " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["faults"] else \
        "kb-ros faults"
    with tempfile.TemporaryDirectory(prefix="kb_faults_") as tmp:
        work_dir = args.out or Path(tmp)
        results = run_faults(names, work_dir, args.hint_model,
                             None if args.json else _print_verdict)
    if args.doc:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(render_markdown(results, command, machine))
    if args.json:
        print(json.dumps(as_json(results, command, machine), indent=2))
    return 0 if all(r.passed for r in results) else 1


def add_faults_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``kb-ros faults`` on the top-level parser."""
    faults = sub.add_parser("faults", help="inject faults into the live nodes and judge them")
    faults.add_argument("--scenario", nargs="+", metavar="NAME",
                        help="run only these (default: all; --list names them)")
    faults.add_argument("--json", action="store_true", help="print one JSON object")
    faults.add_argument("--doc", type=Path, help="write the Markdown report here "
                        "(docs/RELIABILITY.md)")
    faults.add_argument("--out", type=Path, help="keep node logs and inputs in this folder")
    faults.add_argument("--hint-model", help="model hint_node serves (default: small, cheap "
                        "enough to keep up on a loaded machine; large: the producer the kb "
                        "model was trained with)")
    faults.add_argument("--list", action="store_true", help="list the scenarios and exit")
    faults.set_defaults(run=_faults)
