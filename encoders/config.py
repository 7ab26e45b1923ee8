"""`EncoderConfig`: which encoder family, where its weights come from, what trains.

Kept apart from the encoders themselves so that reading a YAML config imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
