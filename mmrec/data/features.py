"""The feature cache's format and reader: what `mmrec cache` writes and training reads instead of media.

    FEATS/manifest.json            kind "features", encoder fingerprint per modality, dims, budgets, shards
    FEATS/features-000000.tar ...  json (index, item_id, attributes, metadata) +
                                   {m}.pooled.npy, {m}.tokens.npy, {m}.mask.npy per present modality

The writer (`mmrec.training.cache`) runs a model's encoders; this module only reads, so the data layer
needs no model.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

FEATURE_PATTERN = "features-%06d.tar"


@dataclass
class CachedItem:
    """An item whose encoder outputs were precomputed: modality -> {"pooled", "tokens", "mask"}."""

    index: int
    item_id: str
    features: dict[str, dict[str, torch.Tensor]]
    attributes: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def _load_npy(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32))


def decode_features(sample: dict[str, Any]) -> CachedItem:
    """Raw feature-shard members -> `CachedItem` (runs in DataLoader workers)."""
    meta = json.loads(sample["json"])
    features = {}
    for m in meta["modalities"]:
        f = {"pooled": _load_npy(sample[f"{m}.pooled.npy"])}
        if f"{m}.tokens.npy" in sample:
            f["tokens"] = _load_npy(sample[f"{m}.tokens.npy"])
            f["mask"] = _load_npy(sample[f"{m}.mask.npy"]).bool()
        features[m] = f
    return CachedItem(meta["index"], meta["item_id"], features, meta.get("attributes", []), meta.get("metadata", {}))
