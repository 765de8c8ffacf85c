"""Argument types of the ``kb-ros`` command line: bad values fail at parsing, naming the option."""

from __future__ import annotations

import argparse
import math

from kb_ros.transport.ros_args import expand_topic_name


def finite_float(text: str) -> float:
    """Parse a finite float: ``nan`` and ``inf`` would only fail later, less clearly."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def topic_name(text: str) -> str:
    """Check a ROS topic or namespace name as rcl does (relative names allowed)."""
    try:
        expand_topic_name(text, "/", "kb_ros")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text
