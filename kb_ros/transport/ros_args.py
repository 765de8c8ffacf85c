"""
ROS 2 command-line arguments without ROS: ``--ros-args -p/-r/--params-file/--log-level``.

The standalone backend must accept exactly what ``ros2 run`` and launch pass, so one command
line works with and without ROS 2. Semantics follow rcl: parameter values are YAML scalars
(YAML 1.2 numbers, so ``1e-3`` is a float), params files are ``<node>: {ros__parameters: ...}``
with nested namespaces and ``/*``, ``/**`` wildcards, later files override earlier ones and
``-p`` overrides every file; remaps may be prefixed ``node:`` to apply to one node only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

BACKENDS = ("dds", "ros")
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
# One token of a node name, namespace or topic name (ROS 2 naming rules).
_TOKEN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# ROS arguments that only steer rcl logging or security: accepted, meaningless here.
_IGNORED_FLAGS = {"--enable-rosout-logs", "--disable-rosout-logs", "--enable-stdout-logs",
                  "--disable-stdout-logs", "--enable-external-lib-logs",
                  "--disable-external-lib-logs"}
_IGNORED_WITH_VALUE = {"--log-config-file", "--log-file-name", "-e", "--enclave"}


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads ``1e-3`` as a string (YAML 1.1); rcl reads it as a double, so do we."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)$"),
    list("-+0123456789."))


@dataclass
class RosArgs:
    """
    The parsed command line.

    ``backend`` is None when the user did not choose one; ``dds_interface`` None means
    loopback only; ``other_args`` are the arguments outside ``--ros-args`` blocks, for the node.
    """

    node_name: str
    namespace: str
    params: dict[str, Any] = field(default_factory=dict)
    remaps: dict[str, str] = field(default_factory=dict)
    log_level: str | None = None
    backend: str | None = None
    dds_interface: str | None = None
    other_args: list[str] = field(default_factory=list)

    @property
    def fully_qualified_name(self) -> str:
        return join_name(self.namespace, self.node_name)

    def resolve_topic(self, name: str) -> str:
        """Return the absolute topic name after namespace expansion and remapping, as rcl does."""
        expanded = expand_topic_name(name, self.namespace, self.node_name)
        for old, new in self.remaps.items():
            if expand_topic_name(old, self.namespace, self.node_name) == expanded:
                return expand_topic_name(new, self.namespace, self.node_name)
        return expanded


def join_name(namespace: str, name: str) -> str:
    return namespace.rstrip("/") + "/" + name


def expand_topic_name(name: str, namespace: str, node_name: str) -> str:
    """Expand ``~`` and relative names against the node; raise ValueError on invalid names."""
    if name.startswith("~"):
        name = join_name(join_name(namespace, node_name), name[1:].lstrip("/")).rstrip("/")
    elif not name.startswith("/"):
        name = join_name(namespace, name)
    tokens = name[1:].split("/")
    if not all(_TOKEN_RE.match(token) for token in tokens):
        raise ValueError(f"invalid topic name {name!r}: tokens must be [A-Za-z_][A-Za-z0-9_]*, "
                         "separated by single '/', with no trailing '/'")
    return name


def parse_param_value(text: str, where: str = "parameter") -> Any:
    """Parse a ``-p`` value as rcl does: a YAML scalar or a homogeneous list of scalars."""
    try:
        value = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: cannot parse {text!r} as YAML: {_one_line(exc)}") from None
    return _check_value(value, where)


def _check_value(value: Any, where: str) -> Any:
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        kinds = {type(item) for item in value}
        if not all(issubclass(kind, (bool, int, float, str)) for kind in kinds):
            raise ValueError(f"{where}: list items must be scalars, got {value!r}")
        if len(kinds) > 1:
            raise ValueError(f"{where}: list items must all have one type, got {value!r}")
        return value
    if value is None:
        raise ValueError(f"{where}: empty value")
    raise ValueError(f"{where}: unsupported value {value!r} (need a scalar or a list)")


def _node_pattern(key: str) -> re.Pattern[str]:
    """Compile a node key with rcl's wildcards: ``/*`` is one token, ``/**`` any number."""
    regex = ""
    for part in re.split(r"(/\*\*|/\*)", key):
        if part == "/**":
            regex += r"(?:/[A-Za-z0-9_]+)*"
        elif part == "/*":
            regex += r"/[A-Za-z0-9_]+"
        else:
            regex += re.escape(part)
    return re.compile(regex + r"\Z")


def _flatten(params: dict[str, Any], prefix: str, where: str) -> Iterator[tuple[str, Any]]:
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".", where)
        else:
            yield name, _check_value(value, f"{where}: parameter {name!r}")


def _node_sections(tree: dict[str, Any], path: tuple[str, ...], where: str
                   ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (node key, ros__parameters) in file order; nested keys are namespaces."""
    for key, value in tree.items():
        if not isinstance(value, dict):
            raise ValueError(f"{where}: {'/'.join(path + (str(key),))!r} must map to "
                             f"'ros__parameters' or to nested node names, got {value!r}")
        if key == "ros__parameters":
            if not path:
                raise ValueError(f"{where}: 'ros__parameters' must sit under a node name")
            yield "/" + "/".join(path), value
        else:
            yield from _node_sections(value, path + (str(key).strip("/"),), where)


def _one_line(exc: yaml.YAMLError) -> str:
    """Put a YAML error on one line: its problem and where (PyYAML uses several)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def load_params_file(path: str, fully_qualified_name: str) -> dict[str, Any]:
    """Return the parameters a ROS params file gives the node ``fully_qualified_name``."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"params file {path!r} does not exist")
    try:
        tree = yaml.load(file.read_text(encoding="utf-8"), Loader=_Yaml12Loader)  # noqa: S506
    except UnicodeDecodeError as exc:
        raise ValueError(f"params file {path!r} is not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"params file {path!r} is not valid YAML: {_one_line(exc)}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ValueError(f"params file {path!r}: expected '<node>: {{ros__parameters: ...}}'")
    params: dict[str, Any] = {}
    for node_key, section in _node_sections(tree, (), f"params file {path!r}"):
        if _node_pattern(node_key).match(fully_qualified_name):
            params.update(_flatten(section, "", f"params file {path!r}"))
    return params


def _split_assignment(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.partition(":=")
    if not sep or not name:
        raise ValueError(f"{flag} expects 'name:=value', got {text!r}")
    return name, value


def _take_value(tokens: list[str], i: int, flag: str) -> str:
    if i + 1 >= len(tokens) or tokens[i + 1] in ("--", "--ros-args"):
        raise ValueError(f"{flag} needs a value")
    return tokens[i + 1]


def parse_ros_args(argv: list[str], node_name: str, namespace: str = "/kb") -> RosArgs:
    """
    Parse ``argv`` (without the program name) for a node with the given default names.

    Outside ``--ros-args`` blocks, ``--backend dds|ros`` and ``--dds-interface IFACE`` are
    taken; everything else is left to the node in ``other_args``.

    Raises ValueError with a message naming the bad argument on any malformed input.
    """
    other: list[str] = []
    param_args: list[tuple[str, str]] = []
    param_files: list[str] = []
    remap_rules: list[tuple[str, str]] = []
    log_level: str | None = None
    backend: str | None = None
    dds_interface: str | None = None
    in_ros_args = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--ros-args":
            in_ros_args = True
        elif not in_ros_args:
            flag, eq, value = arg.partition("=")
            if flag in ("--backend", "--dds-interface"):
                if not eq:
                    value = _take_value(argv, i, flag)
                    i += 1
                if flag == "--dds-interface":
                    dds_interface = value
                elif value not in BACKENDS:
                    raise ValueError(f"--backend must be one of {list(BACKENDS)}, got {value!r}")
                else:
                    backend = value
            else:
                other.append(arg)
        elif arg == "--":
            in_ros_args = False
        elif arg in ("-p", "--param"):
            param_args.append(_split_assignment(_take_value(argv, i, arg), arg))
            i += 1
        elif arg in ("-r", "--remap"):
            remap_rules.append(_split_assignment(_take_value(argv, i, arg), arg))
            i += 1
        elif arg == "--params-file":
            param_files.append(_take_value(argv, i, arg))
            i += 1
        elif arg == "--log-level":
            log_level = _parse_log_level(_take_value(argv, i, arg), node_name) or log_level
            i += 1
        elif arg in _IGNORED_WITH_VALUE:
            _take_value(argv, i, arg)
            i += 1
        elif arg not in _IGNORED_FLAGS:
            raise ValueError(f"unknown ROS argument {arg!r} (after --ros-args)")
        i += 1

    node_name, namespace, remaps = _apply_remaps(remap_rules, node_name, namespace)
    result = RosArgs(node_name, namespace, remaps=remaps, log_level=log_level,
                     backend=backend, dds_interface=dds_interface, other_args=other)
    for path in param_files:
        result.params.update(load_params_file(path, result.fully_qualified_name))
    for name, text in param_args:
        result.params[name] = parse_param_value(text, f"-p {name}:={text}")
    return result


def _parse_log_level(text: str, node_name: str) -> str | None:
    """``--log-level LEVEL`` or ``--log-level LOGGER:=LEVEL`` (only our node's logger counts)."""
    logger, sep, level = text.rpartition(":=")
    if sep and logger != node_name:
        return None
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"--log-level must be one of {list(LOG_LEVELS)}, got {level!r}")
    return level.lower()


def _apply_remaps(rules: list[tuple[str, str]], node_name: str, namespace: str
                  ) -> tuple[str, str, dict[str, str]]:
    """Split node-name/namespace rules from topic rules; drop rules aimed at other nodes."""
    original_name = node_name
    remaps: dict[str, str] = {}
    for lhs, new in rules:
        target, sep, old = lhs.rpartition(":")
        if sep and target != original_name:
            continue
        if old in ("__node", "__name"):
            if not _TOKEN_RE.match(new):
                raise ValueError(f"invalid node name {new!r} in -r {lhs}:={new}")
            node_name = new
        elif old == "__ns":
            namespace = new.rstrip("/") or "/"
            if not new.startswith("/") or not (namespace == "/" or all(
                    _TOKEN_RE.match(token) for token in namespace[1:].split("/"))):
                raise ValueError(f"namespace must be absolute, made of [A-Za-z_][A-Za-z0-9_]* "
                                 f"tokens: -r {lhs}:={new}")
        else:
            remaps.setdefault(old, new)  # rcl: the first matching rule wins
    return node_name, namespace, remaps
