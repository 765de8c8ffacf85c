"""
Copy a run's best checkpoint into the package as a shipped model, loaded by name.

The run folder keeps its resumable ``train_state.pt``; only the weights and a lean manifest
(no per-example data recipe) go into ``kb_ros/share/models/<name>``. The manifest keeps the
training recipe and the best checkpoint's validation metrics, and gains how long the run
trained in all and its last validation, so a shipped model says how it was made.

SI-SNR training cannot see an output's sign, and models settle on either polarity. A listener
hears an inverted output wherever it meets the unprocessed sound (the catch-up bypass, an open
ear), so shipping a device model (with ``--data``) turns any source that correlates negatively
with its target on the validation split the right way up: the output convolution's weights for
that source are negated, which negates the source exactly. Hint producers are left alone:
their hints are features to the model trained on them, and their ``model_id`` must not change.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import torch

from kb_ros.models.checkpoint import load_checkpoint, save_model
from kb_ros.models.filterbank import HOP, OUTPUT_DELAY_SAMPLES
from kb_ros.models.model import StreamingModel
from kb_ros.resources import MODELS_DIR
from kb_ros.training.trainer import BEST_DIR, STATE_FILE, Corpus

POLARITY_EXAMPLES = 16


def training_summary(run_dir: Path) -> dict[str, Any]:
    """Read the steps trained and the last validation of a run from its resumable state."""
    state_path = run_dir / STATE_FILE
    if not state_path.exists():
        return {}
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    history = state.get("history") or []
    return {"trained_steps": state["step"],
            "final_validation": history[-1] if history else None}


@torch.no_grad()
def source_polarity(model: StreamingModel, data_dir: Path,
                    examples: int = POLARITY_EXAMPLES) -> list[float]:
    """
    Correlation of each output source with the target it matches best (by magnitude).

    Measured without hints on the first ``examples`` of the validation split.
    """
    corpus = Corpus(data_dir, "val")
    n = min(examples, len(corpus))
    length = corpus.mix.shape[-1] - corpus.mix.shape[-1] % HOP
    out = model(torch.from_numpy(corpus.mix[:n, :, :length]))[0][..., OUTPUT_DELAY_SAMPLES:]
    clean = torch.from_numpy(corpus.clean[:n, :, :length - OUTPUT_DELAY_SAMPLES])
    est = (out - out.mean(-1, keepdim=True)).unsqueeze(2)  # [N, S_out, 1, L]
    ref = (clean - clean.mean(-1, keepdim=True)).unsqueeze(1)  # [N, 1, S_ref, L]
    cos = ((est * ref).sum(-1) / (est.norm(dim=-1) * ref.norm(dim=-1) + 1e-8)).mean(0)
    best = cos.abs().argmax(dim=1)
    return [float(cos[s, best[s]]) for s in range(cos.shape[0])]


@torch.no_grad()
def orient_polarity(model: StreamingModel, data_dir: Path) -> list[int]:
    """Negate every output source that correlates negatively with its target; return them."""
    flipped = [s for s, c in enumerate(source_polarity(model, data_dir)) if c < 0]
    conv = model.decoder.conv  # output channels: source s is real 2s, imaginary 2s + 1
    for s in flipped:
        conv.weight[2 * s:2 * s + 2].neg_()
        conv.bias[2 * s:2 * s + 2].neg_()
    return flipped


def ship(run_dir: Path, name: str, models_dir: Path = MODELS_DIR,
         data_dir: Path | None = None) -> dict:
    """
    Install ``run_dir/best`` as shipped model ``name``; return its manifest.

    With ``data_dir`` (a corpus), a device model's output polarity is made right first.
    """
    model, manifest = load_checkpoint(run_dir / BEST_DIR)  # verifies weights and manifest
    recipe = manifest.setdefault("recipe", {})
    recipe.get("data_recipe", {}).pop("examples", None)
    summary = training_summary(run_dir)
    metrics = manifest.setdefault("metrics", {})
    if summary:
        recipe["trained_steps"] = summary["trained_steps"]
        metrics["final_validation"] = summary["final_validation"]
    if data_dir is not None and model.config.kind != "large":
        recipe["polarity_flipped_sources"] = orient_polarity(model, data_dir)
    target = models_dir / name
    shutil.rmtree(target, ignore_errors=True)
    return save_model(model, target, recipe=recipe, metrics=metrics)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a kb-ros train --out folder")
    parser.add_argument("name", help="shipped model name, e.g. kb, large, small")
    parser.add_argument("--data", type=Path,
                        help="corpus folder: make a device model's output polarity right")
    args = parser.parse_args(argv)
    manifest = ship(args.run_dir, args.name, data_dir=args.data)
    print(f"{args.name}: {manifest['model_id']} {manifest.get('metrics', {})}")


if __name__ == "__main__":
    main()
