"""Patch scores (paper Eq. 3): cosine similarity of every final-normed patch token with the global representation.

The global representation is the class-token output under a ``cls`` readout and the readout's pooled token under
LazyStrike / mean / max / attention pooling (``source="auto"``). For CLIP image towers (``head == "proj"``) both the
pooled token and the patch tokens are projected through the head and the cosine is taken in the embedding space.
"""

from __future__ import annotations

import torch
from torch import nn

from lastvit.models.vit import LastViT, TokenRecord

__all__ = ["patch_scores", "scores_from_record", "global_representation", "convnet_patch_scores", "readout_name",
           "resolve_source"]


def _cosine(patches: torch.Tensor, g: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """cos(patches[b, n], g[b]) as (B, N): one matrix-vector product per image and a norm (no broadcast copy)."""
    gn = g / g.norm(dim=-1, keepdim=True).clamp_min(eps)
    dots = torch.bmm(patches, gn[:, :, None])[..., 0]
    return dots / patches.norm(dim=-1).clamp_min(eps)


def readout_name(model: LastViT) -> str:
    """Canonical readout name of a model (``lazystrike``, ``cls``, ``mean``, ``max``, ``attn``)."""
    return str(getattr(model, "aggregator_name", "")).lower().replace("-", "").replace("_", "")


def resolve_source(model: LastViT, source: str) -> str:
    """The token ``source`` names for this model: ``"cls"`` or ``"pooled"`` (``"auto"``: the class token for a
    ``cls`` readout, the pooled token otherwise)."""
    if source not in ("auto", "cls", "pooled"):
        raise ValueError(f"source must be 'auto', 'cls' or 'pooled', got {source!r}")
    if source == "auto":
        return "cls" if readout_name(model) == "cls" else "pooled"
    return source


def global_representation(model: LastViT, rec: TokenRecord, source: str = "auto") -> torch.Tensor:
    """The (B, D) token the patch scores are measured against (before any projection)."""
    src = resolve_source(model, source)
    if src == "cls":
        cls = model.cls_output(rec)
        if cls is None:
            raise ValueError("source='cls' needs a class token, but this model has none (class_token=False)")
        return cls
    return rec.pooled


def scores_from_record(
    model: LastViT, rec: TokenRecord, *, source: str = "auto", projected: bool | None = None
) -> torch.Tensor:
    """Eq. 3 on an existing :class:`TokenRecord`: (B, h, w) float32 cosine scores."""
    g = global_representation(model, rec, source)
    patches = rec.patches
    if projected is None:
        projected = getattr(model, "head_type", "linear") == "proj"
    if projected:
        if not isinstance(model.head, nn.Linear):
            raise ValueError("projected=True needs a linear projection head (head='proj')")
        patches, g = model.head(patches), model.head(g)
    s = _cosine(patches.float(), g.float())
    h, w = rec.grid
    return s.reshape(s.shape[0], h, w)


@torch.no_grad()
def patch_scores(
    model: LastViT, images: torch.Tensor, *, source: str = "auto", projected: bool | None = None
) -> tuple[torch.Tensor, TokenRecord]:
    """Patch scores of a batch: ``(scores (B, h, w), record)`` from one forward pass.

    Args:
        model: a :class:`~lastvit.models.vit.LastViT` (put it in eval mode yourself).
        images: normalised images (B, 3, H, W), H and W divisible by the patch size.
        source: ``"auto"`` (class token for a ``cls`` readout, pooled token otherwise), ``"cls"`` or ``"pooled"``.
        projected: cosine in the head's embedding space; ``None`` means "when the head is a CLIP projection".
    """
    rec = model.forward_tokens(images)
    return scores_from_record(model, rec, source=source, projected=projected), rec


@torch.no_grad()
def convnet_patch_scores(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """ConvNet reference (paper Table 1): cosine of every spatial feature with the GAP feature, (B, h, w).

    ``net`` is any module with ``forward_features(images) -> (B, C, h, w)`` (timm ResNets and friends).
    """
    feats = net.forward_features(images)
    if feats.ndim != 4:
        raise ValueError(f"forward_features must return (B, C, h, w), got shape {tuple(feats.shape)}")
    feats = feats.float()
    b, c, h, w = feats.shape
    gap = feats.mean(dim=(2, 3))
    return _cosine(feats.flatten(2).transpose(1, 2), gap).reshape(b, h, w)
