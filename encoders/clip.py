"""`open-clip-vision` and `open-clip-text`: one tower of an open_clip CLIP model
(Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
https://arxiv.org/abs/2103.00020; Cherti et al., https://arxiv.org/abs/2212.07143).

`arch` = {"model_name": <open_clip config, default ViT-B-32>, **create_model kwargs}; kwargs such as
`embed_dim`, `vision_cfg`, `text_cfg` replace the named config's entries (the tiny test model does
this). Weights: `pretrained` = a checkpoint file (safetensors, or a state dict read with
`weights_only=True`) that fits that model, or a folder in open_clip's `local-dir:` layout
(open_clip_config.json + open_clip_model.safetensors), whose config names the model. Pretrained tags
such as "openai" are refused: open_clip would download them.

Both towers return their output in CLIP's joint space: pooled is the projected image / text
embedding, and the tokens go through the same final norm and projection, so tokens and pooled share
one width (`embed_dim`). Vision tokens are the patch tokens; text tokens run up to the end-of-text
token (the mask hides the padding after it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

from encoders.base import EncoderConfig, EncoderOutput, ModalityEncoder, Preprocessor, cap_text
from encoders.image import ImageInput, ImagePreprocessor, with_preprocessing
from encoders.registry import register_encoder

DEFAULT_MODEL = "ViT-B-32"
# Tiny towers on the ViT-B-32 config: the text tower keeps CLIP's BPE vocabulary and 77-token context
# so that the packaged tokenizer fits it.
TINY_ARCH = {
    "model_name": "ViT-B-32",
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _source(cfg: EncoderConfig, family: str) -> tuple[str, str | None, dict[str, Any]]:
    """(model name for open_clip, checkpoint file or None, create_model kwargs)."""
    kwargs = dict(cfg.arch)
    model_name = kwargs.pop("model_name", DEFAULT_MODEL)
    if cfg.pretrained is None:
        return model_name, None, kwargs
    path = Path(cfg.pretrained).expanduser()
    if path.is_dir():
        return f"local-dir:{path}", None, kwargs
    if path.is_file():
        return model_name, str(path), kwargs
    raise ValueError(f"{family}: pretrained={cfg.pretrained!r} is neither a checkpoint file nor an open_clip "
                     "folder; pretrained tags are refused because open_clip would download them")


def _create_clip(cfg: EncoderConfig, family: str, **extra: Any) -> tuple[nn.Module, str]:
    model_name, checkpoint, kwargs = _source(cfg, family)
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ValueError(f"{family}: unknown open_clip model {model_name!r}; available: {open_clip.list_models()}")
    text_cfg = {**model_cfg.get("text_cfg", {}), **kwargs.get("text_cfg", {})}
    vision_cfg = {**model_cfg.get("vision_cfg", {}), **kwargs.get("vision_cfg", {})}
    if "hf_model_name" in text_cfg or "timm_model_name" in vision_cfg:
        # their towers load base weights from the hub at creation
        raise ValueError(f"{family}: {model_name} builds a Hugging Face or timm tower that open_clip downloads; "
                         "use a plain open_clip ViT config (e.g. ViT-B-32, ViT-B-16, ViT-L-14)")
    try:
        model = open_clip.create_model(
            model_name,
            pretrained=checkpoint,
            pretrained_image=False,  # never fetch tower weights behind our back
            pretrained_text=False,
            require_pretrained=cfg.pretrained is not None,
            **extra,
            **kwargs,
        )
    except TypeError as e:  # an unknown create_model / tower kwarg
        raise ValueError(f"{family}: bad arch {cfg.arch}: {e}") from e
    return model, model_name


class OpenCLIPVisionEncoder(ImageInput, ModalityEncoder):
    """The image tower (`model.visual`) of an open_clip ViT CLIP model."""

    modality = "image"

    def __init__(self, config: EncoderConfig, visual: VisionTransformer):
        super().__init__(config)
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
            raise ValueError(f"open-clip-vision: {type(visual).__name__} is not a plain ViT image tower "
                             "(ResNet, timm and CoCa attention-pool towers are not supported)")
        visual.output_tokens = True  # forward returns (pooled, tokens)
        self.visual = visual

    @property
    def output_dim(self) -> int:
        return self.visual.output_dim

    def blocks(self) -> list[nn.Module]:
        return list(self.visual.transformer.resblocks)

    def head_modules(self) -> list[nn.Module | nn.Parameter]:
        return [m for m in (self.visual.ln_post, self.visual.proj) if m is not None]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def forward(self, pixel_values: torch.Tensor | None = None, pixels: torch.Tensor | None = None) -> EncoderOutput:
        pooled, tokens = self.visual(self.pixel_values_of(pixel_values, pixels))  # (B, D), (B, T, W) normed patch tokens
        if self.visual.proj is not None:
            tokens = tokens @ self.visual.proj  # (B, T, D), into the space pooled lives in
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # (B, T)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)


class CLIPTextPreprocessor(Preprocessor):
    """str -> CLIP BPE ids padded to the model's context length, with the mask up to end-of-text."""

    modality = "text"

    def __init__(self, tokenizer: open_clip.SimpleTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, raw: str) -> dict[str, torch.Tensor]:
        if not isinstance(raw, str):
            raise TypeError(f"open-clip-text preprocessing takes a str, got {type(raw).__name__}")
        ids = self.tokenizer([cap_text(raw, self.tokenizer.context_length)])[0]  # (C,) truncated, end-of-text last
        # Padding is id 0, which is also the BPE id of "!", so the mask comes from the end-of-text position.
        eot = int((ids == self.tokenizer.eot_token_id).nonzero()[0])
        return {"input_ids": ids, "attention_mask": (torch.arange(len(ids)) <= eot).long()}


class OpenCLIPTextEncoder(ModalityEncoder):
    """The text tower of an open_clip CLIP model (built as `CustomTextCLIP.text`)."""

    modality = "text"

    def __init__(self, config: EncoderConfig, text: TextTransformer):
        super().__init__(config)
        if not isinstance(text, TextTransformer) or text.cls_emb is not None:
            raise ValueError(f"open-clip-text: {type(text).__name__} is not a plain CLIP text tower")
        text.output_tokens = True  # forward returns (pooled, tokens)
        self.text = text

    @property
    def output_dim(self) -> int:
        return self.text.output_dim

    def blocks(self) -> list[nn.Module]:
        return list(self.text.transformer.resblocks)

    def head_modules(self) -> list[nn.Module | nn.Parameter]:
        return [m for m in (self.text.ln_final, self.text.text_projection) if m is not None]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.text.set_grad_checkpointing(enable)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderOutput:
        pooled, tokens = self.text(input_ids)  # (B, D) at end-of-text, (B, C, W) normed tokens
        projection = self.text.text_projection
        if isinstance(projection, nn.Linear):
            tokens = projection(tokens)  # (B, C, D)
        elif projection is not None:
            tokens = tokens @ projection  # (B, C, D)
        return EncoderOutput(tokens=tokens, mask=attention_mask.bool(), pooled=pooled)


@register_encoder("open-clip-vision", tiny_arch=TINY_ARCH)
def create_open_clip_vision(cfg: EncoderConfig) -> tuple[OpenCLIPVisionEncoder, ImagePreprocessor]:
    """The image tower and open_clip's eval transform for it."""
    if cfg.max_tokens is not None:
        raise ValueError("open-clip-vision: max_tokens does not apply to images (the token count follows image_size)")
    model, _ = _create_clip(cfg, "open-clip-vision")
    preprocess = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    encoder = OpenCLIPVisionEncoder(cfg, model.visual)  # the text tower is dropped with `model`
    return with_preprocessing(cfg, encoder, image_transform_v2(preprocess, is_train=False))


@register_encoder("open-clip-text", tiny_arch=TINY_ARCH)
def create_open_clip_text(cfg: EncoderConfig) -> tuple[OpenCLIPTextEncoder, CLIPTextPreprocessor]:
    """The text tower and the CLIP BPE tokenizer packaged with open_clip (no download)."""
    # force_custom_text: the text tower becomes one `model.text` module (open_clip converts plain CLIP
    # checkpoints to that layout on load) instead of attributes spread over the CLIP model.
    model, model_name = _create_clip(cfg, "open-clip-text", force_custom_text=True)
    context_length = model.text.context_length
    if cfg.max_tokens is not None and cfg.max_tokens != context_length:
        raise ValueError(f"open-clip-text: the causal mask fixes the input at {context_length} tokens; "
                         "leave max_tokens unset")
    text_cfg = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
    if "hf_tokenizer_name" in text_cfg or "siglip" in model_name.lower():
        raise ValueError(f"open-clip-text: {model_name} uses a Hugging Face tokenizer (open_clip would download "
                         "it); use a model with CLIP's own BPE tokenizer (e.g. ViT-B-32, ViT-L-14)")
    tokenizer = open_clip.get_tokenizer(model_name, context_length=context_length)
    if not isinstance(tokenizer, open_clip.SimpleTokenizer):
        raise ValueError(f"open-clip-text: {model_name} uses {type(tokenizer).__name__}; only CLIP's own BPE "
                         "tokenizer (packaged with open_clip) is supported")
    return OpenCLIPTextEncoder(cfg, model.text), CLIPTextPreprocessor(tokenizer)
