"""
The one-chunk step run by ONNX Runtime: ``TracedStep``'s graph with a cheaper call per op.

A device step is a few hundred tiny ops, so what each op costs to call matters more than its
arithmetic. ONNX Runtime calls its kernels from C++ and fuses some of them: on this project's
2-core VM (one thread, steps back to back) ``ChunkEngine`` runs the kb step in 0.74 ms
against TorchScript's 1.19 (p99 1.27 against 2.39), the bare large step in about 2 ms against
3. At the real pace of one chunk per 8 ms both are slower (caches go cold between chunks) and
the gap narrows (docs/BENCHMARKS.md).

Exporting (``torch.onnx.export``, the dynamo exporter) takes seconds, so the exported graphs are
cached on disk, keyed by the weights, the config, the batch and the library versions: only the
first start with a model pays it. Every new session is checked against the torch model on a
few random chunks before use. Whatever goes wrong (onnxruntime or onnxscript not installed, an
op the exporter cannot take, a mismatch) raises ``OnnxUnavailable``; ``build_step`` then falls
back to TorchScript and says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from kb_ros.models.filterbank import HOP
from kb_ros.models.model import StreamingModel
from kb_ros.models.ring import PackedState, StateStore, ring_state
from kb_ros.models.traced import EagerStep, FlatStep, TracedStep, _Step

RUNTIMES = ("auto", "onnx", "torchscript", "eager")
CHECK_CHUNKS = 5
CHECK_ATOL = 1e-4
_EXPORT_BATCH = 2  # torch.export specializes sizes 0 and 1, so a batch-free graph is traced at 2
_VERSIONED = ("torch", "onnx", "onnxscript", "onnxruntime")
# onnxscript's graph optimizer (0.7.2) takes ``x + 1e-8`` (the magnitude compression's epsilon)
# for ``x + 0`` and drops it, which turns silent input into NaN. ONNX Runtime optimizes the
# graph itself when it loads it: timed back to back, the two graphs are within noise.
_EXPORT_OPTIONS = {"dynamo": True, "optimize": False}


class OnnxUnavailable(RuntimeError):
    """This model cannot run on ONNX Runtime here; the message says why."""


def cache_dir() -> Path:
    """``$KB_ROS_CACHE_DIR``, else ``$XDG_CACHE_HOME/kb_ros``, else ``~/.cache/kb_ros``."""
    if os.environ.get("KB_ROS_CACHE_DIR"):
        return Path(os.environ["KB_ROS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kb_ros"


def _versions() -> str:
    try:
        return ",".join(f"{name}={metadata.version(name)}" for name in _VERSIONED)
    except metadata.PackageNotFoundError as err:
        raise OnnxUnavailable(f"{err.name} is not installed (pip install 'kb_ros[onnx]')"
                              ) from None


def graph_key(model: StreamingModel, batch: int | None, hinted: bool, ring: bool = False) -> str:
    """Digest everything the exported graph depends on (its cache file's name)."""
    digest = hashlib.sha256(
        f"{model.config!r}|{batch}|{hinted}|{ring}|{_EXPORT_OPTIONS}|{_versions()}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def graph_path(model: StreamingModel, batch: int | None, hinted: bool, ring: bool = False,
               cache: Path | None = None) -> Path:
    """Return where the exported graph of this step is cached (it may not be there yet)."""
    return (cache or cache_dir() / "onnx") / f"{graph_key(model, batch, hinted, ring)}.onnx"


class OnnxStep(FlatStep):
    """
    ``FlatStep`` on ONNX Runtime (CPU). ``batch`` None exports one graph for any batch size.

    Raises ``OnnxUnavailable`` when it cannot be built or does not match the torch model.
    """

    runtime = "onnxruntime"

    def __init__(self, model: StreamingModel, batch: int | None = 1, *, threads: int = 1,
                 cache: Path | None = None, ring: bool = False) -> None:
        param = next(model.parameters())
        if param.device.type != "cpu" or param.dtype != torch.float32:
            raise OnnxUnavailable("ONNX Runtime is used for float32 CPU models only")
        try:
            import onnxruntime
        except ImportError:
            raise OnnxUnavailable("onnxruntime is not installed (pip install 'kb_ros[onnx]')"
                                  ) from None
        super().__init__(model.eval(), batch, ring)
        self._ort = onnxruntime
        self._threads = threads
        self._cache = cache  # None: cache_dir() / "onnx"
        self.exported = 0  # graphs exported by this step (0 when all came from the cache)
        self._plain = self._session(hinted=False)
        self._hinted = self._session(hinted=True) if model.config.uses_hints else None
        self._check()

    def sessions(self) -> dict[bool, tuple[Any, list[str]]]:
        """Return each graph's session and input names, keyed by whether it takes a hint."""
        graphs = {False: self._plain}
        if self._hinted is not None:
            graphs[True] = self._hinted
        return graphs

    def bindable(self, array: Any) -> Any:
        """Wrap a numpy ``array`` (not copied) as the value an IOBinding binds."""
        return self._ort.OrtValue.ortvalue_from_numpy(array)

    def _session(self, hinted: bool) -> tuple[Any, list[str]]:
        """Load the graph from the cache, else export it (and cache it where writable)."""
        inputs = (3 if hinted else 1) + len(self._initial)  # mix (, hint, age), the state
        path = graph_path(self.model, self.batch, hinted, self.ring, self._cache)
        if path.exists():
            try:
                return self._load(str(path), inputs)
            except OnnxUnavailable:
                with contextlib.suppress(OSError):  # a torn or foreign file: export again
                    path.unlink(missing_ok=True)
        proto = self._export(hinted)
        self.exported += 1
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
                tmp.write(proto)
            os.replace(tmp.name, path)  # atomic: nodes starting together may export at once
        except OSError:
            pass  # a read-only cache: the next start exports again
        return self._load(proto, inputs)

    def _load(self, graph: str | bytes, inputs: int) -> tuple[Any, list[str]]:
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = max(self._threads, 1)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = self._ort.InferenceSession(graph, options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - any load failure means: not usable here
            raise OnnxUnavailable(f"ONNX Runtime cannot load the graph: {_first_line(err)}"
                                  ) from err
        names = [node.name for node in session.get_inputs()]
        if len(names) != inputs:
            raise OnnxUnavailable(f"the graph takes {len(names)} inputs, the step has {inputs}")
        return session, names

    def _example(self, hinted: bool) -> tuple[Tensor, ...]:
        cfg = self.model.config
        batch = self.batch or _EXPORT_BATCH
        state = self.model.initial_state(batch, torch.device("cpu"), torch.float32)
        if self.ring:
            state = ring_state(state)
        head: tuple[Tensor, ...] = (torch.zeros(batch, cfg.in_channels, HOP),)
        if hinted:
            head += (torch.zeros(batch, cfg.n_sources, HOP),
                     torch.full((batch, 1), cfg.min_age, dtype=torch.long))
        return head + tuple(self.pack(state))

    def _dynamic_shapes(self, example: tuple[Tensor, ...]) -> tuple[Any, ...] | None:
        """Mark the batch dim of every input; state rows may hold ``k * batch`` (k per stream)."""
        if self.batch is not None:
            return None
        batch = torch.export.Dim("batch", min=1, max=1024)
        one = self._initial
        n_head = len(example) - len(one)
        specs: list[dict[int, Any]] = [{0: batch}] * n_head
        for fresh, tensor in zip(one, example[n_head:]):
            rows = tensor.shape[0] // _EXPORT_BATCH
            if fresh.shape[0] != rows or tensor.shape[1:] != fresh.shape[1:]:
                raise OnnxUnavailable("a state tensor does not hold its batch in dim 0")
            specs.append({0: batch * rows if rows > 1 else batch})
        return (specs[0], tuple(specs[1:]))

    def _export(self, hinted: bool) -> bytes:
        example = self._example(hinted)
        module = _Step(self.model, self._template, hinted)  # the template only gives structure
        try:
            import onnxscript  # noqa: F401 - the dynamo exporter needs it
        except ImportError:
            raise OnnxUnavailable("onnxscript is not installed (pip install 'kb_ros[onnx]')"
                                  ) from None
        try:
            with torch.no_grad(), warnings.catch_warnings(), _quiet_torch_onnx(), \
                    contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(module, example, verbose=False, **_EXPORT_OPTIONS,
                                            dynamic_shapes=self._dynamic_shapes(example))
            return program.model_proto.SerializeToString()
        except OnnxUnavailable:
            raise
        except Exception as err:  # noqa: BLE001 - the exporter raises many kinds
            raise OnnxUnavailable(f"export failed: {type(err).__name__}: {_first_line(err)}"
                                  ) from err

    def _check(self) -> None:
        """Compare a few streamed chunks with the torch model (two batch sizes if batch-free)."""
        generator = torch.Generator().manual_seed(0)
        cfg = self.model.config
        for batch in ([self.batch] if self.batch else [1, 3]):
            ref_state = None
            store = StateStore(self._initial, self.rings, batch // (self.batch or 1))
            streams = range(store.max_streams)
            for chunk in range(CHECK_CHUNKS):  # silence first: it takes every epsilon
                mix = 0.1 * chunk * torch.randn(batch, cfg.in_channels, HOP, generator=generator)
                hint = age = None
                if cfg.uses_hints:
                    hint = 0.1 * torch.randn(batch, cfg.n_sources, HOP, generator=generator)
                    age = torch.full((batch, 1), cfg.min_age, dtype=torch.long)
                with torch.no_grad():
                    ref, ref_state = self.model(mix, hint, age, ref_state)
                try:
                    out, new = self(mix, hint, age, store.gather(streams))
                    store.commit(streams, new)
                except Exception as err:  # noqa: BLE001 - a graph that cannot run is unusable
                    raise OnnxUnavailable("the exported step fails: "
                                          f"{_first_line(err)}") from err
                if not torch.allclose(out, ref, rtol=0, atol=CHECK_ATOL, equal_nan=True):
                    error = float((out - ref).abs().nan_to_num(float("inf")).max())
                    raise OnnxUnavailable(f"the exported step differs from the model by {error}")

    @staticmethod
    def _run(graph: tuple[Any, list[str]], inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        session, names = graph
        feeds = {name: tensor.numpy() for name, tensor in zip(names, inputs)}
        return tuple(torch.from_numpy(array) for array in session.run(None, feeds))

    def _run_plain(self, mix: Tensor, packed: PackedState) -> tuple[Tensor, ...]:
        return self._run(self._plain, (mix, *packed))

    def _run_hinted(self, mix: Tensor, hint: Tensor, age: Tensor,
                    packed: PackedState) -> tuple[Tensor, ...]:
        return self._run(self._hinted, (mix, hint, age, *packed))


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(err).__name__


@contextlib.contextmanager
def _quiet_torch_onnx() -> Iterator[None]:
    """Silence the exporter's warning per optional op library (torchvision) it lacks."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _onnx_step(model: StreamingModel, runtime: str, batch: int | None, threads: int,
               ring: bool = False) -> tuple[OnnxStep | None, str]:
    """Build the ONNX step ``runtime`` asks for, or return None and why not."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime not in ("auto", "onnx"):
        return None, ""
    try:
        return OnnxStep(model, batch, threads=threads, ring=ring), ""
    except OnnxUnavailable as err:
        if runtime == "onnx":
            raise
        return None, f"ONNX Runtime not used ({err}); running TorchScript"


def build_step(model: StreamingModel, runtime: str = "auto", threads: int = 1,
               ring: bool = False) -> tuple[FlatStep, str]:
    """
    Return the fastest one-stream step ``runtime`` allows and a note on any fallback ('').

    ``auto``: ONNX Runtime for CPU models, else TorchScript. ``onnx`` insists (raises
    ``OnnxUnavailable``). ``eager`` runs the model op by op. ``ring``: see ``FlatStep``.
    """
    step, note = _onnx_step(model, runtime, 1, threads, ring)
    if step is not None:
        return step, note
    kind = EagerStep if runtime == "eager" else TracedStep
    return kind(model, ring=ring), note


def build_batched_steps(model: StreamingModel, max_streams: int, runtime: str = "auto",
                        threads: int = 1, ring: bool = False) -> tuple[list[FlatStep], str]:
    """
    Return a step for each batch size 1..max_streams and a note on any fallback.

    On ONNX Runtime one batch-free graph serves every size from 2, and batch 1 (a server with
    one device, or one stream in a step) gets the fixed-size graph single-stream engines use:
    a third cheaper there (the large step 1.9 against 2.9 ms of CPU on this project's VM),
    where at batch 8 a fixed size saves a tenth. TorchScript needs a trace per size.
    ``ring``: see ``FlatStep``.
    """
    if runtime == "eager":
        raise ValueError("a batched engine runs a compiled step (auto, onnx or torchscript)")
    step, note = _onnx_step(model, runtime, None, threads, ring)
    if step is not None:
        single, _ = _onnx_step(model, runtime, 1, threads, ring)
        return [single or step] + [step] * (max_streams - 1), note
    return [TracedStep(model, batch, ring=ring) for batch in range(1, max_streams + 1)], note
