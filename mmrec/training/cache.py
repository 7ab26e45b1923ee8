"""`mmrec cache`: run frozen encoders once over the item shards and store their outputs as feature shards.

With frozen encoders every epoch would recompute the same encoder outputs, and decoding plus
encoding media dominate the cost. The cache stores, per item and present modality, the pooled
vector and (where the fusion's token budget asks for tokens) the first `budget` tokens with their
mask, in fp16, as WebDataset shards laid out like the item shards (one sample per item, same keys):

    FEATS/manifest.json            kind "features", encoder fingerprint per modality, dims, budgets, shards
    FEATS/features-000000.tar ...  json (index, item_id, attributes, metadata) +
                                   {m}.pooled.npy, {m}.tokens.npy, {m}.mask.npy per present modality

Training reads them with `data.features=FEATS`; the encoders are then never run, and the fingerprints
(a hash of each encoder's weights) guarantee that the cache belongs to the encoders of the run. A run
may use fewer modalities than the cache holds (a text-only or an ID-only model on a text + image
cache): only the modalities the model has are read and checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

from mmrec import __version__
from mmrec.data import schema
from mmrec.data.features import FEATURE_PATTERN
from mmrec.data.reader import load_manifest
from mmrec.data.remote import as_location, describe
from mmrec.embedding import item_batches, progress_shown
from mmrec.files import FolderLock, replace_with, sha256_of, temp_sibling
from mmrec.model.model import RecModel
from mmrec.precision import bf16_autocast

logger = logging.getLogger(__name__)


def encoder_fingerprints(model: RecModel) -> dict[str, str]:
    """modality -> sha256 over its encoder's parameters and buffers, in name order."""
    out = {}
    for m in sorted(model.encoders):
        h = hashlib.sha256()
        for name, t in sorted(model.encoders[m].state_dict().items()):
            h.update(f"{m}.{name}".encode())
            h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
        out[m] = h.hexdigest()
    return out


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _check_frozen(model: RecModel) -> None:
    trainable = [m for m, e in model.encoders.items() if e.config.trainable_layers != 0]
    if trainable:
        raise ValueError(f"the encoders {trainable} are trainable (trainable_layers != 0): their outputs change "
                         "during training, so they cannot be cached. Set model.encoders.<m>.trainable_layers=0")


def _item_meta(item) -> dict:
    return {"item_id": item.item_id, "attributes": item.attributes, "metadata": item.metadata}


def cache_features(model: RecModel, preprocessors: dict, data_dir: str | Path, out: str | Path, *,
                   batch_size: int = 64, num_workers: int = 0, items_per_shard: int | None = None,
                   device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Encode every item once and stream feature shards (into OUT.partial, renamed at the end). DATA may be a
    URL (`mmrec.data.remote`); OUT is a local folder.

    One writer at a time: a second cache into the same OUT stops with one line (`.OUT.lock` beside it).
    """
    out = Path(out)
    with FolderLock(out.parent, f".{out.name}.lock"):
        return _cache_features(model, preprocessors, as_location(data_dir), out, batch_size, num_workers,
                               items_per_shard, device, progress)


@torch.no_grad()
def _cache_features(model: RecModel, preprocessors: dict, data_dir: str | Path, out: Path, batch_size: int,
                    num_workers: int, items_per_shard: int | None, device: str | torch.device,
                    progress: bool) -> dict:
    _check_frozen(model)
    source = load_manifest(data_dir)
    per_shard = items_per_shard or max(s["num_items"] for s in source["shards"])
    tmp = temp_sibling(out, ".partial")
    tmp.mkdir(parents=True)
    budgets = {m: model.fusion.config.budget(m) for m in model.modalities}
    device = torch.device(device)
    loader = item_batches(data_dir, preprocessors, [], batch_size=batch_size, num_workers=num_workers, device=device,
                          extra=_item_meta)
    # bf16 on a GPU that has it, as a training run's encoders compute from media (stored as fp16 anyway)
    autocast = bf16_autocast(device)
    model.to(device).eval()
    per_file: dict[str, int] = {}
    logger.info(f"encoding {source['num_items']} items with the frozen {', '.join(sorted(model.encoders))} encoders "
                f"on {device.type} -> {out}")
    bar = tqdm(total=source["num_items"], desc="cache", unit="item", disable=not progress or not progress_shown())
    with wds.ShardWriter(str(tmp / FEATURE_PATTERN), maxcount=per_shard, maxsize=float("inf"), verbose=0,
                         mtime=0.0) as writer:
        for batch, metas in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                encoded = model.encode(batch.to(device, non_blocking=True))  # (B, ...) per modality, zeros where absent
            # one copy to the host per modality and batch, not one per item (each would wait for the GPU)
            pooled = {m: e.pooled.float().cpu().numpy().astype(np.float16) for m, e in encoded.items()}
            tokens = {m: e.tokens[:, : budgets[m]].float().cpu().numpy().astype(np.float16)
                      for m, e in encoded.items() if budgets[m] > 0}
            masks = {m: e.mask[:, : budgets[m]].cpu().numpy().astype(np.uint8) for m, e in encoded.items() if budgets[m] > 0}
            for b in range(batch.size):
                index = int(batch.item_index[b])
                present = [m for m in model.modalities if bool(batch.present[m][b])]
                sample = {"__key__": schema.item_key(index),
                          "json": json.dumps({"index": index, "modalities": present, **metas[b]}).encode("utf-8")}
                for m in present:
                    sample[f"{m}.pooled.npy"] = _npy(pooled[m][b])
                    if budgets[m] > 0:
                        sample[f"{m}.tokens.npy"] = _npy(tokens[m][b])
                        sample[f"{m}.mask.npy"] = _npy(masks[m][b])
                writer.write(sample)
                per_file[writer.fname] = per_file.get(writer.fname, 0) + 1
            bar.update(batch.size)
    bar.close()
    shards = [{"path": Path(f).name, "num_items": n, "sha256": sha256_of(Path(f))} for f, n in sorted(per_file.items())]
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "kind": "features",
        "created_by": f"mmrec {__version__}",
        "num_items": sum(per_file.values()),
        "encoder_fingerprints": encoder_fingerprints(model),
        "dims": {m: model.encoders[m].output_dim for m in model.modalities},
        "token_budget": budgets,
        "dtype": "float16",
        "source": {"data": describe(data_dir), "shards_sha256": [s["sha256"] for s in source["shards"]]},
        "shards": shards,
    }
    (tmp / schema.MANIFEST).write_text(json.dumps(manifest, indent=2))
    replace_with(tmp, out)
    return manifest


def build_frozen_model(cfg, data_dir: str | Path) -> tuple[RecModel, dict]:
    """The model a training run with `cfg` builds first (`build_model`: same seed, same construction
    order), so its encoders, and hence the cache's fingerprint, are those the run will have."""
    from mmrec.data.dataset import Dataset
    from mmrec.data.splits import RunSplits
    from mmrec.data.vocabulary import RunVocabulary
    from mmrec.model.factory import ModelSizes, build_model

    dataset = Dataset(data_dir)
    vocab = RunVocabulary.from_data(dataset)
    sizes = ModelSizes.for_training(vocab, RunSplits(dataset, vocab))
    model, preprocessors = build_model(cfg.model, sizes, cfg.train.seed)
    _check_frozen(model)
    return model, preprocessors


def check_cache(model: RecModel, features_dir: str | Path) -> dict:
    """The cache's manifest, after checking it was written by these very encoders (the model's modalities
    only: a cache may hold more modalities than the model uses)."""
    manifest = load_manifest(features_dir)
    if manifest.get("kind") != "features":
        raise ValueError(f"{features_dir} is not a feature cache (run `mmrec cache`)")
    cached = manifest.get("encoder_fingerprints", {})
    missing = [m for m in model.modalities if m not in cached]
    if missing:
        raise ValueError(f"{features_dir} holds no {missing} features (it has {sorted(cached)}); rebuild it with "
                         "`mmrec cache` for this config")
    stale = [m for m, sha in encoder_fingerprints(model).items() if cached[m] != sha]
    if stale:
        raise ValueError(f"{features_dir} was computed with other {stale} encoder weights than this run's; "
                         "rebuild it with `mmrec cache` for this config")
    for m in model.modalities:
        if manifest["token_budget"][m] != model.fusion.config.budget(m):
            raise ValueError(f"{features_dir} holds a {m} token budget of {manifest['token_budget'][m]}, the model "
                             f"needs {model.fusion.config.budget(m)}")
    return manifest
