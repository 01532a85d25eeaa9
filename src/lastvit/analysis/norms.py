"""Feature norms of patch tokens per layer and high-norm outliers (paper Sec. 2, Tab. 1, Fig. 6).

Norms are L2 norms of patch tokens at every block output (before the final norm) and after the final norm.
Outlier threshold: ``"robust"`` = median + k * 1.4826 * MAD over all patch norms of the layer (MAD = median absolute
deviation; 1.4826 * MAD estimates the standard deviation of normal data; k = 5 by default), or a fixed number
(e.g. 150, the cut used in the DINOv2-registers paper for ViT-L-size block outputs before the final norm).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lastvit.models.vit import as_vit

__all__ = ["token_norms", "outlier_threshold", "outlier_stats", "layer_summary"]


@torch.no_grad()
def token_norms(model: nn.Module, images: torch.Tensor) -> dict[str, Any]:
    """L2 norms of patch tokens: ``blocks`` (L, B, h, w) at each block output, ``final`` (B, h, w) after the
    final norm, ``prefix_blocks`` (L, B, P) and ``prefix_final`` (B, P) for class/register tokens.

    Block outputs come from the model's own block loop (``LastViT.forward_blocks(indices=...)``, so window
    attention is honoured); ``final`` is the final norm of the last one.
    """
    model = as_vit(model)
    tokens, grid = model.embed(images)
    last, outs = model.forward_blocks(tokens, grid, indices=range(model.depth))
    tokens = model.encoder.norm(last)
    outs = [o.detach().float().norm(dim=-1) for o in outs]
    p = model.num_prefix_tokens
    b = images.shape[0]
    stack = torch.stack(outs)  # (L, B, P+N)
    final = tokens.detach().float().norm(dim=-1)
    return {
        "blocks": stack[:, :, p:].reshape(len(outs), b, *grid).cpu(),
        "final": final[:, p:].reshape(b, *grid).cpu(),
        "prefix_blocks": stack[:, :, :p].cpu(),
        "prefix_final": final[:, :p].cpu(),
    }


def outlier_threshold(norms: torch.Tensor, method: str | float = "robust", k: float = 5.0) -> float:
    """Threshold above which a norm counts as an outlier: ``"robust"`` (median + k * 1.4826 * MAD) or a number."""
    if not isinstance(method, str):
        return float(method)
    if method != "robust":
        raise ValueError(f"outlier method must be 'robust' or a number, got {method!r}")
    v = torch.as_tensor(norms, dtype=torch.float64).flatten().cpu().numpy()
    if v.size == 0:
        raise ValueError("outlier_threshold got no norms")
    med = np.median(v)  # the midpoint of the two middle values for an even count
    mad = np.median(np.abs(v - med))
    return float(med + k * 1.4826 * mad)


def outlier_stats(
    norms: torch.Tensor,
    *,
    method: str | float = "robust",
    k: float = 5.0,
    foreground: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Outliers among (B, h, w) norms: threshold, fraction, per-image counts and, with a foreground map, where
    they sit (``background_share``: share of outliers on background patches; ``background_fraction``: share of
    background patches overall, the chance level)."""
    n = torch.as_tensor(norms).float()
    thr = outlier_threshold(n, method, k)
    out = n > thr
    res: dict[str, Any] = {
        "threshold": thr,
        "method": method if isinstance(method, str) else "fixed",
        "k": k,
        "num_outliers": int(out.sum()),
        "outlier_fraction": float(out.float().mean()),
        "images_with_outliers": int(out.flatten(1).any(dim=1).sum()) if n.ndim >= 2 else int(out.any()),
        "mean": float(n.mean()),
        "median": float(np.median(n.numpy())),
        "max": float(n.max()),
    }
    if foreground is not None:
        fg = torch.as_tensor(foreground).bool()
        if fg.shape != n.shape:
            raise ValueError(f"foreground {tuple(fg.shape)} and norms {tuple(n.shape)} differ in shape")
        res["background_share"] = float((out & ~fg).sum() / out.sum()) if out.any() else float("nan")
        res["background_fraction"] = float((~fg).float().mean())
    return res


def layer_summary(norms: dict[str, Any], layers: Sequence[int] | None = None) -> list[dict[str, float]]:
    """Mean / median / max / robust threshold of patch norms per block (rows for a CSV)."""
    blocks = norms["blocks"]
    idx = range(blocks.shape[0]) if layers is None else layers
    rows = []
    for i in idx:
        v = blocks[i]
        rows.append({"layer": int(i), "mean": float(v.mean()), "median": float(np.median(v.numpy())),
                     "max": float(v.max()), "robust_threshold": outlier_threshold(v)})
    f = norms["final"]
    rows.append({"layer": "final", "mean": float(f.mean()), "median": float(np.median(f.numpy())),
                 "max": float(f.max()), "robust_threshold": outlier_threshold(f)})
    return rows
