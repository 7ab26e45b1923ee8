"""What the Hugging Face families (`hf-text`, `hf-ast`) share: `HFEncoder`, the base of their encoders
(the wrapped model, its blocks for top-N training, its final norm, activation checkpointing), and the
two ways to get the model: `from_folder` (a local `pretrained` folder) or `checked_config` (random init
from `arch`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from encoders.base import EncoderConfig, ModalityEncoder


def local_folder(pretrained: str, family: str) -> Path:
    """The weights folder; a hub name is refused rather than downloaded."""
    path = Path(pretrained).expanduser()
    if not path.is_dir():
        raise ValueError(f"{family}: pretrained={pretrained!r} is not a local folder. Weights load only from a "
                         "folder holding config.json and the weights (model.safetensors); hub names are never "
                         "downloaded: fetch the model yourself, then point `pretrained` at its folder")
    return path


def from_folder(cfg: EncoderConfig, family: str, model_cls: Any) -> tuple[PreTrainedModel, Path]:
    """`model_cls.from_pretrained` on the local folder `cfg.pretrained`; returns (model, folder).

    The folder's config.json defines the architecture, so `cfg.arch` must be empty: silently ignoring
    it would hide a config mistake.
    """
    if cfg.arch:
        raise ValueError(f"{family}: arch {sorted(cfg.arch)} given together with pretrained; the folder's "
                         "config.json defines the architecture, so remove arch (it is for random init)")
    folder = local_folder(cfg.pretrained, family)
    return model_cls.from_pretrained(folder, local_files_only=True), folder


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


class HFEncoder(ModalityEncoder):
    """Base of the Hugging Face encoders: `self.model` is the wrapped `PreTrainedModel`.

    A family sets `family`, `block_paths` (where its transformer blocks may live) and `head_paths`
    (the modules above the last block) and writes `forward`.
    """

    family: str = ""
    block_paths: tuple[str, ...] = ()  # the first that names a module of the model is used
    head_paths: tuple[str, ...] = ()  # those the model has train with the top blocks

    def __init__(self, config: EncoderConfig, model: PreTrainedModel):
        super().__init__(config)
        self.model = model
        # a path, not the module: a second module attribute would put the blocks twice in the state dict
        self._blocks_path = blocks_path(model, self.block_paths, self.family)

    @property
    def output_dim(self) -> int:
        return self.model.config.hidden_size

    def blocks(self) -> list[nn.Module]:
        return list(self.model.get_submodule(self._blocks_path))

    def head_modules(self) -> list[nn.Module]:
        return [m for p in self.head_paths if (m := submodule(self.model, p)) is not None]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn Hugging Face activation checkpointing on or off (it acts in train mode only)."""
        model = self.model
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
