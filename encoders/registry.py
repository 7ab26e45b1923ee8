"""The encoder factory: `create_encoder(cfg)` -> (encoder, its preprocessor), `list_encoders()`.

Each family module registers a builder with `@register_encoder(name)`. The built-in families are
imported on first use, so `import encoders` (and every DataLoader worker that unpickles a
preprocessor) does not pay for importing timm, open_clip and transformers all at once.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from encoders.base import EncoderConfig, ModalityEncoder, Preprocessor

Builder = Callable[[EncoderConfig], tuple[ModalityEncoder, Preprocessor]]

_BUILDERS: dict[str, Builder] = {}
_TINY_ARCH: dict[str, dict[str, Any]] = {}
# built-in family -> module that registers it when imported
_BUILTIN_MODULES = {
    "hf-text": "encoders.text",
    "timm-vit": "encoders.image",
    "timm-cnn": "encoders.image",
    "open-clip-vision": "encoders.clip",
    "open-clip-text": "encoders.clip",
    "hf-ast": "encoders.audio",
}


def register_encoder(name: str, tiny_arch: Mapping[str, Any] | None = None) -> Callable[[Builder], Builder]:
    """Register `builder(cfg) -> (encoder, preprocessor)` under `name`.

    Args:
        name: the `EncoderConfig.name` that selects this family.
        tiny_arch: a small random-init architecture for tests and demos (see `tiny_config`).
    """

    def decorator(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"encoder {name!r} is already registered (by {_BUILDERS[name].__module__})")
        _BUILDERS[name] = builder
        if tiny_arch is not None:
            _TINY_ARCH[name] = dict(tiny_arch)
        return builder

    return decorator


def list_encoders() -> list[str]:
    """Names accepted as `EncoderConfig.name`."""
    return sorted(set(_BUILDERS) | set(_BUILTIN_MODULES))


def _lookup(name: str) -> Builder:
    if name not in _BUILDERS and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _BUILDERS:
        raise ValueError(f"unknown encoder {name!r}; available: {list_encoders()}")
    return _BUILDERS[name]


def _as_config(cfg: EncoderConfig | Mapping[str, Any]) -> EncoderConfig:
    """Turn a dict (as read from YAML) into an `EncoderConfig`; unknown keys are errors."""
    if isinstance(cfg, EncoderConfig):
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f"encoder config must be an EncoderConfig or a dict, got {type(cfg).__name__}")
    fields = [f.name for f in dataclasses.fields(EncoderConfig)]
    unknown = sorted(set(cfg) - set(fields))
    if unknown:
        raise ValueError(f"unknown encoder config key(s) {unknown}; valid keys: {fields}")
    if "name" not in cfg:
        raise ValueError(f"encoder config needs a 'name'; available: {list_encoders()}")
    return EncoderConfig(**cfg)


def create_encoder(cfg: EncoderConfig | Mapping[str, Any]) -> tuple[ModalityEncoder, Preprocessor]:
    """Build an encoder and the preprocessing that feeds it.

    Weights come only from `cfg.pretrained` (a local folder or file) or random init; nothing is
    downloaded. Trainability (`trainable_layers`) and gradient checkpointing are applied here.

    Example:
        encoder, prep = create_encoder({"name": "hf-text", "pretrained": "/models/all-MiniLM-L6-v2"})
        batch = prep.collate([prep("a red bicycle"), prep("jazz record")])
        out = encoder(**batch)  # out.pooled: (2, 384)
    """
    cfg = _as_config(cfg)
    if cfg.features_on_device and cfg.name in ("hf-text", "open-clip-text"):
        raise ValueError(f"features_on_device applies to audio (the fbank) and images (the normalisation), "
                         f"not to the text encoder {cfg.name!r}")
    encoder, preprocessor = _lookup(cfg.name)(cfg)
    encoder.apply_trainability()
    if cfg.gradient_checkpointing:
        encoder.set_grad_checkpointing(True)
    encoder.train()  # nn.Module convention; frozen encoders stay in eval (see ModalityEncoder.train)
    return encoder, preprocessor


def tiny_config(name: str, **overrides: Any) -> EncoderConfig:
    """A small random-init config of family `name` (hidden width 32, 2 blocks) for tests and demos.

    Example:
        encoder, prep = create_encoder(tiny_config("hf-ast", trainable_layers=1))
    """
    _lookup(name)
    if name not in _TINY_ARCH:
        raise ValueError(f"encoder {name!r} registers no tiny architecture; "
                         f"families with one: {sorted(_TINY_ARCH)}")
    arch = {**_TINY_ARCH[name], **overrides.pop("arch", {})}
    return _as_config({"name": name, "arch": arch, **overrides})
