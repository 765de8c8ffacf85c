"""Fixtures shared by the test files."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny ops on a shared 2-core box: a second intra-op thread only spins and stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def onnx_graphs_of_shipped_models():
    """
    Export the shipped models' ONNX graphs into the cache once, up front.

    The first start with a model exports it (seconds of CPU): a node process doing so in the
    middle of a timed test would load this 2-core machine like an injected fault. Single-stream
    steps of every shipped model (nodes, bag replay, evaluation) and the batch-free steps of
    the hint producers (hint_node serves ``small`` in the fault scenarios).
    """
    from kb_ros.nodes.common import prepare_node_steps
    prepare_node_steps(("small", "kb", "large"), ("small", "large"))
