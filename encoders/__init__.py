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

from encoders.base import EncoderConfig, EncoderOutput, ModalityEncoder, Preprocessor
from encoders.registry import create_encoder, list_encoders, register_encoder, tiny_config

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
