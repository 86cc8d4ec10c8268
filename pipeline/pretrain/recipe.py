"""The recipe's maths (paper Table 3 / Appendix B.1): weight decay on kernels only, linear warmup
then linear (or cosine) decay of the learning rate, sigmoid cross-entropy on multi-hot targets (sum
over classes, mean over the batch) and multi-label precision@1. Shared by pretraining and
fine-tuning (``pipeline.transfer.finetune``)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on kernels (matrices and conv filters) only, as the authors' code does; not
    on biases, norms, the class token or the position embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_kernel = p.ndim >= 2 and not name.endswith(("pos_embed", "cls_token"))
        (decay if is_kernel else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, total: int, decay: str = "linear") -> float:
    """Multiplier of the base LR after ``step`` optimizer steps: linear warmup from 0, then
    linear (or cosine) decay to 0 at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def sigmoid_xent(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy, summed over classes, averaged over the batch."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").sum(-1).mean()


def precision_at_1(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Hits of the top-scoring class among the true labels (multi-label precision@1), summed."""
    top = logits.argmax(-1)
    return targets.gather(1, top[:, None]).squeeze(1).gt(0).sum()

