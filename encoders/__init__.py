"""Modality encoders behind one interface: text, image and audio in, token sequences out.

`create_encoder(cfg)` returns `(encoder, preprocessor)`: the preprocessor turns one raw item into
tensors in DataLoader workers and collates a batch, the encoder maps the batch to `EncoderOutput`
(tokens `(B, T, D)`, mask `(B, T)`, pooled `(B, D)`). Families wrap their libraries:

- `hf-text`: a Hugging Face `AutoModel` (BERT family), masked-mean pooled (sentence-transformers);
- `timm-vit`, `timm-cnn`: a timm ViT or CNN (`timm.create_model(..., num_classes=0)`);
- `open-clip-vision`, `open-clip-text`: one tower of an open_clip CLIP model;
- `hf-ast`: the Audio Spectrogram Transformer (`ASTModel`) on torchaudio Kaldi fbank features.

This package never imports `mmrec`, and never downloads weights.
"""

import importlib

from encoders.config import EncoderConfig

# Everything else is imported on first use (PEP 562), so that reading a config needs no torch.
_LAZY = {
    "EncoderOutput": "encoders.base",
    "ModalityEncoder": "encoders.base",
    "Preprocessor": "encoders.base",
    "create_encoder": "encoders.registry",
    "list_encoders": "encoders.registry",
    "register_encoder": "encoders.registry",
    "tiny_config": "encoders.registry",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'encoders' has no attribute {name!r}")


__all__ = [
    "EncoderConfig",
    "EncoderOutput",
    "ModalityEncoder",
    "Preprocessor",
    "create_encoder",
    "list_encoders",
    "register_encoder",
    "tiny_config",
]
