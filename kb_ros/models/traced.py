"""
Compiled one-chunk steps: ``StreamingModel`` without its per-op Python overhead.

A kb step is ~200 tiny torch ops. Called from Python each op also costs argument parsing and
dispatch, about 40% of the step on one CPU thread. ``FlatStep`` is what every compiled step
shares (a flat tuple of state tensors, the input checks, a graph with and one without a hint);
``TracedStep`` is the TorchScript one, a trace that runs the same kernels in the same order
(bit-identical output). ``kb_ros.models.onnx_step.OnnxStep`` runs the same graph on ONNX
Runtime, faster again. ``torch.jit`` is deprecated in favour of ``torch.compile``/
``torch.export``, but on CPU those do not speed these models up, so it is the fallback here,
for inference only.

A trace bakes in the batch size, the chunk length (one chunk) and whether a hint is given, so
there are two traces (with and without a hint). The state is carried as a flat tuple of
tensors; ``unpack``/``pack`` convert from and to ``State``.

``freeze`` folds the weights into the graphs (``torch.jit.freeze``) and ``optimize`` also runs
``torch.jit.optimize_for_inference``: measured no faster for these models (``kb-ros bench``,
docs/BENCHMARKS.md).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from kb_ros.models.filterbank import HOP
from kb_ros.models.model import StreamingModel
from kb_ros.models.ring import PackedState, ring_fields, ring_state
from kb_ros.models.state import State, flatten_tensors, unflatten_tensors


class _Step(nn.Module):
    """``forward_unchecked`` with a flat tensor signature, as ``torch.jit.trace`` needs."""

    def __init__(self, model: StreamingModel, template: State, hinted: bool) -> None:
        super().__init__()
        self.model, self.template, self.hinted = model, template, hinted

    def forward(self, mix: Tensor, *args: Tensor) -> tuple[Tensor, ...]:
        hint, age, flat = (args[0], args[1], args[2:]) if self.hinted else (None, None, args)
        out, state = self.model.forward_unchecked(mix, hint, age,
                                                  unflatten_tensors(self.template, flat))
        return (out, *flatten_tensors(state))


class FlatStep:
    """
    What every compiled one-chunk step shares: the flat state, the input checks, two graphs.

    ``step(mix [B, C, HOP], used_hint, hint_age, state) -> (out, state)`` for one chunk, with
    the contract and checks of ``StreamingModel.forward`` and ``state`` a ``PackedState``
    (None at the start of a stream). ``batch`` None means any batch size. With ``ring`` the
    attention caches in ``state`` are rings and the state returned holds only their new frames:
    a ``kb_ros.models.ring.StateStore`` keeps the state and writes them in place.
    """

    runtime = ""

    def __init__(self, model: StreamingModel, batch: int | None, ring: bool = False) -> None:
        self.model, self.batch, self.ring = model, batch, ring
        param = next(model.parameters())
        self._template = model.initial_state(batch or 1, param.device, param.dtype)
        if ring:
            self._template = ring_state(self._template)
        self._initial = flatten_tensors(self._template)
        self.rings = ring_fields(self._template)  # empty unless ``ring``

    def initial_state(self) -> PackedState:
        """Return the packed state of a fresh stream (of one when ``batch`` is None)."""
        return self._initial

    def pack(self, state: State) -> PackedState:
        return flatten_tensors(state)

    def unpack(self, packed: PackedState) -> State:
        return unflatten_tensors(self._template, packed)

    def __call__(self, mix: Tensor, used_hint: Tensor | None = None,
                 hint_age: Tensor | None = None,
                 state: PackedState | None = None) -> tuple[Tensor, PackedState]:
        if (self.batch is not None and mix.shape[0] != self.batch) or mix.shape[-1] != HOP:
            raise ValueError(f"this step takes [{self.batch or 'B'}, C, {HOP}], "
                             f"got {list(mix.shape)}")
        age = self.model.check_inputs(mix, used_hint, hint_age)  # None: no hint, or no fusion
        packed = self._initial if state is None else state
        if age is None:
            result = self._run_plain(mix, packed)
        else:
            result = self._run_hinted(mix, used_hint, age, packed)
        return result[0], tuple(result[1:])

    def _run_plain(self, mix: Tensor, packed: PackedState) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _run_hinted(self, mix: Tensor, hint: Tensor, age: Tensor,
                    packed: PackedState) -> tuple[Tensor, ...]:
        raise NotImplementedError


class EagerStep(FlatStep):
    """``StreamingModel`` itself behind the ``FlatStep`` interface: Python per op, any device."""

    runtime = "eager"

    def __init__(self, model: StreamingModel, batch: int | None = 1, ring: bool = False) -> None:
        super().__init__(model, batch, ring)
        self._plain = _Step(model, self._template, hinted=False)
        self._hinted = _Step(model, self._template, hinted=True)

    def _run_plain(self, mix: Tensor, packed: PackedState) -> tuple[Tensor, ...]:
        return self._plain(mix, *packed)

    def _run_hinted(self, mix: Tensor, hint: Tensor, age: Tensor,
                    packed: PackedState) -> tuple[Tensor, ...]:
        return self._hinted(mix, hint, age, *packed)


class TracedStep(FlatStep):
    """
    The TorchScript step: bit-identical to ``StreamingModel.forward``, without Python per op.

    Build it after the weights are final, in eval mode.
    """

    runtime = "torchscript"

    def __init__(self, model: StreamingModel, batch: int = 1, freeze: bool = False,
                 optimize: bool = False, ring: bool = False) -> None:
        super().__init__(model, batch, ring)
        cfg = model.config
        param = next(model.parameters())
        mix = param.new_zeros(batch, cfg.in_channels, HOP)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the baked-in structure
            self._plain = torch.jit.trace(_Step(model, self._template, hinted=False),
                                          (mix, *self._initial), check_trace=False)
            self._hinted = None
            if cfg.uses_hints:
                hint = param.new_zeros(batch, cfg.n_sources, HOP)
                age = torch.full((batch, 1), cfg.min_age, device=param.device)
                self._hinted = torch.jit.trace(_Step(model, self._template, hinted=True),
                                               (mix, hint, age, *self._initial),
                                               check_trace=False)
        if freeze or optimize:
            self._plain = self._frozen(self._plain, optimize)
            if self._hinted is not None:
                self._hinted = self._frozen(self._hinted, optimize)

    @staticmethod
    def _frozen(graph: torch.jit.ScriptModule, optimize: bool) -> torch.jit.ScriptModule:
        frozen = torch.jit.freeze(graph.eval())
        return torch.jit.optimize_for_inference(frozen) if optimize else frozen

    def op_count(self, hinted: bool = True) -> int:
        """Count the aten ops one step runs (each costs microseconds of dispatch on a CPU)."""
        graph = self._hinted if hinted and self._hinted is not None else self._plain
        return sum(node.kind().startswith("aten::") for node in graph.inlined_graph.nodes())

    def _run_plain(self, mix: Tensor, packed: PackedState) -> tuple[Tensor, ...]:
        return self._plain(mix, *packed)

    def _run_hinted(self, mix: Tensor, hint: Tensor, age: Tensor,
                    packed: PackedState) -> tuple[Tensor, ...]:
        return self._hinted(mix, hint, age, *packed)
