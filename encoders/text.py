"""`hf-text`: a BERT-family Hugging Face encoder, pooled by the masked mean of its tokens.

Masked-mean pooling is what sentence-transformers uses for all-MiniLM-L6-v2 (Reimers & Gurevych,
"Sentence-BERT", https://arxiv.org/abs/1908.10084), so a sentence-transformers folder gives its
sentence embedding here before its final L2 normalisation.

Weights: `pretrained` = a local folder (`AutoModel` + `AutoTokenizer`). Random init: `arch` holds
config kwargs (`model_type`, default "bert", picks the config class); the tokenizer is then a
built-in character-level WordPiece vocabulary, or `arch["tokenizer"]` = a local tokenizer folder.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerBase

from encoders import _hf
from encoders.base import EncoderConfig, EncoderOutput, Preprocessor, cap_text
from encoders.registry import register_encoder

FAMILY = "hf-text"
TINY_ARCH = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
DEFAULT_MAX_TOKENS = {True: 128, False: 64}  # pretrained?, random init
# Where the transformer blocks / the modules above them live, across the BERT family (BERT, RoBERTa,
# MiniLM, ELECTRA: encoder.layer; DistilBERT: transformer.layer; ModernBERT: layers + final_norm).
_BLOCK_PATHS = ("encoder.layer", "transformer.layer", "layers")
_HEAD_PATHS = ("final_norm",)
_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def char_tokenizer() -> PreTrainedTokenizerBase:
    """A lower-casing WordPiece tokenizer whose vocabulary is single ASCII characters.

    Random-init models have no tokenizer of their own, and tests must not download one. Every
    printable ASCII word splits into characters ("cat" -> c ##a ##t); a word with other characters
    becomes [UNK] (after accent stripping, so "café" still works).
    """
    chars = sorted(set(string.printable.lower()) - set(string.whitespace))
    vocab = _SPECIAL_TOKENS + chars + ["##" + c for c in chars]
    # Loaded from a folder because that is the one way that works across transformers versions
    # (5.x ignores a `vocab_file=` kwarg, 4.x has no `vocab=` dict kwarg).
    with tempfile.TemporaryDirectory(prefix="mmrec-char-vocab-") as folder:
        (Path(folder) / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        return BertTokenizerFast.from_pretrained(folder, do_lower_case=True, local_files_only=True)


class TextPreprocessor(Preprocessor):
    """str -> token ids (truncated to `max_tokens`); collate pads to the longest in the batch."""

    modality = "text"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_tokens: int):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def __call__(self, raw: str) -> dict[str, torch.Tensor]:
        if not isinstance(raw, str):
            raise TypeError(f"{FAMILY} preprocessing takes a str, got {type(raw).__name__}")
        ids = self.tokenizer(cap_text(raw, self.max_tokens), truncation=True, max_length=self.max_tokens)["input_ids"]
        return {"input_ids": torch.tensor(ids, dtype=torch.long)}  # (T,)

    def collate(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        ids = [e["input_ids"] for e in examples]
        input_ids = nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        lengths = torch.tensor([len(x) for x in ids])
        attention_mask = torch.arange(input_ids.shape[1]) < lengths[:, None]  # (B, T)
        return {"input_ids": input_ids, "attention_mask": attention_mask.long()}


class HFTextEncoder(_hf.HFEncoder):
    """Tokens = last hidden states, pooled = their masked mean."""

    modality = "text"
    family = FAMILY
    block_paths = _BLOCK_PATHS
    head_paths = _HEAD_PATHS

    def __init__(self, config: EncoderConfig, model: nn.Module):
        # The pooler (tanh over [CLS]) is unused: dropping it keeps DDP from finding parameters
        # that never receive a gradient.
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        super().__init__(config, model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderOutput:
        tokens = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        mask = attention_mask.bool()  # (B, T)
        weights = mask.unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (B, D), as sentence-transformers
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)


@register_encoder(FAMILY, tiny_arch=TINY_ARCH)
def create_hf_text(cfg: EncoderConfig) -> tuple[HFTextEncoder, TextPreprocessor]:
    """Build from a local folder (`pretrained`) or randomly from `arch` (BERT config kwargs)."""
    if cfg.pretrained is not None:
        model, folder = _hf.from_folder(cfg, FAMILY, AutoModel)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    else:
        arch: dict[str, Any] = dict(cfg.arch)
        tokenizer_folder = arch.pop("tokenizer", None)
        model_type = arch.pop("model_type", "bert")
        if tokenizer_folder is not None:
            tokenizer = AutoTokenizer.from_pretrained(_hf.local_folder(tokenizer_folder, FAMILY), local_files_only=True)
        else:
            tokenizer = char_tokenizer()
        arch.setdefault("vocab_size", len(tokenizer))
        if arch["vocab_size"] < len(tokenizer):
            raise ValueError(f"{FAMILY}: arch vocab_size={arch['vocab_size']} is smaller than the tokenizer's "
                             f"{len(tokenizer)} tokens; drop vocab_size to size it from the tokenizer")
        config = _hf.checked_config(type(AutoConfig.for_model(model_type)), arch, FAMILY)
        model = AutoModel.from_config(config)
    max_tokens = cfg.max_tokens or DEFAULT_MAX_TOKENS[cfg.pretrained is not None]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_tokens > limit:
        raise ValueError(f"{FAMILY}: max_tokens={max_tokens} exceeds the model's {limit} positions")
    return HFTextEncoder(cfg, model), TextPreprocessor(tokenizer, max_tokens)
