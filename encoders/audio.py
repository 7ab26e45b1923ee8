"""`hf-ast`: the Audio Spectrogram Transformer (Gong et al., "AST", https://arxiv.org/abs/2104.01778)
as `transformers.ASTModel`, fed Kaldi-compatible log-mel filterbanks computed with torchaudio.

Weights: `pretrained` = a local folder (`ASTModel.from_pretrained`; its preprocessor_config.json,
if present, sets the feature settings). Random init: `arch` = `ASTConfig` kwargs.

Preprocessing runs in DataLoader workers and reproduces `transformers.ASTFeatureExtractor` (the test
suite checks it): mono -> resample to 16 kHz -> `torchaudio.compliance.kaldi.fbank` with a Hanning
window and the extractor's mel bins (all else Kaldi defaults: 25 ms frames, 10 ms shift, no dither,
no energy; the waveform stays in [-1, 1], as the extractor leaves it) -> zero-pad/trim to the
model's `max_length` frames -> `(fbank - mean) / (2 * std)` with AudioSet statistics.
With `features_on_device: true` the workers only resample and trim, and the encoder computes the same
fbank for the whole batch on its own device (`encoders.fbank.KaldiFbank`): the CPU-side fbank is the
first bottleneck of an AST on a fast GPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio
from torch import nn
from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

from encoders import _hf
from encoders.base import EncoderConfig, EncoderOutput, Preprocessor
from encoders.fbank import KaldiFbank
from encoders.registry import register_encoder

FAMILY = "hf-ast"
# patch 4 / stride 4 on 16 mel bins x 24 frames: 4 x 6 = 24 patches (+ CLS and distillation tokens)
TINY_ARCH = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "num_mel_bins": 16, "max_length": 24, "patch_size": 4, "frequency_stride": 4, "time_stride": 4}
# transformers 5.x keeps the blocks in `layers`, 4.x in `encoder.layer`
_BLOCK_PATHS = ("layers", "encoder.layer")
_HEAD_PATHS = ("layernorm",)
FRAME_MS, SHIFT_MS = 25.0, 10.0  # Kaldi fbank defaults, which ASTFeatureExtractor keeps


class AudioPreprocessor(Preprocessor):
    """(waveform (channels, frames), sample rate) -> normalised fbank (max_length, num_mel_bins)."""

    modality = "audio"

    def __init__(self, feature_extractor: ASTFeatureExtractor, on_device: bool = False):
        self.fe = feature_extractor
        self.on_device = on_device  # hand the resampled waveform to the encoder, which computes the fbank

    def __call__(self, raw: tuple[torch.Tensor | np.ndarray, int]) -> dict[str, torch.Tensor]:
        try:
            waveform, rate = raw
        except (TypeError, ValueError) as e:
            raise TypeError(f"{FAMILY} preprocessing takes (waveform, sample_rate), got {type(raw).__name__}") from e
        wave = torch.as_tensor(waveform, dtype=torch.float32)
        if wave.dim() == 2:
            wave = wave.mean(0)  # (frames,) mono, as the extractor expects
        elif wave.dim() != 1:
            raise ValueError(f"{FAMILY}: waveform must be (channels, frames) or (frames,), got {tuple(wave.shape)}")
        sr = self.fe.sampling_rate
        window, shift = int(sr * FRAME_MS / 1000), int(sr * SHIFT_MS / 1000)
        # Frames are computed independently, so audio past the last kept frame cannot change the output:
        # cut it before the expensive steps (keeping 0.1 s of context for the resampling filter).
        needed = window + (self.fe.max_length - 1) * shift  # samples at `sr`
        if rate != sr:
            wave = wave[: math.ceil(needed * rate / sr) + rate // 10]
            wave = torchaudio.functional.resample(wave, orig_freq=rate, new_freq=sr)
        wave = wave[:needed]
        if len(wave) < window:
            # Kaldi (and so the extractor) rejects clips shorter than one 25 ms frame; pad with silence.
            wave = nn.functional.pad(wave, (0, window - len(wave)))
        if self.on_device:
            return {"waveform": wave, "num_samples": torch.tensor(len(wave))}
        fbank = torchaudio.compliance.kaldi.fbank(
            wave.unsqueeze(0),  # (1, samples)
            sample_frequency=sr,
            window_type="hanning",
            num_mel_bins=self.fe.num_mel_bins,
            frame_length=FRAME_MS,
            frame_shift=SHIFT_MS,
            dither=0.0,
            use_energy=False,
        )  # (frames, mel)
        fbank = nn.functional.pad(fbank, (0, 0, 0, max(0, self.fe.max_length - len(fbank))))  # (max_length, mel)
        if self.fe.do_normalize:
            fbank = (fbank - self.fe.mean) / (2 * self.fe.std)
        return {"input_values": fbank}

    def collate(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not self.on_device:
            return super().collate(examples)
        waves = nn.utils.rnn.pad_sequence([e["waveform"] for e in examples], batch_first=True)  # (B, S) zero-padded
        return {"waveform": waves, "num_samples": torch.stack([e["num_samples"] for e in examples])}


class ASTEncoder(_hf.HFEncoder):
    """Tokens = last hidden states ([CLS], [DIST], patches), pooled = mean of [CLS] and [DIST]."""

    modality = "audio"
    family = FAMILY
    block_paths = _BLOCK_PATHS
    head_paths = _HEAD_PATHS

    def __init__(self, config: EncoderConfig, model: ASTModel, feature_extractor: ASTFeatureExtractor | None = None):
        super().__init__(config, model)
        self.fbank = None
        if config.features_on_device:
            fe = feature_extractor
            self.fbank = KaldiFbank(fe.num_mel_bins, fe.max_length, fe.sampling_rate)
            self.normalize = (fe.mean, 2 * fe.std) if fe.do_normalize else None

    def no_weight_decay(self) -> set[str]:
        """The learned tokens and position embeddings (timm's convention, as timm's ViT names its own)."""
        return {f"model.embeddings.{n}" for n in ("cls_token", "distillation_token", "position_embeddings")}

    def forward(self, input_values: torch.Tensor | None = None, waveform: torch.Tensor | None = None,
                num_samples: torch.Tensor | None = None) -> EncoderOutput:
        if waveform is not None:  # features_on_device: (B, S) 16 kHz waveforms, (B,) lengths
            if self.fbank is None:
                raise ValueError(f"{FAMILY}: got waveforms, but features_on_device is off")
            with torch.autocast(waveform.device.type, enabled=False):  # the fbank in float32, as on the CPU
                input_values = self.fbank(waveform, num_samples)  # (B, max_length, mel)
                if self.normalize is not None:
                    input_values = (input_values - self.normalize[0]) / self.normalize[1]
        out = self.model(input_values=input_values)  # input_values: (B, max_length, mel)
        tokens = out.last_hidden_state  # (B, T, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # (B, T) fixed-size input
        return EncoderOutput(tokens=tokens, mask=mask, pooled=out.pooler_output)  # pooled: (B, D)


@register_encoder(FAMILY, tiny_arch=TINY_ARCH)
def create_hf_ast(cfg: EncoderConfig) -> tuple[ASTEncoder, AudioPreprocessor]:
    """Build from a local folder (`pretrained`) or randomly from `arch` (`ASTConfig` kwargs)."""
    if cfg.pretrained is not None:
        model, folder = _hf.from_folder(cfg, FAMILY, ASTModel)
        has_fe = (folder / "preprocessor_config.json").is_file()
    else:
        model = ASTModel(_hf.checked_config(ASTConfig, dict(cfg.arch), FAMILY))
        has_fe = False
    config = model.config
    if has_fe:
        fe = ASTFeatureExtractor.from_pretrained(folder, local_files_only=True)
    else:
        fe = ASTFeatureExtractor(num_mel_bins=config.num_mel_bins, max_length=config.max_length)
    # The patch grid and position embeddings are sized for exactly this spectrogram.
    if (fe.num_mel_bins, fe.max_length) != (config.num_mel_bins, config.max_length):
        raise ValueError(f"{FAMILY}: feature extractor gives {fe.max_length} x {fe.num_mel_bins} fbanks but the "
                         f"model takes {config.max_length} frames x {config.num_mel_bins} mel bins")
    if cfg.max_tokens is not None and cfg.max_tokens != config.max_length:
        raise ValueError(f"{FAMILY}: the model's position embeddings fix the input at {config.max_length} fbank "
                         f"frames; leave max_tokens unset (got {cfg.max_tokens})")
    return ASTEncoder(cfg, model, fe), AudioPreprocessor(fe, on_device=cfg.features_on_device)
