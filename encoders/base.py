"""The one small interface every modality encoder implements.

An encoder is built from an `EncoderConfig` by `encoders.create_encoder` and comes with its
preprocessing: `Preprocessor.__call__` turns one raw item (a string, a PIL image, a waveform + rate)
into tensors inside DataLoader workers, `Preprocessor.collate` stacks/pads them into a batch, and the
encoder's `forward(**batch)` returns `EncoderOutput`. Encoders take tensors, never raw media.

Shape legend: B batch, T tokens, D encoder width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class EncoderConfig:
    """One modality encoder: which family, where its weights come from, what trains.

    `arch` describes the architecture. Hugging Face families (`hf-text`, `hf-ast`) take config kwargs
    for random initialisation and ignore nothing silently: with `pretrained` (a folder with its own
    config.json) `arch` must be empty. File-checkpoint families (`timm-vit`, `open-clip-*`) take a
    `model_name` plus model kwargs, which must describe the network the checkpoint file fits.
    """

    name: str  # registered family: see encoders.list_encoders()
    pretrained: str | None = None  # local HF folder or checkpoint file; None = random init (never a download)
    trainable_layers: int = 0  # 0 = frozen, N = top N transformer blocks (+ final norm), -1 = everything
    gradient_checkpointing: bool = False  # trade compute for memory in the trainable blocks
    max_tokens: int | None = None  # text: max sequence length; audio: max fbank frames (family default if None)
    # hf-ast: compute the fbank inside the encoder (on the GPU, batched) instead of per clip in the
    # DataLoader workers; the features are the same (encoders/fbank.py). Image families: the workers
    # resize and crop, the encoder scales and normalises the uint8 pixels on its device.
    features_on_device: bool = False
    arch: dict[str, Any] = field(default_factory=dict)  # architecture, e.g. {"hidden_size": 32}; see above

    def __post_init__(self) -> None:
        if self.trainable_layers < -1:
            raise ValueError(f"trainable_layers must be -1 (all), 0 (frozen) or N > 0, got {self.trainable_layers}")
        if not isinstance(self.arch, dict):
            raise ValueError(f"arch must be a dict of architecture kwargs, got {type(self.arch).__name__}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be positive or None (family default), got {self.max_tokens}")


@dataclass
class EncoderOutput:
    """What every encoder returns."""

    tokens: torch.Tensor  # (B, T, D) token sequence
    mask: torch.Tensor  # (B, T) bool, True = a real token
    pooled: torch.Tensor  # (B, D) one vector per item


class Preprocessor:
    """Raw item -> tensors (in DataLoader workers), and a list of those -> a batch. Must pickle."""

    modality: str = ""

    def __call__(self, raw: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def collate(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Default: stack tensors of equal shape."""
        return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


class ModalityEncoder(nn.Module):
    """Base class: a wrapped library model plus the trainability policy shared by all families."""

    modality: str = ""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config

    @property
    def output_dim(self) -> int:
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """The transformer blocks, bottom to top (used for top-N trainability)."""
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module | nn.Parameter]:
        """Modules above the last block (final norm, projection) that train whenever any block trains.

        Bare parameters are allowed: open_clip keeps its output projections as `nn.Parameter`s.
        """
        return []

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass instead of storing them."""
        raise NotImplementedError

    def apply_trainability(self) -> None:
        """Freeze everything, then unfreeze the top `trainable_layers` blocks (-1: all)."""
        n = self.config.trainable_layers
        blocks = self.blocks()
        if n > len(blocks):
            raise ValueError(f"trainable_layers={n} but {self.config.name} has only {len(blocks)} blocks; "
                             "use -1 to train everything (embeddings included)")
        self.requires_grad_(n == -1)
        if n > 0:
            for module in blocks[-n:] + self.head_modules():
                module.requires_grad_(True)

    def train(self, mode: bool = True) -> ModalityEncoder:
        # A frozen encoder is a fixed feature extractor: keep its dropout off even while the model that
        # holds it trains, so its features (and the stop-gradient targets built from them) are not noisy.
        return super().train(mode and self.config.trainable_layers != 0)

    def forward(self, **batch: torch.Tensor) -> EncoderOutput:
        raise NotImplementedError
