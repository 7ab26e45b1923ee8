"""The optimizer and its schedule: AdamW with parameter groups, linear warm-up then cosine decay.

The encoders learn at `train.encoder_lr`, everything else at `train.lr`. Weight decay applies to weight
matrices only: not to biases and norms, not to what each model exempts (`no_weight_decay()`), and the
user / item ID embeddings get their own `train.embedding_weight_decay`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from mmrec.config import TrainConfig
from mmrec.model.model import RecModel
from mmrec.model.tasks import MultiTaskLoss

_ID_EMBEDDINGS = ("user_p.", "user_b.", "item_id_q.", "item_id_b.", "user_tower.history_id.")


def no_decay_names(module: nn.Module) -> set[str]:
    """Full names of the parameters `module` and its submodules exempt from weight decay.

    Each model names its own through `no_weight_decay()` (timm's convention: names relative to the module
    that defines it; timm's ViTs list pos_embed and cls_token, the fusion its tokens and embeddings), and
    lookup tables (`nn.Embedding`: the text encoders' token and position embeddings) are exempt.
    Matching a substring such as "embed" would also exempt a ViT's patch_embed projection, a weight
    matrix like any other.
    """
    names = set()
    for prefix, m in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        own = getattr(m, "no_weight_decay", None)
        if callable(own):
            names |= {dot + n for n in own()}
        if isinstance(m, nn.Embedding):
            names.add(dot + "weight")
    return names


def param_groups(model: RecModel, tasks: MultiTaskLoss, lr: float, encoder_lr: float, weight_decay: float,
                 embedding_weight_decay: float = 0.0) -> list[dict]:
    """AdamW groups: encoders at their own rate; the user / item ID embeddings at `embedding_weight_decay`;
    no decay on biases and norms (ndim < 2) and on what the models exempt (`no_decay_names`);
    `weight_decay` on the other weight matrices."""
    groups: dict[tuple[bool, float], list] = {}
    encoder_params = {id(p) for p in model.encoders.parameters()}
    for module in (model, tasks):
        no_decay = no_decay_names(module)
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith(_ID_EMBEDDINGS):
                decay = embedding_weight_decay  # an item rated once would otherwise fit its bias to that rating
            elif p.ndim < 2 or name in no_decay:
                decay = 0.0
            else:
                decay = weight_decay
            groups.setdefault((id(p) in encoder_params, decay), []).append(p)
    return [{"params": params, "lr": encoder_lr if is_encoder else lr, "weight_decay": decay}
            for (is_encoder, decay), params in groups.items()]


def build_optimizer(model: RecModel, tasks: MultiTaskLoss, t: TrainConfig, steps_per_epoch: int):
    """(AdamW, its learning-rate schedule, the run's optimizer steps) for `t.epochs` of `steps_per_epoch`
    batches per rank: warm-up of `t.warmup_epochs` (or `t.warmup_steps`), at most half the run."""
    total_steps = max(1, t.epochs * steps_per_epoch // t.grad_accum)
    optimizer = torch.optim.AdamW(param_groups(model, tasks, t.lr, t.encoder_lr, t.weight_decay,
                                               t.embedding_weight_decay))
    warmup = t.warmup_steps if t.warmup_epochs is None else round(t.warmup_epochs * steps_per_epoch / t.grad_accum)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(warmup, total_steps // 2), total_steps)
    return optimizer, scheduler, total_steps
