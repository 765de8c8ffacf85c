"""
Where a batched step's time goes, per ONNX op type: ONNX Runtime's own profiler on the graph.

The hint server's step is the engine's exported graph (``kb_ros.models.onnx_step``); its
profiler times every kernel. Summed per op type this says which work grows with the number of
streams (the recurrent scans, the attention products) and which is a fixed cost per step.
The profiler adds a few microseconds per kernel, so shares of a graph of tiny ops are skewed;
at a batch of several streams the kernels are large enough for the shares to hold.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from kb_ros.models.model import StreamingModel
from kb_ros.models.onnx_step import graph_path
from kb_ros.models.ring import rings_pay


def _dim(dim: Any, batch: int) -> int:
    """Return a graph input's dim for ``batch``: a number, ``batch`` or ``k*batch``."""
    if isinstance(dim, int):
        return dim
    match = re.fullmatch(r"(?:(\d+)\*)?batch", str(dim).replace(" ", ""))
    if match is None:
        raise ValueError(f"unexpected symbolic dim {dim!r}")
    return int(match.group(1) or 1) * batch


def op_profile(model: StreamingModel, batch: int, steps: int) -> dict[str, Any] | None:
    """
    Profile ``steps`` runs of the model's batch-free graph at ``batch``: kernel ms per op type.

    Op types come most costly first.

    Returns None where the graph is not in the ONNX cache (onnxruntime missing, a read-only
    cache, a TorchScript fallback): there is then no graph the server runs to profile.
    """
    path = graph_path(model, None, False, rings_pay(model.config))
    try:
        import onnxruntime
    except ImportError:
        return None
    if not path.exists():
        return None
    with tempfile.TemporaryDirectory(prefix="kb_ops_") as tmp:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "step")
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
        feeds = {node.name: np.zeros([_dim(d, batch) for d in node.shape],
                                     np.int64 if "int64" in node.type else np.float32)
                 for node in session.get_inputs()}
        for _ in range(steps):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    kernel_us: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kernel_us[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
    total_us = sum(kernel_us.values())
    rows = [{"op": op, "nodes": nodes[op] // steps, "ms": round(us / steps / 1e3, 4),
             "share": round(us / total_us, 4)} for op, us in kernel_us.most_common()]
    return {"batch": batch, "steps": steps, "kernel_ms": round(total_us / steps / 1e3, 4),
            "nodes": sum(nodes.values()) // steps, "ops": rows}
