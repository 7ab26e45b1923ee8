"""Helpers shared by the Hugging Face families (`hf-text`, `hf-ast`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


def local_folder(pretrained: str, family: str) -> Path:
    """The weights folder; a hub name is refused rather than downloaded."""
    path = Path(pretrained).expanduser()
    if not path.is_dir():
        raise ValueError(f"{family}: pretrained={pretrained!r} is not a local folder. Weights load only from a "
                         "folder holding config.json and the weights (model.safetensors); hub names are never "
                         "downloaded: fetch the model yourself, then point `pretrained` at its folder")
    return path


def no_arch_with_pretrained(arch: dict[str, Any], family: str) -> None:
    # The folder's config.json rules; silently ignoring `arch` would hide a config mistake.
    if arch:
        raise ValueError(f"{family}: arch {sorted(arch)} given together with pretrained; the folder's "
                         "config.json defines the architecture, so remove arch (it is for random init)")


def checked_config(config_cls: type[PretrainedConfig], arch: dict[str, Any], family: str) -> PretrainedConfig:
    """`config_cls(**arch)`, refusing keys the config does not define.

    Hugging Face configs store unknown kwargs as attributes, so a typo (`hiden_size`) would
    otherwise silently build the default-size model.
    """
    known = set(config_cls().to_dict())
    unknown = sorted(set(arch) - known)
    if unknown:
        raise ValueError(f"{family}: unknown arch key(s) {unknown} for {config_cls.__name__}; "
                         f"valid keys: {sorted(known)}")
    return config_cls(**arch)


def enable_grad_checkpointing(model: PreTrainedModel, enable: bool) -> None:
    """Turn Hugging Face activation checkpointing on or off (it acts in train mode only)."""
    new_api = hasattr(model, "activation_checkpointing_enable")  # transformers >= 5.x; the old names warn there
    if not enable:
        (model.activation_checkpointing_disable if new_api else model.gradient_checkpointing_disable)()
        return
    # Non-reentrant: the reentrant variant (transformers 4.x default) gives no parameter gradients when a
    # block's input does not require grad, which is exactly the case for top-N training over frozen
    # embeddings.
    kwargs = {"use_reentrant": False}
    if new_api:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def submodule(model: nn.Module, path: str) -> nn.Module | None:
    """`model.get_submodule(path)`, or None where the model has no such module."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def blocks_path(model: nn.Module, paths: tuple[str, ...], family: str) -> str:
    """The first of `paths` that names a module of `model` (layouts differ across models and versions)."""
    for path in paths:
        if submodule(model, path) is not None:
            return path
    raise ValueError(f"{family}: cannot find the transformer blocks of {type(model).__name__} "
                     f"(looked for {list(paths)})")
