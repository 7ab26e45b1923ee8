"""Kaldi-compatible log-mel filterbanks for a whole batch at once, on whatever device the batch is on.

`torchaudio.compliance.kaldi.fbank` takes one clip at a time and runs in DataLoader workers, where a
10 s clip costs about 10 ms of a CPU core: an AST on a fast GPU would need a dozen cores just for its
features. `KaldiFbank` computes the same features for a padded batch in a few batched tensor ops, so
it can run on the GPU inside the encoder. It reproduces `kaldi.fbank` with the settings the AST
feature extractor uses (25 ms Hanning frames every 10 ms, snip_edges, DC offset removed,
pre-emphasis 0.97, power spectrum on the next power of two, mel banks from 20 Hz to Nyquist, log
with float epsilon, no dither, no energy); the tests hold it to `kaldi.fbank` within 1e-3 (float32).

Frames past an item's own length are zero, as the CPU path pads its fbank with zeros.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


class KaldiFbank(nn.Module):
    """(B, S) padded waveforms + (B,) lengths in samples -> (B, max_length, num_mel_bins) log-mel fbank."""

    def __init__(self, num_mel_bins: int, max_length: int, sample_rate: int = 16000, frame_ms: float = 25.0,
                 shift_ms: float = 10.0, preemphasis: float = 0.97):
        super().__init__()
        self.max_length = max_length
        self.window_size = int(sample_rate * frame_ms / 1000)
        self.shift = int(sample_rate * shift_ms / 1000)
        self.padded_size = 1 << (self.window_size - 1).bit_length()  # Kaldi's round_to_power_of_two
        self.preemphasis = preemphasis
        mel, _ = torchaudio.compliance.kaldi.get_mel_banks(num_mel_bins, self.padded_size, float(sample_rate),
                                                           20.0, 0.0, 100.0, -500.0, 1.0)  # (mel, padded / 2)
        mel = nn.functional.pad(mel, (0, 1))  # (mel, padded / 2 + 1): Kaldi's zero Nyquist column
        self.register_buffer("mel_banks", mel.T.contiguous(), persistent=False)  # (padded / 2 + 1, mel)
        self.register_buffer("window", torch.hann_window(self.window_size, periodic=False), persistent=False)

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames Kaldi keeps for clips of these lengths (snip_edges: whole frames only)."""
        return torch.where(lengths >= self.window_size, 1 + (lengths - self.window_size) // self.shift, 0)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        B = waves.shape[0]
        needed = self.window_size + (self.max_length - 1) * self.shift
        waves = nn.functional.pad(waves.float(), (0, max(0, needed - waves.shape[1])))[:, :needed]  # (B, needed)
        frames = waves.unfold(1, self.window_size, self.shift)  # (B, max_length, W)
        frames = frames - frames.mean(-1, keepdim=True)  # remove the DC offset of each frame
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # x[j - 1], x[-1] = x[0]
        frames = (frames - self.preemphasis * previous) * self.window  # (B, max_length, W)
        spectrum = torch.fft.rfft(frames, n=self.padded_size).abs().pow(2.0)  # (B, max_length, padded / 2 + 1)
        eps = torch.finfo(spectrum.dtype).eps
        fbank = torch.clamp_min(spectrum @ self.mel_banks, eps).log()  # (B, max_length, mel)
        valid = torch.arange(self.max_length, device=waves.device)[None, :] < self.num_frames(lengths.to(waves.device))[:, None]
        return torch.where(valid[..., None], fbank, 0.0).reshape(B, self.max_length, -1)
