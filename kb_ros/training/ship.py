"""
Copy a run's best checkpoint into the package as a shipped model, loaded by name.

The run folder keeps its resumable ``train_state.pt``; only the weights and a lean manifest
(no per-example data recipe) go into ``kb_ros/share/models/<name>``. The manifest keeps the
training recipe and the best checkpoint's validation metrics, and gains how long the run
trained in all and its last validation, so a shipped model says how it was made.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from kb_ros.models.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, load_checkpoint
from kb_ros.resources import MODELS_DIR
from kb_ros.training.trainer import BEST_DIR, STATE_FILE


def training_summary(run_dir: Path) -> dict[str, Any]:
    """Read the steps trained and the last validation of a run from its resumable state."""
    state_path = run_dir / STATE_FILE
    if not state_path.exists():
        return {}
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    history = state.get("history") or []
    return {"trained_steps": state["step"],
            "final_validation": history[-1] if history else None}


def ship(run_dir: Path, name: str, models_dir: Path = MODELS_DIR) -> dict:
    """Install ``run_dir/best`` as shipped model ``name``; return its manifest."""
    best = run_dir / BEST_DIR
    _, manifest = load_checkpoint(best)  # verifies the weights against the manifest
    recipe = manifest.setdefault("recipe", {})
    recipe.get("data_recipe", {}).pop("examples", None)
    summary = training_summary(run_dir)
    if summary:
        recipe["trained_steps"] = summary["trained_steps"]
        manifest.setdefault("metrics", {})["final_validation"] = summary["final_validation"]
    target = models_dir / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy2(best / WEIGHTS_FILE, target / WEIGHTS_FILE)
    (target / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a kb-ros train --out folder")
    parser.add_argument("name", help="shipped model name, e.g. kb, large, small")
    args = parser.parse_args(argv)
    manifest = ship(args.run_dir, args.name)
    print(f"{args.name}: {manifest['model_id']} {manifest.get('metrics', {})}")


if __name__ == "__main__":
    main()
