"""Image encoders from timm: `timm-vit`, a Vision Transformer ("An Image is Worth 16x16 Words",
https://arxiv.org/abs/2010.11929), and `timm-cnn`, a convolutional network (ResNet, ConvNeXt, ...),
which learns far better than a ViT from a few thousand images when no pretrained weights exist.

`arch` = {"model_name": <timm model, default vit_base_patch16_224>, **model kwargs}; the model is
built with `num_classes=0` (no classifier). Weights: `pretrained` = a checkpoint file (safetensors,
or a torch state dict read with `weights_only=True`) that fits that model, or a folder in timm's
`local-dir:` layout (config.json + model.safetensors, as saved by `timm.models.save_for_hf`), whose
config.json names the model. The checkpoint goes through timm's conversion for the architecture and
loses its classifier, as in timm's own pretrained loading, and must then fit the model exactly:
a missing or an unexpected key is an error, never a silently random layer.

Tokens are `forward_features` (ViT: class/register tokens first, then patches; CNN: the final feature
map's positions, row by row), pooled is the model's own pre-logits head (`forward_head(...,
pre_logits=True)`: the class token or the average, by model). A CNN's `arch` may add `input_size:
[H, W]` (the resize target; default: the model's own), since a CNN takes any size.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from encoders.base import EncoderConfig, EncoderOutput, ModalityEncoder, Preprocessor
from encoders.checkpoint_keys import from_efficientnet_pytorch, is_efficientnet_pytorch
from encoders.registry import register_encoder

FAMILY = "timm-vit"
DEFAULT_MODEL = "vit_base_patch16_224"
TINY_ARCH = {"model_name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
             "num_heads": 2}
CNN_FAMILY = "timm-cnn"
CNN_TINY_ARCH = {"model_name": "test_resnet", "input_size": [32, 24]}
_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what timm.models.save_for_hf writes


def split_normalize(transform: Callable) -> tuple[Callable, tuple[torch.Tensor, torch.Tensor]]:
    """An eval transform ending in ToTensor + Normalize -> (PIL -> uint8 (3, H, W) transform, (mean, std))."""
    steps = list(getattr(transform, "transforms", []))
    if (len(steps) < 2 or not isinstance(steps[-1], T.Normalize)
            or type(steps[-2]).__name__ not in ("ToTensor", "MaybeToTensor")):
        raise ValueError(f"features_on_device for images needs an eval transform that ends in ToTensor + "
                         f"Normalize, got {transform}")
    mean, std = (torch.as_tensor(v, dtype=torch.float32) for v in (steps[-1].mean, steps[-1].std))
    return T.Compose(steps[:-2] + [T.PILToTensor()]), (mean, std)


class PixelNormalize(nn.Module):
    """uint8 (B, 3, H, W) -> what ToTensor + Normalize give: x / 255, minus mean, over std (float32).

    Its buffers are not saved: checkpoints are the same with features_on_device on or off.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.reshape(-1, 1, 1), persistent=False)  # (3, 1, 1)
        self.register_buffer("std", std.reshape(-1, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(pixels.device.type, enabled=False):
            return (pixels.float() / 255 - self.mean) / self.std


class ImagePreprocessor(Preprocessor):
    """PIL image -> resized, centre-cropped, normalised (3, H, W) tensor (a picklable torchvision transform).

    With `on_device` (the encoder's `features_on_device`) it stops before ToTensor + Normalize and
    gives uint8 `pixels`: a quarter of the bytes to move between processes and to the GPU, and less
    work per image in the workers; the encoder's `PixelNormalize` does the rest on its device.
    """

    modality = "image"

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], on_device: bool = False):
        self.transform = transform
        self.on_device = on_device
        self.geometry, self.normalization = split_normalize(transform) if on_device else (None, None)

    def __call__(self, raw: Image.Image) -> dict[str, torch.Tensor]:
        if not isinstance(raw, Image.Image):
            raise TypeError(f"image preprocessing takes a PIL image, got {type(raw).__name__}")
        if self.on_device:
            return {"pixels": self.geometry(raw.convert("RGB"))}  # (3, H, W) uint8
        return {"pixel_values": self.transform(raw.convert("RGB"))}  # (3, H, W)


class ImageInput:
    """For image encoders: take normalised `pixel_values`, or uint8 `pixels` when features_on_device is on."""

    def pixel_values_of(self, pixel_values: torch.Tensor | None, pixels: torch.Tensor | None) -> torch.Tensor:
        if pixels is None:
            return pixel_values
        # a submodule (set by with_preprocessing), so no class-level default: that would shadow it
        normalize = getattr(self, "pixel_normalize", None)
        if normalize is None:
            raise ValueError("got uint8 pixels, but features_on_device is off for this image encoder")
        return normalize(pixels)


def with_preprocessing(cfg: EncoderConfig, encoder: ModalityEncoder, transform: Callable) -> tuple:
    """(encoder, its ImagePreprocessor); with features_on_device the normalisation moves into the encoder."""
    preprocessor = ImagePreprocessor(transform, on_device=cfg.features_on_device)
    if cfg.features_on_device:
        encoder.pixel_normalize = PixelNormalize(*preprocessor.normalization)
    return encoder, preprocessor


class TimmViTEncoder(ImageInput, ModalityEncoder):
    """Wraps a timm ViT built with `num_classes=0`."""

    modality = "image"

    def __init__(self, config: EncoderConfig, model: nn.Module):
        super().__init__(config)
        if not isinstance(getattr(model, "blocks", None), nn.Sequential | nn.ModuleList):
            raise ValueError(f"{FAMILY}: {type(model).__name__} has no `blocks`; use a ViT-style timm model")
        self.model = model

    @property
    def output_dim(self) -> int:
        return self.model.num_features

    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def head_modules(self) -> list[nn.Module]:
        names = ("norm", "fc_norm", "attn_pool", "head")  # everything forward_features/forward_head run after blocks
        return [m for n in names if (m := getattr(self.model, n, None)) is not None]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, pixel_values: torch.Tensor | None = None, pixels: torch.Tensor | None = None) -> EncoderOutput:
        tokens = self.model.forward_features(self.pixel_values_of(pixel_values, pixels))  # (B, T, D), prefix tokens included
        pooled = self.model.forward_head(tokens, pre_logits=True)  # (B, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # (B, T) every patch is real
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)


class TimmCNNEncoder(ImageInput, ModalityEncoder):
    """Wraps a timm CNN built with `num_classes=0`; its stages are the blocks that `trainable_layers` counts."""

    modality = "image"

    def __init__(self, config: EncoderConfig, model: nn.Module):
        super().__init__(config)
        self.model = model
        if not self.blocks():
            raise ValueError(f"{CNN_FAMILY}: {type(model).__name__} has neither `stages` nor `layer1..4`; "
                             "use a ResNet-, ConvNeXt- or EfficientNet-style timm model")

    @property
    def output_dim(self) -> int:
        return self.model.num_features

    def blocks(self) -> list[nn.Module]:
        stages = getattr(self.model, "stages", None)  # ConvNeXt, RegNet
        if isinstance(stages, nn.Sequential | nn.ModuleList):
            return list(stages)
        if hasattr(self.model, "conv_stem") and isinstance(getattr(self.model, "blocks", None), nn.Sequential):
            return list(self.model.blocks)  # EfficientNet / MobileNet: `blocks` holds one Sequential per stage
        return [layer for n in ("layer1", "layer2", "layer3", "layer4") if (layer := getattr(self.model, n, None))]

    def head_modules(self) -> list[nn.Module]:
        names = ("norm_pre", "conv_head", "bn2", "norm_head", "head")  # bn2: EfficientNet's norm after conv_head
        return [m for n in names if (m := getattr(self.model, n, None)) is not None]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, pixel_values: torch.Tensor | None = None, pixels: torch.Tensor | None = None) -> EncoderOutput:
        fmap = self.model.forward_features(self.pixel_values_of(pixel_values, pixels))  # (B, D, h, w)
        pooled = self.model.forward_head(fmap, pre_logits=True)  # (B, D)
        tokens = fmap.flatten(2).transpose(1, 2)  # (B, h * w, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)


def _create_model(cfg: EncoderConfig, family: str = FAMILY) -> nn.Module:
    arch: dict[str, Any] = {k: v for k, v in cfg.arch.items() if k != "input_size"}
    model_name = arch.pop("model_name", DEFAULT_MODEL)
    if cfg.pretrained is None:
        return timm.create_model(model_name, pretrained=False, num_classes=0, **arch)
    path = Path(cfg.pretrained).expanduser()
    if path.is_dir():
        # timm's own folder layout: its config.json names the architecture
        model = timm.create_model(f"local-dir:{path}", pretrained=False, num_classes=0, **arch)
        found = [path / name for name in _FOLDER_WEIGHTS if (path / name).is_file()]
        if not found:
            raise ValueError(f"{family}: {path} holds none of {list(_FOLDER_WEIGHTS)}; save the model with "
                             "timm.models.save_for_hf, or point pretrained at the checkpoint file")
        _load_checkpoint(model, found[0], cfg, family)
    elif path.is_file():
        model = timm.create_model(model_name, pretrained=False, num_classes=0, **arch)
        _load_checkpoint(model, path, cfg, family)
    else:
        raise ValueError(f"{family}: pretrained={cfg.pretrained!r} is neither a checkpoint file nor a timm "
                         "folder; weights are never downloaded")
    return model


def _load_checkpoint(model: nn.Module, file: Path, cfg: EncoderConfig, family: str) -> None:
    """Load a checkpoint into `model` as timm's pretrained loader does, refusing one that does not fit.

    Not timm's loader itself: it loads non-strictly whenever it drops the checkpoint's classifier
    (num_classes=0) and only logs what did not match, so a checkpoint of another model would leave layers
    silently random. Here the keys `load_state_dict` reports decide.
    """
    if file.suffix in (".npz", ".npy"):  # timm would hand these to a model-specific, non-strict JAX loader
        raise ValueError(f"{family}: {file} is a NumPy checkpoint; load it into the timm model once and save "
                         "its state_dict (safetensors or torch)")
    # timm's conversion for this architecture (other checkpoint layouts, other image sizes), where its module
    # has one: the `pretrained_filter_fn` timm's builder passes for a pretrained load
    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    classifiers = model.pretrained_cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    classifier_keys = {f"{c}.{p}" for c in classifiers for p in ("weight", "bias")}

    def filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        if is_efficientnet_pytorch(state_dict):  # another library's names: an explicit, checked mapping
            state_dict = from_efficientnet_pytorch(state_dict, model)
        elif convert is not None:
            state_dict = convert(state_dict, model)
        # a num_classes=0 model has no classifier: drop the checkpoint's, as timm does
        return {k: v for k, v in state_dict.items() if k not in classifier_keys}

    def mismatch(problem: str) -> ValueError:
        return ValueError(f"{family}: {file} does not fit the model built from arch={cfg.arch}: {problem}. "
                          "Set arch (model_name and kwargs) to the checkpoint's model.")

    try:
        # safetensors, or torch.load(weights_only=True); unwraps {"state_dict": ...} and EMA weights
        result = timm.models.load_checkpoint(model, str(file), strict=False, filter_fn=filter_fn, weights_only=True)
    except RuntimeError as e:  # same keys, other shapes; torch lists every one of them
        names = re.findall(r"size mismatch for ([^:]+):", str(e))
        raise mismatch(f"other shapes for {_few(names)}" if names else str(e).strip().splitlines()[0]) from e
    problems = [f"{what} keys {_few(keys)}" for what, keys in (("missing", result.missing_keys),
                                                              ("unexpected", result.unexpected_keys)) if keys]
    if problems:
        raise mismatch("; ".join(problems))


def _few(keys: list[str], n: int = 5) -> str:
    return "[" + ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "") + "]"


@register_encoder(FAMILY, tiny_arch=TINY_ARCH)
def create_timm_vit(cfg: EncoderConfig) -> tuple[TimmViTEncoder, ImagePreprocessor]:
    """Build a timm ViT (random init, or a local checkpoint file/folder) and its eval transform."""
    if cfg.max_tokens is not None:
        raise ValueError(f"{FAMILY}: max_tokens does not apply to images (the token count follows img_size)")
    try:
        model = _create_model(cfg)
    except TypeError as e:  # an unknown model kwarg
        raise ValueError(f"{FAMILY}: bad arch {cfg.arch}: {e}") from e
    encoder = TimmViTEncoder(cfg, model)
    if getattr(model, "head_hidden_size", model.num_features) != model.num_features:
        raise ValueError(f"{FAMILY}: {type(model).__name__} pools to {model.head_hidden_size} but its tokens are "
                         f"{model.num_features} wide; EncoderOutput needs one width")
    # The registry's pretrained_cfg keeps the variant's default 224 px even when img_size is overridden,
    # so the input size comes from the built model.
    args = {}
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        args["input_size"] = (3, *img_size)
    data_cfg = timm.data.resolve_model_data_config(model, args=args)
    return with_preprocessing(cfg, encoder, timm.data.create_transform(**data_cfg, is_training=False))


@register_encoder(CNN_FAMILY, tiny_arch=CNN_TINY_ARCH)
def create_timm_cnn(cfg: EncoderConfig) -> tuple[TimmCNNEncoder, ImagePreprocessor]:
    """Build a timm CNN (random init, or a local checkpoint file/folder) and its eval transform."""
    if cfg.max_tokens is not None:
        raise ValueError(f"{CNN_FAMILY}: max_tokens does not apply to images (the token count follows input_size)")
    if "model_name" not in cfg.arch and cfg.pretrained is None:
        raise ValueError(f"{CNN_FAMILY}: arch.model_name is required (e.g. resnet18, convnext_atto)")
    input_size = cfg.arch.get("input_size")
    if input_size is not None and (len(input_size) != 2 or min(input_size) < 8):
        raise ValueError(f"{CNN_FAMILY}: input_size must be [height, width] >= 8 pixels, got {input_size}")
    try:
        model = _create_model(cfg, CNN_FAMILY)
    except TypeError as e:  # an unknown model kwarg
        raise ValueError(f"{CNN_FAMILY}: bad arch {cfg.arch}: {e}") from e
    encoder = TimmCNNEncoder(cfg, model)
    args = {"input_size": (3, *input_size)} if input_size is not None else {}
    data_cfg = timm.data.resolve_model_data_config(model, args=args)
    # resize the shorter side and centre-crop to exactly input_size (crop_pct 1: keep the whole poster)
    transform = timm.data.create_transform(**{**data_cfg, "crop_pct": 1.0}, is_training=False)
    return with_preprocessing(cfg, encoder, transform)
