"""`create_model`: wire built encoders and fusion into a `RecModel`; save and load whole models.

A model folder is in the Hugging Face Hub layout (`mmrec.model.hub`): `config.json` (the resolved
`ModelConfig`, the sizes the model was built for, the mmrec version), `model.safetensors` (every
parameter and buffer) and a model card `README.md`. Loading rebuilds the architecture from the config,
with no download, and loads the weights strictly. Folders of the older layout (`config.yaml` +
`model.json` + `model.safetensors`) load too. `from_pretrained` also takes a Hub repo id already in the
local Hugging Face cache; `export_model` writes a folder that carries its encoders' sources, to copy or
push anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from encoders import Preprocessor, create_encoder
from fusion import create_fusion
from mmrec.data.splits import RunSplits
from mmrec.data.vocabulary import RunVocabulary
from mmrec.files import replace_with, temp_sibling
from mmrec.model import hub
from mmrec.model.card import CardFacts, read_card, write_card
from mmrec.model.config import ModelConfig
from mmrec.model.hub import CONFIG_FILE, WEIGHTS_FILE
from mmrec.model.model import RecModel

logger = logging.getLogger(__name__)


@dataclass
class ModelSizes:
    """What the model was built for, beyond its config."""

    num_users: int
    num_items: int
    attributes: list[str] = field(default_factory=list)  # attribute vocabulary, in head order
    global_mean: float = 0.0  # mu: mean training rating (stored here, in model.json, and nowhere else)

    @classmethod
    def for_training(cls, vocab: RunVocabulary, splits: RunSplits) -> ModelSizes:
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


def save_model(model: RecModel, sizes: ModelSizes, folder: str | Path, card: CardFacts | None = None,
               license: str | None = None) -> Path:
    """Write `folder` in the Hub layout: config.json, model.safetensors and the model card README.md.

    Args:
        card: what the card says beyond the config (training data, validation numbers); training passes it.
        license: the card's license (a Hub license id such as "apache-2.0"), when known.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = hub.absolute_sources(model.config)
    hub.write_config(folder, cfg, asdict(sizes))
    # contiguous copies: safetensors refuses views and shared storage
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, folder / WEIGHTS_FILE, metadata={"format": "pt"})  # "pt": what Hub tooling expects
    write_card(folder, cfg, asdict(sizes), card, license)
    return folder


def read_model_config(folder: str | Path) -> tuple[ModelConfig, ModelSizes]:
    """A saved model's config (encoder sources located on this machine) and sizes, in either layout."""
    cfg, sizes = hub.read_config(folder)
    return hub.locate_encoder_sources(cfg, folder), ModelSizes(**sizes)


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> tuple[RecModel, dict[str, Preprocessor], ModelSizes]:
    """Rebuild a model saved by `save_model` (or by an older mmrec) and load its weights (safetensors only)."""
    folder = Path(folder)
    cfg, sizes = read_model_config(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise ValueError(f"{folder} is not a saved mmrec model: {WEIGHTS_FILE} is missing")
    model, preprocessors = create_model(cfg, sizes)
    model.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=True)  # on the CPU, then moved
    return model.to(device), preprocessors, sizes


def from_pretrained(name_or_path: str | Path, device: str | torch.device = "cpu", *, revision: str | None = None,
                    cache_dir: str | Path | None = None) -> tuple[RecModel, dict[str, Preprocessor], ModelSizes]:
    """`load_model` from a model folder or a Hub repo id ("org/name") already in the local Hugging Face
    cache (`hf download org/name` puts it there); nothing is downloaded."""
    return load_model(hub.resolve_folder(name_or_path, revision, cache_dir), device)


def export_model(source: str | Path, out: str | Path, license: str | None = None) -> Path:
    """Write a self-contained copy of a model to `out` (`mmrec export`): the Hub files plus, under
    `out/encoders/`, each encoder's pretrained source, named in config.json by its path inside `out`.

    RUN/model only names its encoders' sources by their paths on the training machine, so a copy of
    it loads only where those exist. The copy is loaded back before it is moved into place.

    Args:
        source: a run folder (its model/) or a model folder, in either layout (the older one is upgraded).
        out: a new or empty folder.
        license: the card's license; by default the source card's.
    """
    source, out = Path(source), Path(out)
    folder = source / "model" if (source / "model").is_dir() else source
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not empty: choose another --out")
    cfg, sizes = hub.read_config(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise ValueError(f"{folder} is not a saved mmrec model: {WEIGHTS_FILE} is missing")
    facts, card_license = read_card(folder)
    tmp = temp_sibling(out, ".partial")
    tmp.mkdir(parents=True)
    cfg = hub.copy_encoder_sources(cfg, folder, tmp)
    hub.write_config(tmp, cfg, sizes)
    shutil.copyfile(folder / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
    write_card(tmp, cfg, sizes, facts, license or card_license)
    load_model(tmp)  # loads from its own files alone, strictly, or fails here rather than on another machine
    if out.exists():
        out.rmdir()  # empty (checked above)
    return replace_with(tmp, out)


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RecModel, dict[str, Preprocessor], ModelSizes]:
    """A run's selected model (RUN/model). If its weights cannot be read, the run's checkpoint of the
    same step (trainer_state.json's best_step) holds the same weights: they are used, and that is said."""
    run_dir = Path(run_dir)
    # a damaged config or a missing encoder source is not cured by a checkpoint: those errors stand
    cfg, sizes = read_model_config(run_dir / "model")
    model, preprocessors = create_model(cfg, sizes)
    try:
        model.load_state_dict(load_file(run_dir / "model" / WEIGHTS_FILE), strict=True)
    except Exception as e:  # safetensors, torch and json each raise their own types
        reason = " ".join(str(e).split())[:160]
        fallback = _checkpoint_of_selected_step(run_dir)
        if fallback is None:
            raise ValueError(f"{run_dir / 'model'} cannot be loaded ({reason}) and no checkpoint holds its step: "
                             "restore it or train again") from e
        logger.warning(f"{run_dir / 'model'} cannot be loaded ({reason}); using {fallback}, the checkpoint of the "
                       "same step")
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


__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "ModelSizes", "build_model", "create_model", "export_model",
           "from_pretrained", "load_model", "load_run_model", "read_model_config", "save_model"]
