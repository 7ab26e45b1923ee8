"""`create_model`: wire built encoders and fusion into a `RecModel`; save and load whole models.

A model folder holds `config.yaml` (the resolved `ModelConfig`), `model.json` (the sizes the model
was built for: users, items, attributes, global mean) and `model.safetensors` (every parameter and
buffer). Loading rebuilds the architecture from the config, with no download, and loads the weights.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from encoders import Preprocessor, create_encoder
from fusion import create_fusion
from mmrec.config_io import from_dict, save_config
from mmrec.data.split_files import RunSplits
from mmrec.data.vocabulary import RunVocabulary
from mmrec.model.config import ModelConfig
from mmrec.model.model import RecModel

CONFIG_FILE, META_FILE, WEIGHTS_FILE = "config.yaml", "model.json", "model.safetensors"


@dataclass
class ModelSizes:
    """What the model was built for, beyond its config."""

    num_users: int
    num_items: int
    attributes: list[str] = field(default_factory=list)  # attribute vocabulary, in head order
    global_mean: float = 0.0  # mu: mean training rating (stored here, in model.json, and nowhere else)

    @classmethod
    def for_training(cls, vocab: RunVocabulary, splits: RunSplits) -> "ModelSizes":
        """The sizes of a model trained on `splits` with `vocab`."""
        return cls(len(vocab.user_ids), len(vocab.item_ids), list(vocab.attributes), splits.train_mean_rating())


def create_model(cfg: ModelConfig, sizes: ModelSizes, item_seen: torch.Tensor | None = None) -> tuple[RecModel, dict[str, Preprocessor]]:
    """Build encoders (from their configs: local weights or random init), fusion and the model.

    Returns:
        (model, preprocessors): the preprocessors run in DataLoader workers, one per modality.
    """
    encoders, preprocessors = {}, {}
    for m in cfg.modalities:
        encoders[m], preprocessors[m] = create_encoder(cfg.encoders[m])
    fusion = None
    if encoders:
        fusion = create_fusion(cfg.fusion_config({m: e.output_dim for m, e in encoders.items()}))
        cfg = dataclasses.replace(cfg, fusion=fusion.config)  # resolved: what save_model writes to config.yaml
    model = RecModel(cfg, encoders, fusion, sizes.num_users, sizes.num_items, sizes.global_mean, item_seen)
    return model, preprocessors


def build_model(cfg: ModelConfig, sizes: ModelSizes, seed: int,
                item_seen: torch.Tensor | None = None) -> tuple[RecModel, dict[str, Preprocessor]]:
    """`create_model` from a fixed seed: what a training run builds first, and what `mmrec cache`
    builds to compute the features that run will read (same seed, same construction order, so the
    same random-init encoder weights and the same cache fingerprint)."""
    set_seed(seed)
    return create_model(cfg, sizes, item_seen)


def save_model(model: RecModel, sizes: ModelSizes, folder: str | Path) -> Path:
    """Write config.yaml, model.json and model.safetensors into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_config(model.config, folder / CONFIG_FILE)
    (folder / META_FILE).write_text(json.dumps(asdict(sizes), indent=2))
    # contiguous copies: safetensors refuses views and shared storage
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_FILE)
    return folder


def read_saved_config(path: Path) -> ModelConfig:
    """A saved model's config. Models saved before `fusion.readout` existed read out the [ITEM] token:
    their config says nothing, and the new default would rebuild a different item embedding."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if isinstance(raw, dict) and isinstance(raw.get("fusion"), dict):
        raw["fusion"].setdefault("readout", "item_token")
    return from_dict(ModelConfig, raw, str(path))


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> tuple[RecModel, dict[str, Preprocessor], ModelSizes]:
    """Rebuild a model saved by `save_model` and load its weights (safetensors only)."""

    folder = Path(folder)
    for name in (CONFIG_FILE, META_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} is not a saved mmrec model: {name} is missing")
    cfg = read_saved_config(folder / CONFIG_FILE)
    sizes = ModelSizes(**json.loads((folder / META_FILE).read_text()))
    model, preprocessors = create_model(cfg, sizes)
    model.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=True)  # on the CPU, then moved
    return model.to(device), preprocessors, sizes


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RecModel, dict[str, Preprocessor], ModelSizes]:
    """A run's selected model (RUN/model). If its weights cannot be read, the run's checkpoint of the
    same step (trainer_state.json's best_step) holds the same weights: they are used, and that is said."""
    run_dir = Path(run_dir)
    try:
        return load_model(run_dir / "model", device)
    except Exception as e:  # noqa: BLE001 (safetensors, torch and json each raise their own types)
        reason = " ".join(str(e).split())[:160]
        fallback = _checkpoint_of_selected_step(run_dir)
        if fallback is None:
            raise ValueError(f"{run_dir / 'model'} cannot be loaded ({reason}) and no checkpoint holds its step: "
                             "restore it or train again") from e
        print(f"note: {run_dir / 'model'} cannot be loaded ({reason}); using {fallback}, the checkpoint of the "
              "same step", file=sys.stderr)
        cfg = read_saved_config(run_dir / "model" / CONFIG_FILE)
        sizes = ModelSizes(**json.loads((run_dir / "model" / META_FILE).read_text()))
        model, preprocessors = create_model(cfg, sizes)
        state = load_file(fallback / WEIGHTS_FILE)  # the training module's: the model's keys under "model."
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")},
                              strict=True)
        return model.to(device), preprocessors, sizes


def _checkpoint_of_selected_step(run_dir: Path) -> Path | None:
    """RUN/checkpoints/step-N of the step whose model RUN/model holds, if it is still on disk.

    The step is the last `best_step` in RUN/metrics.jsonl, written right after RUN/model was (a
    checkpoint's own trainer state can predate the validation that selected its step)."""
    step = None
    try:
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            step = json.loads(line).get("best_step", step)
    except (OSError, ValueError):
        return None
    folder = run_dir / "checkpoints" / f"step-{step:08d}" if isinstance(step, int) else None
    return folder if folder is not None and (folder / WEIGHTS_FILE).is_file() else None


__all__ = ["ModelSizes", "build_model", "create_model", "load_model", "load_run_model", "save_model"]
