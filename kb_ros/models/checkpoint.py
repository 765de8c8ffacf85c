"""
Model checkpoints: float32 weights plus a JSON manifest, as a directory or a single file.

A directory holds ``manifest.json`` (readable without torch) and ``weights.pt``; a single
``.pt``/``.pth``/``.ckpt`` file holds both. The ``model_id`` (``<name>-<hash of the weights>``)
names the exact weights: hints carry it so a small model can reject hints from a large model it
was not trained with, and loading checks it to catch corrupted files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kb_ros.models.config import ModelConfig
from kb_ros.models.filterbank import (ALGORITHMIC_LATENCY_SAMPLES, HOP, LOOKAHEAD, N_FFT,
                                      OUTPUT_DELAY_SAMPLES, SAMPLE_RATE)
from kb_ros.models.model import StreamingModel

FORMAT = "kb_ros.model/1"
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.pt"
SINGLE_FILE_SUFFIXES = (".pt", ".pth", ".ckpt")


def _float32_weights(model: StreamingModel) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in model.state_dict().items()}


def weights_hash(weights: dict[str, Tensor]) -> str:
    """SHA-256 over names, shapes and float32 bytes, in name order (hex)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{list(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def model_id(model: StreamingModel) -> str:
    """``<config name>-<first 8 hex digits of the weights hash>``, e.g. ``large_cpu-3f2a9c1e``."""
    return f"{model.config.name}-{weights_hash(_float32_weights(model))[:8]}"


def build_manifest(model: StreamingModel, recipe: dict[str, Any] | None = None,
                   metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a consumer needs to know about a model without loading its weights."""
    cfg = model.config
    return {
        "format": FORMAT,
        "model_id": model_id(model),
        "config": cfg.to_dict(),
        "sample_rate": SAMPLE_RATE,
        "chunk_frames": HOP,
        "lookahead": LOOKAHEAD,
        "n_fft": N_FFT,
        "output_delay_samples": OUTPUT_DELAY_SAMPLES,
        "algorithmic_latency_samples": ALGORITHMIC_LATENCY_SAMPLES,
        "age_range": [cfg.min_age, cfg.max_age] if cfg.uses_hints else None,
        "n_params": sum(p.numel() for p in model.parameters()),
        "torch_version": torch.__version__,
        "recipe": recipe or {},
        "metrics": metrics or {},
    }


def _is_single_file(path: Path) -> bool:
    return path.suffix in SINGLE_FILE_SUFFIXES


def save_model(model: StreamingModel, path: str | Path, recipe: dict[str, Any] | None = None,
               metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    Write ``model`` to ``path`` (a directory, or a single file by suffix); returns the manifest.

    ``recipe`` and ``metrics`` are free-form JSON-serialisable dicts.
    """
    path = Path(path)
    manifest = build_manifest(model, recipe, metrics)
    text = json.dumps(manifest, indent=2, sort_keys=True)
    weights = _float32_weights(model)
    if _is_single_file(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"manifest": text, "state_dict": weights}, path)
    else:
        path.mkdir(parents=True, exist_ok=True)
        (path / MANIFEST_FILE).write_text(text + "\n")
        torch.save(weights, path / WEIGHTS_FILE)
    return manifest


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: its path and what is wrong with it, in one line."""

    def __init__(self, path: Path, what: str, err: Exception | None = None) -> None:
        cause = f" ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]})" if (
            err is not None and str(err).strip()) else ""
        super().__init__(f"{path}: {what}{cause}")


def _read(path: Path, with_weights: bool) -> tuple[dict[str, Any], dict[str, Tensor] | None]:
    """Read manifest and weights; anything but a missing file is a ``CheckpointError``."""
    try:
        if _is_single_file(path):
            blob = torch.load(path, map_location="cpu", weights_only=True)
            manifest, weights = json.loads(blob["manifest"]), blob["state_dict"]
        else:
            manifest = json.loads((path / MANIFEST_FILE).read_text())
            weights = (torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
                       if with_weights else None)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch.load and json raise many kinds for a damaged file
        raise CheckpointError(path, "not a readable kb_ros checkpoint", err) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise CheckpointError(path, "its manifest holds no model config")
    if with_weights and not isinstance(weights, dict):
        raise CheckpointError(path, "its weights are not a state dict")
    return manifest, weights


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read the manifest of a checkpoint directory or file."""
    manifest, _ = _read(Path(path), with_weights=False)
    return manifest


def load_checkpoint(path: str | Path) -> tuple[StreamingModel, dict[str, Any]]:
    """
    Load the model (eval mode, float32, CPU) and its manifest.

    Raises ``ValueError`` (``CheckpointError`` for a damaged one) when the checkpoint cannot be
    read, its format is unknown or its weights do not match the manifest's ``model_id``.
    """
    manifest, weights = _read(Path(path), with_weights=True)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {manifest.get('format')!r}")
    assert weights is not None
    try:
        model = StreamingModel(ModelConfig.from_dict(manifest["config"]))
        model.load_state_dict(weights)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(Path(path), "its config or weights do not make a kb_ros model",
                              err) from None
    model.float().eval()
    if model_id(model) != manifest.get("model_id"):
        raise ValueError(f"{path}: weights do not match model_id {manifest.get('model_id')}")
    return model, manifest


def load_model(path: str | Path) -> StreamingModel:
    """Load the model of a checkpoint directory or file (eval mode, float32, CPU)."""
    return load_checkpoint(path)[0]
