"""The model folder in the Hugging Face Hub layout: `config.json`, `model.safetensors` and a model card.

    MODEL/config.json         model_type / library_name "mmrec", mmrec_version, format_version,
                              "model" (the resolved ModelConfig) and "sizes" (users, items, attributes, mu)
    MODEL/model.safetensors   every parameter and buffer (written and read by `mmrec.model.factory`)
    MODEL/README.md           the model card (`mmrec.model.card`): where the model came from and how it scored
    MODEL/encoders/           in an exported folder: each encoder's sources (`copy_encoder_sources`)

The folder can be pushed to the Hub as it is (`huggingface-cli upload`), and `from_pretrained` reads it
back from a folder or from a repo already in the local Hugging Face cache (`resolve_folder`:
`snapshot_download(local_files_only=True)`, never a download).

Not `huggingface_hub.PyTorchModelHubMixin`: it rebuilds a model as `cls(**config)` and loads weights
non-strictly by default, while a `RecModel` is wired by `create_model` from built encoders and mmrec
loads strictly; the mixin's conventions (config.json, safetensors, a card with `library_name`) are kept.

Folders written before this layout (`config.yaml` + `model.json` + `model.safetensors`) still load.
This module reads and writes config.json and the encoder sources, finds folders, and imports no torch.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from encoders.config import EncoderConfig
from mmrec import __version__
from mmrec.config_io import from_dict, to_dict
from mmrec.files import atomic_write_text
from mmrec.model.config import ModelConfig

CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
LEGACY_CONFIG_FILE, LEGACY_META_FILE = "config.yaml", "model.json"  # the layout before config.json
MODEL_TYPE = "mmrec"
FORMAT_VERSION = 1  # of config.json; a reader refuses a newer one rather than misread it
ENCODERS_DIR = "encoders"  # in an exported folder: each encoder's pretrained source (see copy_encoder_sources)
SIZE_KEYS = ("num_users", "num_items", "attributes", "global_mean")


# ----------------------------------------------------------------------------------------- config.json


def write_config(folder: Path, cfg: ModelConfig, sizes: dict) -> Path:
    """config.json: everything needed to rebuild the model, in one file."""
    doc = {"model_type": MODEL_TYPE, "library_name": MODEL_TYPE, "architectures": ["RecModel"],
           "mmrec_version": __version__, "format_version": FORMAT_VERSION,
           "model": to_dict(cfg), "sizes": sizes}
    return atomic_write_text(folder / CONFIG_FILE, json.dumps(doc, indent=2) + "\n")


def config_file(folder: str | Path) -> Path:
    """The file holding a saved model's config: config.json, or config.yaml in the older layout."""
    folder = Path(folder)
    return folder / (LEGACY_CONFIG_FILE if is_legacy(folder) else CONFIG_FILE)


def is_legacy(folder: Path) -> bool:
    return not (folder / CONFIG_FILE).is_file() and (folder / LEGACY_CONFIG_FILE).is_file()


def read_config(folder: str | Path) -> tuple[ModelConfig, dict]:
    """(ModelConfig, sizes dict) of a saved model folder in either layout; any problem is one ValueError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: pass a model folder (config.json, model.safetensors, "
                         "README.md) or a run folder's model/")
    if is_legacy(folder):
        meta_path = folder / LEGACY_META_FILE
        if not meta_path.is_file():
            raise ValueError(f"{folder} is not a saved mmrec model: {LEGACY_META_FILE} is missing (a folder of the "
                             f"older layout holds {LEGACY_CONFIG_FILE}, {LEGACY_META_FILE} and {WEIGHTS_FILE})")
        with open(folder / LEGACY_CONFIG_FILE, encoding="utf-8") as f:
            raw, sizes = yaml.safe_load(f), _read_json(meta_path)
        where = str(folder / LEGACY_CONFIG_FILE)
    else:
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise ValueError(f"{folder} is not a saved mmrec model: {CONFIG_FILE} is missing")
        doc = _read_json(path)
        if doc.get("library_name") != MODEL_TYPE and doc.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{path} is not an mmrec model's config (model_type {doc.get('model_type')!r}); "
                             "an mmrec model folder has model_type 'mmrec'")
        version = doc.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"{path} has format_version {version!r}, written by mmrec {doc.get('mmrec_version')}; "
                             f"this mmrec {__version__} reads up to {FORMAT_VERSION}: upgrade mmrec")
        missing = [k for k in ("model", "sizes") if not isinstance(doc.get(k), dict)]
        if missing:
            raise ValueError(f"{path} has no {' or '.join(missing)} section: it was not written by mmrec's save_model")
        raw, sizes, where = doc["model"], doc["sizes"], str(path)
    if isinstance(raw, dict) and isinstance(raw.get("fusion"), dict):
        # a saved fusion config without `readout` comes from a model that read out the [ITEM] token:
        # the default ("modalities") would rebuild a different item embedding
        raw["fusion"].setdefault("readout", "item_token")
    if not isinstance(raw, dict) or not isinstance(sizes, dict):
        raise ValueError(f"{where}: expected a mapping of model settings and one of sizes")
    unknown = sorted(set(sizes) - set(SIZE_KEYS))
    if unknown or not {"num_users", "num_items"} <= set(sizes):
        raise ValueError(f"{where}: sizes {sorted(sizes)} must hold num_users and num_items (and optionally "
                         f"attributes, global_mean); unknown: {unknown}")
    return from_dict(ModelConfig, raw, where), sizes


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): the model folder is damaged; save or export it again") from e


# ------------------------------------------------------------------------------- encoder sources


def _source_fields(enc: EncoderConfig) -> dict[str, str]:
    """The paths an encoder is built from: `pretrained` (weights folder or file; also the architecture,
    tokenizer and preprocessing of Hugging Face and timm folders) and, for random-init text encoders,
    `arch.tokenizer` (a tokenizer folder)."""
    found = {}
    if enc.pretrained:
        found["pretrained"] = enc.pretrained
    if isinstance(enc.arch.get("tokenizer"), str):
        found["arch.tokenizer"] = enc.arch["tokenizer"]
    return found


def _with_sources(enc: EncoderConfig, paths: dict[str, str]) -> EncoderConfig:
    arch = dict(enc.arch)
    if "arch.tokenizer" in paths:
        arch["tokenizer"] = paths["arch.tokenizer"]
    return replace(enc, pretrained=paths.get("pretrained", enc.pretrained), arch=arch)


def absolute_sources(cfg: ModelConfig) -> ModelConfig:
    """Relative source paths as absolute ones, where they exist from here: a config's relative path
    (`pretrained: models/minilm`) means the working directory of the training run, which a later
    reader does not share. Relative paths that do not exist here (an exported folder's) are kept."""
    def absolute(p: str) -> str:
        path = Path(p).expanduser()
        return str(path.resolve()) if not path.is_absolute() and path.exists() else p

    encoders = {m: _with_sources(enc, {k: absolute(p) for k, p in _source_fields(enc).items()})
                for m, enc in cfg.encoders.items()}
    return replace(cfg, encoders=encoders)


def locate_encoder_sources(cfg: ModelConfig, folder: str | Path) -> ModelConfig:
    """`cfg` with each encoder's source paths found on this machine, or one ValueError naming what is missing.

    The trained weights come from model.safetensors, but an encoder is first built from its source
    (a Hugging Face folder gives the architecture, tokenizer and feature extractor). A relative path is
    inside the model folder (an exported one); in a folder of the older layout, relative to the working
    directory, as it always was.
    """
    folder = Path(folder)
    legacy = is_legacy(folder)
    encoders, missing = {}, []
    for m, enc in cfg.encoders.items():
        paths = {}
        for key, p in _source_fields(enc).items():
            path = Path(p).expanduser()
            if not path.is_absolute() and not legacy:
                path = folder / path
            if not path.exists():
                missing.append(f"the {m} encoder's {key} {p!r}")
            paths[key] = str(path.resolve())
        encoders[m] = _with_sources(enc, paths)
    if missing:
        raise ValueError(f"{folder} cannot be loaded here: {'; '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not on this machine (the encoders are built from "
                         "their sources, then given the trained weights of model.safetensors). Copy them to those "
                         "paths, or load a folder written by `mmrec export`, which carries them")
    return replace(cfg, encoders=encoders)


def copy_encoder_sources(cfg: ModelConfig, folder: Path, out: Path) -> ModelConfig:
    """Copy each encoder's sources (as located from `folder`) into `out`/encoders/ and return the config
    that names them by their path inside `out`, so `out` loads on any machine."""
    located = locate_encoder_sources(cfg, folder)
    encoders = {}
    for m, enc in located.encoders.items():
        paths = {}
        for key, p in _source_fields(enc).items():
            source = Path(p)
            name = m if key == "pretrained" else f"{m}-tokenizer"
            if source.is_dir():
                shutil.copytree(source, out / ENCODERS_DIR / name)
                paths[key] = f"{ENCODERS_DIR}/{name}"
            else:  # a checkpoint file keeps its name: its suffix tells the loader the format
                (out / ENCODERS_DIR / name).mkdir(parents=True)
                shutil.copy2(source, out / ENCODERS_DIR / name / source.name)
                paths[key] = f"{ENCODERS_DIR}/{name}/{source.name}"
        encoders[m] = _with_sources(enc, paths)
    return replace(cfg, encoders=encoders)


# ------------------------------------------------------------------------------ folders and repo ids


def resolve_folder(name_or_path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local model folder, or the snapshot of a Hub repo id in the local Hugging Face cache (never a download)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file: pass a model folder (config.json, model.safetensors, README.md) "
                         "or a repo id")
    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, cache_dir=cache_dir, local_files_only=True))
    except HFValidationError as e:
        raise ValueError(f"{name_or_path!r} is neither a local folder nor a Hub repo id (org/name)") from e
    except LocalEntryNotFoundError as e:
        raise ValueError(f"{name_or_path!r} is not a local folder, and no complete snapshot of that repo is in the "
                         f"local Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}); mmrec never downloads: "
                         f"fetch it first (`hf download {name_or_path}`), then load it again") from e
