"""
ROS 2 package checks that run without ROS 2.

Launch files, config and package.xml must agree with what setup.py installs and the nodes
declare; check_ros_api.py checks every rclpy and launch call against the real Humble and Jazzy
APIs; flake8 and pep257 run with the plain tools, as the ament templates would run them.

``python3 test/test_ros_package.py`` regenerates config/boosted.yaml from the nodes' PARAMS.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import json
import os
import re
import runpy
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kb_ros.transport.backend import UPDATER_PARAMS, ParamSpec  # noqa: E402
from kb_ros.transport.ros_args import parse_ros_args  # noqa: E402

CHECKER = REPO.parent / "shared" / "ros_api" / "check_ros_api.py"
CONFIG = REPO / "config" / "boosted.yaml"
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
# Parameters every rclpy node declares itself; launch sets use_sim_time with SetParameter.
ROS_NODE_PARAMS = {"use_sim_time"}
# ament_pep257's default ("ament") convention: pydocstyle with these codes ignored, so a
# multi-line docstring starts its summary on the second line (D213; D212 is ignored).
AMENT_PEP257_IGNORE = "D100,D101,D102,D103,D104,D105,D106,D107,D203,D212,D404"
# Top-level import -> rosdep key. Keys checked in ros/rosdistro rosdep/python.yaml
# (python3-torch: ros/rosdistro#37485, python3-rosbags-pip: ros/rosdistro#37795).
ROSDEP_KEYS = {
    "numpy": "python3-numpy", "scipy": "python3-scipy", "yaml": "python3-yaml",
    "matplotlib": "python3-matplotlib", "torch": "python3-torch", "tqdm": "python3-tqdm",
    "rosbags": "python3-rosbags-pip", "sounddevice": "python3-sounddevice-pip",
    "zmq": "python3-zmq",
}
# Imports that need no exec_depend, and why.
NOT_EXEC_DEPENDS = {
    "cyclonedds": "standalone backend only (pip, no rosdep key); under ROS 2 nodes use rclpy",
    "pyroomacoustics": "optional reverberation for training data (kb_ros.data.rooms.available)",
}


# -- what setup.py installs and what the nodes declare ------------------------------------------

@functools.lru_cache
def setup_kwargs() -> dict[str, Any]:
    """Run setup.py with setuptools.setup replaced, returning what it would be given."""
    captured: dict[str, Any] = {}
    cwd = Path.cwd()
    try:
        os.chdir(REPO)  # setup.py globs relative paths
        with mock.patch("setuptools.setup", lambda **kwargs: captured.update(kwargs)):
            runpy.run_path("setup.py")
    finally:
        os.chdir(cwd)
    return captured


def node_modules() -> dict[str, str]:
    """Installed node executables and their modules, from setup.py's console_scripts."""
    scripts = setup_kwargs()["entry_points"]["console_scripts"]
    targets = dict(re.fullmatch(r"\s*(\S+)\s*=\s*([\w.]+):\w+\s*", s).groups() for s in scripts)
    return {exe: module for exe, module in targets.items() if ".nodes." in module}


def uses_diagnostics(module: types.ModuleType) -> bool:
    tree = ast.parse(Path(module.__file__).read_text())
    return any(isinstance(n, ast.Attribute) and n.attr == "add_diagnostic_task"
               for n in ast.walk(tree))


def declared_params() -> dict[str, list[ParamSpec]]:
    """Per executable: the parameters the node declares, in declaration order."""
    declared = {}
    for exe, module_name in node_modules().items():
        module = importlib.import_module(module_name)
        declared[exe] = list(module.PARAMS) + (UPDATER_PARAMS if uses_diagnostics(module)
                                               else [])
    return declared


@pytest.fixture(scope="module")
def declared() -> dict[str, list[ParamSpec]]:
    return declared_params()


# -- config/boosted.yaml ----------------------------------------------------------------------

CONFIG_HEADER = """\
# kb_ros node parameters and their defaults: every parameter each node declares. Generated from
# the nodes' PARAMS lists by `python3 test/test_ros_package.py`; a test checks it is current.
# launch/boosted.launch.py loads it; pass your own with params_file:=FILE (or --params-file FILE
# to a standalone node). Read-only parameters fix model shapes or wiring: set them at start-up.
# use_sim_time is not listed: launch sets it for every node (use_sim_time:=true).
"""


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _comment(spec: ParamSpec, indent: str) -> list[str]:
    notes = []
    if spec.choices:
        notes.append("one of " + ", ".join(spec.choices))
    for bounds in (spec.int_range, spec.float_range):
        if bounds:
            notes.append(f"range {bounds[0]}..{bounds[1]}")
    if spec.read_only:
        notes.append("read-only")
    text = spec.description + (f" ({'; '.join(notes)})" if notes else "")
    return textwrap.wrap(text, 99 - len(indent) - 2, break_on_hyphens=False,
                         initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}# ")


def render_config(declared: dict[str, list[ParamSpec]]) -> str:
    """config/boosted.yaml: each node's parameters, documented, with their defaults."""
    lines = [CONFIG_HEADER.rstrip("\n")]
    for exe, specs in declared.items():
        lines += ["", f"/**/{exe}:", "  ros__parameters:"]
        groups: dict[str, list[ParamSpec]] = {}
        for spec in specs:
            prefix, _, name = spec.name.rpartition(".")
            groups.setdefault(prefix, []).append(spec)
        for prefix, group in groups.items():
            indent = "    "
            if prefix:
                lines.append(f"    {prefix}:")
                indent = "      "
            for spec in group:
                lines += _comment(spec, indent)
                lines.append(f"{indent}{spec.name.rpartition('.')[2]}: "
                             f"{_yaml_value(spec.default)}")
    return "\n".join(lines) + "\n"


def test_config_is_generated_from_the_declared_parameters(declared):
    assert CONFIG.read_text() == render_config(declared), (
        "config/boosted.yaml is stale: run `python3 test/test_ros_package.py`")


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_config_sets_only_declared_parameters_with_valid_values(path, declared):
    for key in yaml.safe_load(path.read_text()):
        assert key.rpartition("/")[2] in declared, f"{key}: no such node executable"
    for exe, specs in declared.items():
        by_name = {spec.name: spec for spec in specs}
        params = parse_ros_args(["--ros-args", "--params-file", str(path)], exe, "/kb").params
        for name, value in params.items():
            assert name in by_name, f"{path.name}: {exe} does not declare {name!r}"
            spec = by_name[name]
            assert type(value) is type(spec.default), (
                f"{path.name}: {exe}.{name} is {type(value).__name__}, rclpy requires "
                f"{type(spec.default).__name__}")
            spec.check(value)
        if path == CONFIG:
            assert set(params) == set(by_name), f"{exe}: undocumented {set(by_name) - set(params)}"


def test_declared_parameters_are_well_formed(declared):
    for exe, specs in declared.items():
        names = [spec.name for spec in specs]
        assert len(names) == len(set(names)), f"{exe} declares a parameter twice"
        for spec in specs:
            assert spec.description, f"{exe}.{spec.name} has no description"
            assert re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*", spec.name), spec.name
            spec.check(spec.default)


# -- launch files -----------------------------------------------------------------------------

class Recorded:
    """A launch or launch_ros class or function as a launch file called it."""

    def __init__(self, kind: str, args: tuple, kwargs: dict) -> None:
        self.kind, self.args, self.kwargs = kind, args, kwargs

    def __repr__(self) -> str:
        return f"{self.kind}(...)"


def _stub(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []
    module.__getattr__ = lambda attr: (lambda *a, **k: Recorded(attr, a, k))
    return module


def load_launch(path: Path) -> Recorded:
    """Run generate_launch_description() with launch and launch_ros replaced by recorders."""
    tree = ast.parse(path.read_text(), str(path))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    stubs = {}
    for name in imported:
        parts = name.split(".")
        if parts[0] in ("launch", "launch_ros"):
            for i in range(1, len(parts) + 1):
                stubs.setdefault(".".join(parts[:i]), _stub(".".join(parts[:i])))
    with mock.patch.dict(sys.modules, stubs):
        spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.generate_launch_description()


def walk(value: Any) -> Iterator[Recorded]:
    if isinstance(value, Recorded):
        yield value
        value = [value.args, value.kwargs]
    if isinstance(value, dict):
        value = list(value.items())
    if isinstance(value, (list, tuple, type({}.items()))):
        for item in value:
            yield from walk(item)


def resolve(value: Any, args: dict[str, str]) -> Any:
    """Evaluate substitutions and conditions as launch would, for launch arguments ``args``."""
    if isinstance(value, (list, tuple)):
        return "".join(str(resolve(item, args)) for item in value)
    if not isinstance(value, Recorded):
        return value
    kind, first = value.kind, value.args[0] if value.args else None
    if kind == "LaunchConfiguration":
        return args[first]
    if kind == "PythonExpression":
        return str(eval(resolve(first, args)))
    if kind in ("IfCondition", "UnlessCondition"):
        return (resolve(first, args).lower() in ("true", "1")) == (kind == "IfCondition")
    if kind == "ParameterValue":
        return resolve(first, args)
    if kind == "PathJoinSubstitution":
        return "/".join(str(resolve(part, args)) for part in first)
    if kind == "FindPackageShare":
        return f"share/{first}"
    raise AssertionError(f"resolve() does not know {kind}")


def arguments(description: Recorded) -> dict[str, Recorded]:
    return {d.args[0]: d for d in walk(description) if d.kind == "DeclareLaunchArgument"}


def defaults(description: Recorded, **given: str) -> dict[str, str]:
    values = {name: d.kwargs.get("default_value") for name, d in arguments(description).items()}
    values.update(given)
    return {name: resolve(value, values) for name, value in values.items()}


def started(description: Recorded, args: dict[str, str]) -> set[tuple[str, str]]:
    """(namespace, executable) of every Node whose condition holds for ``args``."""
    return {(resolve(n.kwargs["namespace"], args), n.kwargs["executable"])
            for n in walk(description) if n.kind == "Node"
            and resolve(n.kwargs.get("condition", "true"), args) is not False}


@pytest.fixture(scope="module")
def launch() -> dict[str, Recorded]:
    return {path.name: load_launch(path) for path in LAUNCH_FILES}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_compiles(path):
    compile(path.read_text(), str(path), "exec")


def test_launch_files_are_installed():
    data_files = dict(setup_kwargs()["data_files"])
    assert sorted(data_files["share/kb_ros/launch"]) == [f"launch/{p.name}" for p in LAUNCH_FILES]
    assert "config/boosted.yaml" in data_files["share/kb_ros/config"]


def test_launch_files_name_installed_executables_and_declared_parameters(launch, declared):
    for name, description in launch.items():
        nodes = [n for n in walk(description) if n.kind == "Node"]
        for node in nodes:
            exe = node.kwargs["executable"]
            assert node.kwargs["package"] == "kb_ros" and exe in declared, f"{name}: {exe}"
            known = {spec.name for spec in declared[exe]} | ROS_NODE_PARAMS
            for params in node.kwargs.get("parameters", []):
                if isinstance(params, dict):
                    assert set(params) <= known, f"{name}: {exe} lacks {set(params) - known}"
        for action in walk(description):
            if action.kind == "SetParameter":
                assert action.kwargs["name"] in ROS_NODE_PARAMS, f"{name}: {action.kwargs}"


def test_launch_files_use_only_declared_arguments(launch):
    for name, description in launch.items():
        used = {c.args[0] for c in walk(description) if c.kind == "LaunchConfiguration"}
        assert used <= set(arguments(description)), f"{name}: {used - set(arguments(description))}"
        for include in (a for a in walk(description) if a.kind == "IncludeLaunchDescription"):
            target = resolve(include.args[0].args[0], {}).rpartition("/")[2]
            given = {key for key, _ in include.kwargs["launch_arguments"]}
            assert given <= set(arguments(launch[target])), f"{name} -> {target}: {given}"


def test_boosted_launch_arguments_are_the_documented_ones(launch):
    args = arguments(launch["boosted.launch.py"])
    assert set(args) == {"role", "input", "wav", "namespace", "link", "link_delay_ms",
                         "model_dir", "use_sim_time", "params_file", "bridge_address",
                         "bridge_port", "bridge_keys", "device"}
    assert args["role"].kwargs["choices"] == ["all", "device", "workstation"]
    assert all(a.kwargs.get("description") for a in args.values())


@pytest.mark.parametrize("given, nodes", [
    ({}, {("kb", "capture_node"), ("kb", "small_node"), ("kb", "playback_node"),
          ("kb", "link_node"), ("kb/remote", "hint_node")}),
    ({"link": "none"}, {("kb", "capture_node"), ("kb", "small_node"), ("kb", "playback_node"),
                        ("kb", "hint_node")}),
    ({"role": "device"}, {("kb", "capture_node"), ("kb", "small_node"), ("kb", "playback_node")}),
    ({"role": "device", "input": "none"}, {("kb", "small_node"), ("kb", "playback_node")}),
    ({"role": "workstation", "namespace": "robot1"}, {("robot1", "hint_node")}),
    ({"role": "device", "link": "bridge"}, {("kb", "capture_node"), ("kb", "small_node"),
                                            ("kb", "playback_node"), ("kb", "link_node")}),
    ({"role": "workstation", "link": "bridge", "device": "r2"}, {("kb", "link_node"),
                                                                 ("kb/r2", "hint_node")}),
    ({"link": "bridge"}, {("kb", "capture_node"), ("kb", "small_node"), ("kb", "playback_node"),
                          ("kb", "link_node"), ("kb/remote", "link_node"),
                          ("kb/remote/robot", "hint_node")}),
])
def test_boosted_launch_starts_the_right_nodes_for_each_role(launch, given, nodes):
    description = launch["boosted.launch.py"]
    assert started(description, defaults(description, **given)) == nodes


@pytest.mark.parametrize("hints, role, topics", [
    ("bag", "device", ["/kb/audio", "/kb/audio_info", "/kb/hints", "/kb/hint_info"]),
    ("live", "all", ["/kb/audio", "/kb/audio_info"]),
])
def test_replay_plays_inputs_on_sim_time_into_the_device_nodes(launch, hints, role, topics):
    description = launch["replay.launch.py"]
    args = defaults(description, bag="run1", hints=hints)
    include = next(a for a in walk(description) if a.kind == "IncludeLaunchDescription")
    given = {key: resolve(value, args) for key, value in include.kwargs["launch_arguments"]}
    assert given["role"] == role and given["use_sim_time"] == "true"
    assert given["input"] == "none" and given["link"] == "none"
    plays = [resolve(p.kwargs["condition"], args) and [resolve(part, args) for part in
                                                       p.kwargs["cmd"]]
             for p in walk(description) if p.kind == "ExecuteProcess"]
    (cmd,) = [p for p in plays if p]
    assert cmd[:5] == ["ros2", "bag", "play", "run1", "--clock"]
    assert cmd[cmd.index("--topics") + 1:] == topics


# -- static API check, package.xml, linters ---------------------------------------------------

def test_check_ros_api_reports_nothing():
    if not CHECKER.exists():
        pytest.skip(f"{CHECKER} not found (CI clones shared/ beside the repository)")
    result = subprocess.run([sys.executable, str(CHECKER), "--distro", "both", "kb_ros",
                             "launch"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^0 findings in \d+ files$", result.stdout, re.M), result.stdout


def _third_party_imports(root: Path) -> dict[str, bool]:
    """Top-level third-party imports under ``root``: name -> optional (guarded by ImportError)."""
    found: dict[str, bool] = {}
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        guarded = {id(node) for t in ast.walk(tree) if isinstance(t, ast.Try)
                   and any("ImportError" in ast.dump(h.type or ast.Name("")) for h in t.handlers)
                   for stmt in t.body for node in ast.walk(stmt)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "kb_ros":
                    found[top] = found.get(top, True) and id(node) in guarded
    return found


def test_package_xml_is_valid_and_lists_every_runtime_dependency():
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    package = catkin_pkg.parse_package(str(REPO))  # validates, raises InvalidPackage
    setup = setup_kwargs()
    assert (package.name, package.version) == (setup["name"], setup["version"])
    assert package.package_format == 3 and package.get_build_type() == "ament_python"
    exec_depends = {dep.name for dep in package.exec_depends}
    imports = _third_party_imports(REPO / "kb_ros") | _third_party_imports(REPO / "launch")
    for name, optional in sorted(imports.items()):
        if name in NOT_EXEC_DEPENDS:
            continue
        key = ROSDEP_KEYS.get(name, name)  # ROS packages import as their package name
        assert optional or key in exec_depends, f"package.xml lacks <exec_depend>{key}<"
    assert {"ros2launch", "ros2bag"} <= exec_depends  # ros2 launch, ros2 bag play


def test_flake8():
    result = subprocess.run([sys.executable, "-m", "flake8"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pep257():
    """
    Every .py file of the package follows ament_pep257's convention.

    Same files as the ament_python template's ``ament_pep257.main.main(argv=['.', 'test'])``
    run from the package root: all .py files outside directories starting with ``.`` or ``_``.
    """
    pytest.importorskip("pydocstyle")
    result = subprocess.run([sys.executable, "-m", "pydocstyle", f"--ignore={AMENT_PEP257_IGNORE}",
                             r"--match=.*\.py", r"--match-dir=[^\._].*", "."],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


if __name__ == "__main__":
    CONFIG.write_text(render_config(declared_params()))
    print(f"wrote {CONFIG.relative_to(REPO)}")
