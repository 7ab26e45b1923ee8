"""The one decision "bf16 or not", for training, validation, embedding, caching and evaluation.

bf16 where the device computes it natively (a CUDA GPU that supports it), full precision
elsewhere: the CPU gains nothing from bf16 autocast and loses accuracy. A trained model's encoders
therefore see the same precision in training and in every later pass on the same kind of device.
Training's own validation follows the run's resolved `train.mixed_precision` (a run told "no" on
such a GPU validates in full precision too).
"""

from __future__ import annotations

import torch


def bf16_autocast(device: torch.device | str) -> bool:
    """Whether passes on `device` run under bf16 autocast."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_mixed_precision(setting: str) -> str:
    """`train.mixed_precision` as Accelerate takes it: "auto" -> "bf16" on such a GPU, else "no"."""
    if setting != "auto":
        return setting
    return "bf16" if bf16_autocast("cuda") else "no"
