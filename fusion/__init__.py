"""Cross-modal fusion: encoder outputs of the present modalities -> one item embedding.

`create_fusion(cfg)` builds a fusion model from a `FusionConfig` (or a dict of its fields, as read
from YAML), input widths included; `list_fusions()` names the registered families. The model takes
one `FusionInput` (tokens, mask, pooled) per modality. This package never imports `mmrec` or
`encoders`: it takes encoder outputs as tensors and knows nothing of users, ratings or losses.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fusion.config import FusionConfig

if TYPE_CHECKING:
    from fusion.transformer import FusionTransformer

# name -> (config class, module and class of the model), the model imported on first use so that
# reading a config needs no torch
_FUSIONS: dict[str, tuple[type, str]] = {"transformer": (FusionConfig, "fusion.transformer:FusionTransformer")}
_LAZY = {"FusionInput": "fusion.transformer", "FusionOutput": "fusion.transformer",
         "FusionTransformer": "fusion.transformer", "drop_modalities": "fusion.transformer"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fusion' has no attribute {name!r}")


def list_fusions() -> list[str]:
    """Names accepted by `create_fusion` (the config's `name` field)."""
    return sorted(_FUSIONS)


def create_fusion(cfg: FusionConfig | Mapping[str, Any]) -> FusionTransformer:
    """Build a fusion model.

    Args:
        cfg: a `FusionConfig`, or a dict of its fields (unknown keys are errors). Its `input_dims`
            (each modality's `encoder.output_dim`) is the one place the input widths are given.

    Example:
        fusion = create_fusion({"width": 32, "layers": 2, "heads": 2, "modalities": ["text", "image"],
                                "input_dims": {"text": 384, "image": 192}})
    """
    name = cfg.get("name", "transformer") if isinstance(cfg, Mapping) else getattr(cfg, "name", None)
    if name not in _FUSIONS:
        raise ValueError(f"fusion {name!r} not found. Available: {list_fusions()}")
    config_cls, target = _FUSIONS[name]
    module, cls_name = target.split(":")
    model_cls = getattr(importlib.import_module(module), cls_name)
    if isinstance(cfg, Mapping):
        fields = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise ValueError(f"unknown fusion config keys {unknown}; valid keys: {sorted(fields)}")
        cfg = config_cls(**cfg)
    elif not isinstance(cfg, config_cls):
        raise TypeError(f"fusion {name!r} needs a {config_cls.__name__} or a dict, got {type(cfg).__name__}")
    return model_cls(cfg)


__all__ = ["FusionConfig", "FusionInput", "FusionOutput", "FusionTransformer", "create_fusion", "drop_modalities",
           "list_fusions"]
