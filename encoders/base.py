"""The one small interface every modality encoder implements.

An encoder is built from an `EncoderConfig` by `encoders.create_encoder` and comes with its
preprocessing: `Preprocessor.__call__` turns one raw item (a string, a PIL image, a waveform + rate)
into tensors inside DataLoader workers, `Preprocessor.collate` stacks/pads them into a batch, and the
encoder's `forward(**batch)` returns `EncoderOutput`. Encoders take tensors, never raw media.

Shape legend: B batch, T tokens, D encoder width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from encoders.config import EncoderConfig


@dataclass
class EncoderOutput:
    """What every encoder returns."""

    tokens: torch.Tensor  # (B, T, D) token sequence
    mask: torch.Tensor  # (B, T) bool, True = a real token
    pooled: torch.Tensor  # (B, D) one vector per item


# Tokens per character have a floor (a token covers at most a few dozen characters in any BPE/WordPiece
# vocabulary), so a text longer than this many characters per token of budget cannot change the kept
# tokens; cutting it first bounds the tokenizer's time and memory on a pathological 20 MB description.
CHARS_PER_TOKEN_CAP = 64


def cap_text(text: str, max_tokens: int) -> str:
    """`text` cut to CHARS_PER_TOKEN_CAP characters per token the encoder keeps."""
    return text[: CHARS_PER_TOKEN_CAP * max_tokens]


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
