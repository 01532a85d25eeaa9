"""CLIP's symmetric contrastive (InfoNCE) loss with an all-gather across DDP ranks (gradient to the local shard)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["clip_loss", "gather_features", "sum_sizes_before"]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 (shards may differ in size); backward sums the gradient over ranks and returns
    this rank's slice, i.e. the gradient of the sum of every rank's loss w.r.t. the local shard."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
        sizes = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(sizes, n)
        sizes_i = [int(s.item()) for s in sizes]
        m = max(sizes_i)
        xp = x.contiguous()
        if x.shape[0] < m:
            xp = torch.cat([xp, xp.new_zeros((m - x.shape[0], *x.shape[1:]))])
        bufs = [torch.empty_like(xp) for _ in range(world)]
        dist.all_gather(bufs, xp)
        ctx.sizes, ctx.rank = sizes_i, rank
        return torch.cat([b[:s] for b, s in zip(bufs, sizes_i)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return g[start : start + ctx.sizes[ctx.rank]]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """Features of every rank concatenated in rank order, with gradient flowing back to the local shard."""
    return _GatherWithGrad.apply(x) if _distributed() else x


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    gather: bool = True,
    local_loss: bool = False,
) -> torch.Tensor:
    """Symmetric InfoNCE: ``(CE(s * I T^T, diag) + CE(s * T I^T, diag)) / 2`` over L2-normalised features.

    With ``gather`` under an initialised process group the features of every rank are gathered (gradient to the
    local shard) so every rank computes the full-batch loss: with DDP's gradient averaging the update equals the
    single-process full-batch update. ``local_loss=True`` only builds this rank's rows of the logits (memory
    ``B x W*B`` instead of ``W*B x W*B``); its mean over ranks is the full-batch loss and the DDP-averaged
    gradients are the same.
    """
    img, txt = image_features, text_features
    if gather and _distributed():
        all_img, all_txt = gather_features(img), gather_features(txt)
    else:
        all_img, all_txt = img, txt
    if local_loss and all_img is not img:
        offset = sum_sizes_before(img.shape[0])
        labels = torch.arange(img.shape[0], device=img.device) + offset
        li = logit_scale * img @ all_txt.t()
        lt = logit_scale * txt @ all_img.t()
        return 0.5 * (F.cross_entropy(li, labels) + F.cross_entropy(lt, labels))
    logits = logit_scale * all_img @ all_txt.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def sum_sizes_before(n: int) -> int:
    """Number of samples on ranks before this one (local batch sizes may differ)."""
    if not _distributed():
        return 0
    t = torch.tensor([n], dtype=torch.long)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    sizes = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, t)
    return int(sum(int(s.item()) for s in sizes[: dist.get_rank()]))
