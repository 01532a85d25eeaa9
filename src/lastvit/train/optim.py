"""The release's optimiser and schedule: AdamW with decoupled weight decay on matrices only, and a cosine
schedule (to ``min_factor`` x) with a linear warm-up from ``warmup_factor`` x over the first ``warmup_frac`` of
training, as detectron2's ``WarmupParamScheduler(CosineParamScheduler(1, min_factor), warmup_factor,
warmup_frac)`` evaluates it (the LAST-ViT ``cls_pretrain/conf.py`` recipe)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["lr_factor", "param_groups", "build_optimizer", "build_scheduler", "NO_DECAY_NAMES", "cosine_schedule",
           "clip_gradients"]

# Parameters never decayed besides every 1-D tensor (norm weights/biases, linear biases, LayerScale gammas).
NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "mask_token")


def lr_factor(step: int, total: int, warmup_frac: float = 0.01, warmup_factor: float = 0.1,
              min_factor: float = 0.001) -> float:
    """Multiplier of the base lr at optimiser step ``step`` of ``total``.

    Cosine ``c(w) = min + (1 - min) * (1 + cos(pi w)) / 2`` at ``w = step / total``; during the warm-up
    (``w < warmup_frac``) a straight line from ``warmup_factor * c(0)`` to ``c(warmup_frac)``.
    """
    if total <= 0:
        raise ValueError(f"total steps must be positive, got {total}")
    w = min(max(step / total, 0.0), 1.0)

    def cos(x: float) -> float:
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * x))

    if warmup_frac > 0 and w < warmup_frac:
        a = w / warmup_frac
        return warmup_factor * cos(0.0) * (1 - a) + cos(warmup_frac) * a
    return cos(w)


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or any(n in name.split(".")[-1] for n in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: matrices/conv kernels with ``weight_decay``; norms, biases, LayerScale gammas,
    position embeddings and class/register/mask tokens without."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if _no_decay(name, p) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def no_decay_names(model: nn.Module) -> list[str]:
    """Names of the parameters that get no weight decay (for reports and tests)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and _no_decay(n, p)]


def build_optimizer(params: Iterable[dict[str, Any]] | nn.Module, optim_cfg: dict[str, Any]) -> torch.optim.AdamW:
    """AdamW from an ``optim`` config section."""
    if isinstance(params, nn.Module):
        params = param_groups(params, float(optim_cfg["weight_decay"]))
    b1, b2 = (float(b) for b in optim_cfg["betas"])
    return torch.optim.AdamW(params, lr=float(optim_cfg["lr"]), betas=(b1, b2), eps=float(optim_cfg.get("eps", 1e-8)))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                    optim_cfg: dict[str, Any]) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` evaluating :func:`lr_factor`."""
    wf, wfac, mf = float(optim_cfg["warmup_frac"]), float(optim_cfg["warmup_factor"]), float(optim_cfg["min_lr_factor"])
    total = max(int(total_steps), 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, wf, wfac, mf))


# DINO's own schedule and clipping (facebookresearch/dino utils.cosine_scheduler, utils.clip_gradients): DINO keeps
# them rather than the release's lr_factor, on purpose (per-iteration cosine with an epoch warm-up; per-parameter
# clipping). The teacher temperature schedule stays beside DINOLoss (lastvit.models.dino), which evaluates it.
def cosine_schedule(
    base: float,
    final: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: float = 0,
    start_warmup: float = 0.0,
) -> np.ndarray:
    """DINO's per-iteration schedule: linear ``start_warmup -> base`` over the warm-up iterations, then a
    half-cosine ``base -> final`` over the rest; length ``epochs * iters_per_epoch``."""
    total = int(epochs * iters_per_epoch)
    nwarm = min(int(round(warmup_epochs * iters_per_epoch)), total)
    warm = np.linspace(start_warmup, base, nwarm) if nwarm > 0 else np.zeros(0)
    it = np.arange(total - nwarm)
    n = max(len(it), 1)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * it / n))
    return np.concatenate([warm, cos])


def clip_gradients(model: nn.Module, clip: float) -> list[float]:
    """DINO's per-parameter clipping: each gradient with norm above ``clip`` is rescaled to ``clip``."""
    norms = []
    for p in model.parameters():
        if p.grad is None:
            continue
        n = p.grad.detach().norm(2)
        norms.append(float(n))
        coef = clip / (n + 1e-6)
        if coef < 1:
            p.grad.mul_(coef)
    return norms
