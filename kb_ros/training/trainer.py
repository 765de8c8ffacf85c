"""
The training loop: resumable, checkpointing often, CPU by default and CUDA when present.

One loop trains every preset, for enhancement or separation: the number of sources comes from
the corpus (``kb-ros data --task ss`` gives two, and models named ``<preset>_ss``), and the loss
is permutation-invariant SI-SNR, which for one source is plain SI-SNR. A ``kb`` model also needs
the frozen large model's outputs on the same corpus (``precompute_hints``): they are computed
once, not at every step.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from kb_ros.models.checkpoint import load_model, read_manifest, save_model
from kb_ros.models.config import ModelConfig, get_config
from kb_ros.models.filterbank import HOP
from kb_ros.models.model import StreamingModel
from kb_ros.training.hint_schedule import gather_used_hint, sample_hint_ages, schedule_for
from kb_ros.training.losses import delayed_pit_si_snr, si_snr

STATE_FILE = "train_state.pt"
BEST_DIR = "best"


@dataclass
class TrainSettings:
    preset: str
    data_dir: Path
    out_dir: Path
    steps: int = 2000
    batch: int = 8
    segment_s: float = 2.0
    lr: float = 1e-3
    grad_clip: float = 1.0
    val_every: int = 200
    checkpoint_every: int = 50
    val_examples: int = 48
    val_age: int = 6  # clamped into a kb model's age range (kb_d4: 4)
    seed: int = 0
    threads: int = 2
    device: str = "auto"
    large_model: Path | None = None  # for kb: the frozen hint producer
    init_from: Path | None = None  # start from these weights where names and shapes match
    max_minutes: float | None = None  # stop (resumably) after this long
    overrides: dict = field(default_factory=dict)


class Corpus:
    """A split of ``kb-ros data`` output in memory, plus the large model's hints if given."""

    def __init__(self, data_dir: Path, split: str) -> None:
        with np.load(data_dir / f"{split}.npz") as data:
            self.mix = data["mix"].astype(np.float32)
            self.clean = data["clean"].astype(np.float32)
        if self.mix.ndim == 2:  # [N, L] mono mixtures -> [N, 1, L]
            self.mix = self.mix[:, None]
        if self.clean.ndim == 2:  # enhancement: one target -> [N, 1, L]
            self.clean = self.clean[:, None]
        self.hints: np.ndarray | None = None  # the large model's outputs, once attached

    def attach_hints(self, path: Path) -> None:
        """Use the precomputed hint audio at ``path`` (``[N, S, L]``, memory-mapped)."""
        self.hints = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.mix)

    @property
    def sources(self) -> int:
        return self.clean.shape[1]

    def batch(self, index: np.ndarray, start: np.ndarray, length: int) -> dict[str, torch.Tensor]:
        def crop(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.stack(
                [array[i, ..., s:s + length].astype(np.float32) for i, s in zip(index, start)]))

        out = {"mix": crop(self.mix), "clean": crop(self.clean)}
        if self.hints is not None:
            out["hint"] = crop(self.hints)
        return out


def model_config(settings: TrainSettings, sources: int) -> ModelConfig:
    """Return the preset with ``settings.overrides``, for a corpus of ``sources`` targets."""
    overrides = dict(settings.overrides)
    if sources > 1 and "n_sources" not in overrides:
        overrides.update(n_sources=sources, name=f"{settings.preset}_ss")
    return get_config(settings.preset, **overrides)


def validation_age(config: ModelConfig, settings: TrainSettings) -> int:
    """``settings.val_age`` within the model's age range."""
    return min(max(settings.val_age, config.min_age), config.max_age)


def hints_path_for(data_dir: Path, large_model: Path, split: str) -> Path:
    manifest = read_manifest(large_model)
    return data_dir / f"hints_{manifest['model_id']}_{split}.npy"


@torch.inference_mode()
def precompute_hints(data_dir: Path, large_model: Path, split: str, device: str = "cpu",
                     batch: int = 16) -> Path:
    """Run the frozen large model over a split once; its outputs are the hint audio."""
    path = hints_path_for(data_dir, large_model, split)
    if path.exists():
        return path
    model = load_model(large_model).to(device)
    corpus = Corpus(data_dir, split)
    n, channels, length = corpus.mix.shape
    length -= length % HOP
    out = np.lib.format.open_memmap(str(path) + ".tmp.npy", mode="w+", dtype=np.float16,
                                    shape=(n, model.config.n_sources, length))
    for i in range(0, n, batch):
        mix = torch.from_numpy(corpus.mix[i:i + batch, :, :length]).to(device)
        out[i:i + batch] = model(mix)[0].cpu().numpy().astype(np.float16)
    out.flush()
    del out
    os.replace(str(path) + ".tmp.npy", path)
    return path


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _forward(model: StreamingModel, batch: dict[str, torch.Tensor],
             ages: torch.Tensor | None) -> torch.Tensor:
    if ages is None:
        return model(batch["mix"])[0]
    return model(batch["mix"], gather_used_hint(batch["hint"], ages), ages)[0]


@torch.no_grad()
def validate(model: StreamingModel, corpus: Corpus, settings: TrainSettings,
             device: torch.device) -> dict[str, float]:
    """
    Mean SI-SNRi (dB, permutation-invariant) on the first validation examples.

    kb models are scored at ``validation_age`` and with no hints at all.
    """
    model.eval()
    n = min(settings.val_examples, len(corpus))
    length = corpus.mix.shape[-1] - corpus.mix.shape[-1] % HOP
    whole = corpus.batch(np.arange(n), np.zeros(n, int), length)
    batch = {k: v.to(device) for k, v in whole.items()}
    mix_score = si_snr(batch["mix"][:, :1], batch["clean"]).mean().item()
    steps = length // HOP
    results = {}
    patterns = {"val_si_snri": None}
    if model.config.uses_hints:
        val_age = validation_age(model.config, settings)
        age = torch.full((n, steps), val_age, dtype=torch.long)
        age[:, :val_age] = -1
        patterns = {"val_si_snri": age, "val_si_snri_no_hint": torch.full((n, steps), -1)}
    for name, ages in patterns.items():
        out = _forward(model, batch, ages)
        results[name] = delayed_pit_si_snr(out, batch["clean"]).mean().item() - mix_score
    model.train()
    return results


def train(settings: TrainSettings) -> Path:
    """Train (or resume) ``settings.preset``; returns the directory of the best checkpoint."""
    torch.set_num_threads(settings.threads)
    device = _device(settings.device)
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    train_set, val_set = Corpus(settings.data_dir, "train"), Corpus(settings.data_dir, "val")
    config = model_config(settings, train_set.sources)
    if config.uses_hints:
        if settings.large_model is None:
            raise ValueError("a kb model needs --large-model (the frozen hint producer)")
        large_sources = read_manifest(settings.large_model)["config"]["n_sources"]
        if large_sources != config.n_sources:
            raise ValueError(f"the hint producer has {large_sources} sources, the corpus "
                             f"{config.n_sources}")
        for corpus, split in ((train_set, "train"), (val_set, "val")):
            corpus.attach_hints(precompute_hints(settings.data_dir, settings.large_model, split,
                                                 str(device)))
    model = StreamingModel(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                           patience=4)
    step, best, history = 0, -float("inf"), []
    state_path = out / STATE_FILE
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best, history = state["step"], state["best"], state["history"]
        print(f"resuming {settings.preset} at step {step} (best {best:.2f} dB)")
    else:
        if settings.init_from is not None:
            print(f"initialised {len(_init_from(model, settings.init_from))} tensors from "
                  f"{settings.init_from}")
        history.append({"step": 0, **validate(model, val_set, settings, device)})  # untrained
    rng = np.random.default_rng([settings.seed, step])
    generator = torch.Generator().manual_seed(settings.seed * 100003 + step)
    length = int(settings.segment_s * 16000) // HOP * HOP
    max_start = (train_set.mix.shape[-1] - length) // HOP
    recipe = {"settings": {k: str(v) for k, v in asdict(settings).items()},
              "data_recipe": _data_recipe(settings.data_dir),
              "loss": "pit_si_snr" if config.n_sources > 1 else "si_snr"}
    schedule = schedule_for(config)
    if config.uses_hints:
        large = read_manifest(settings.large_model)
        recipe["large_model"] = {k: large[k] for k in ("model_id", "config", "metrics")}
        recipe["hint_producers"] = [large["model_id"]]
        recipe["hint_schedule"] = {"min_age": config.min_age, "max_age": config.max_age,
                                   **asdict(schedule)}
        recipe["validation_age"] = validation_age(config, settings)
    t_start = time.monotonic()

    def save_state() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "step": step, "best": best,
                    "history": history, "config": config.to_dict()}, tmp)
        os.replace(tmp, state_path)

    from tqdm import tqdm
    bar = tqdm(total=settings.steps, initial=step, desc=f"train {settings.preset}",
               dynamic_ncols=True, mininterval=5.0)
    model.train()
    train_scores: list[float] = []  # training SI-SNR (dB) of each step since the last validation
    while step < settings.steps:
        index = rng.integers(0, len(train_set), settings.batch)
        start = rng.integers(0, max_start + 1, settings.batch) * HOP
        batch = {k: v.to(device) for k, v in train_set.batch(index, start, length).items()}
        ages = None
        if config.uses_hints:
            ages = sample_hint_ages(settings.batch, length // HOP, config.min_age,
                                    config.max_age, generator, schedule)
        loss = -delayed_pit_si_snr(_forward(model, batch, ages), batch["clean"]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        step += 1
        train_scores.append(-loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.2f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        if step % settings.val_every == 0 or step == settings.steps:
            metrics = validate(model, val_set, settings, device)
            scheduler.step(metrics["val_si_snri"])
            history.append({"step": step, "train_si_snr": float(np.mean(train_scores)),
                            **metrics})
            train_scores.clear()
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.2f} dB" for k, v in metrics.items()))
            if metrics["val_si_snri"] > best:
                best = metrics["val_si_snri"]
                save_model(model.cpu(), out / BEST_DIR, recipe=recipe,
                           metrics={"step": step, **metrics})
                model.to(device)
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            save_state()
        if settings.max_minutes and time.monotonic() - t_start > settings.max_minutes * 60:
            save_state()
            bar.write(f"stopping after {settings.max_minutes} min at step {step}; "
                      "run again to resume")
            break
    bar.close()
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return out / BEST_DIR


def _init_from(model: StreamingModel, checkpoint: Path) -> list[str]:
    """
    Copy the weights of ``checkpoint`` whose names and shapes match; return their names.

    A kb model warm-started from a trained small model begins with the small model's no-hint
    quality and spends its training on learning to use hints.
    """
    source = load_model(checkpoint).state_dict()
    own = model.state_dict()
    shared = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(shared, strict=False)
    return sorted(shared)


def _data_recipe(data_dir: Path) -> dict:
    """Summarize the training corpus's recipe (its per-example list stays with the corpus)."""
    path = data_dir / "train.json"
    recipe = json.loads(path.read_text()) if path.exists() else {}
    recipe.pop("examples", None)
    return recipe
