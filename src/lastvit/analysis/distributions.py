"""Patch-score distributions, foreground vs background (paper Fig. 2a), and AUROC by rank statistic."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["auroc", "score_distributions", "normalise_scores", "per_image_scores"]


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie), the Mann-Whitney U statistic over all pairs (NaN if a side is empty).

    Computed with mid-ranks (ties share the average rank), O((P + N) log(P + N)).
    """
    pos = torch.as_tensor(pos, dtype=torch.float64).flatten()
    neg = torch.as_tensor(neg, dtype=torch.float64).flatten()
    n_p, n_n = pos.numel(), neg.numel()
    if n_p == 0 or n_n == 0:
        return float("nan")
    allv = torch.cat([pos, neg])
    sorted_v, order = torch.sort(allv, stable=True)
    # mid-ranks: for each run of equal values, rank = mean of positions (1-based)
    uniq, inverse, counts = torch.unique_consecutive(sorted_v, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    starts = ends - counts.double() + 1
    mid = (starts + ends) / 2
    ranks = torch.empty_like(allv)
    ranks[order] = mid[inverse]
    r_pos = ranks[:n_p].sum()
    u = r_pos - n_p * (n_p + 1) / 2
    return float(u / (n_p * n_n))


def normalise_scores(scores: torch.Tensor, mode: str = "minmax") -> torch.Tensor:
    """Per-image normalisation of (B, h, w) scores: ``"minmax"`` to [0, 1] (the paper's Fig. 2a) or ``"none"``."""
    if mode == "none":
        return scores.float()
    if mode != "minmax":
        raise ValueError(f"mode must be 'minmax' or 'none', got {mode!r}")
    s = scores.float().flatten(1)
    lo, hi = s.min(dim=1, keepdim=True).values, s.max(dim=1, keepdim=True).values
    return ((s - lo) / (hi - lo).clamp_min(1e-12)).reshape(scores.shape)


def score_distributions(
    scores: torch.Tensor,
    foreground: torch.Tensor,
    *,
    bins: int = 50,
    normalise: str = "minmax",
    value_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Foreground vs background statistics of patch scores.

    Args:
        scores: (B, h, w) patch scores; foreground: (B, h, w) bool (see ``foreground_patches``).
        bins / value_range: histogram bins; default range [0, 1] after min-max, else the data range.
        normalise: ``"minmax"`` per image (default) or ``"none"``.

    Returns:
        dict with ``edges`` (bins+1), ``hist_fg`` / ``hist_bg`` (densities integrating to 1), ``mean_fg``,
        ``mean_bg``, ``median_fg``, ``median_bg``, ``num_fg``, ``num_bg`` and ``auroc`` (fg scored above bg).
    """
    if scores.shape != foreground.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and foreground {tuple(foreground.shape)} differ in shape")
    s = normalise_scores(scores.detach().cpu(), normalise)
    fg = foreground.bool().cpu()
    pos, neg = s[fg], s[~fg]
    if value_range is None:
        value_range = (0.0, 1.0) if normalise == "minmax" else (float(s.min()), float(s.max()) + 1e-12)
    edges = torch.linspace(value_range[0], value_range[1], bins + 1)

    def dens(v: torch.Tensor) -> torch.Tensor:
        if v.numel() == 0:
            return torch.zeros(bins)
        hist = torch.histc(v, bins=bins, min=value_range[0], max=value_range[1])
        return hist / (hist.sum() * (edges[1] - edges[0]))

    def stat(v: torch.Tensor, fn) -> float:
        return float(fn(v)) if v.numel() else float("nan")

    return {
        "edges": edges,
        "hist_fg": dens(pos),
        "hist_bg": dens(neg),
        "mean_fg": stat(pos, torch.mean),
        "mean_bg": stat(neg, torch.mean),
        "median_fg": stat(pos, torch.median),
        "median_bg": stat(neg, torch.median),
        "num_fg": int(pos.numel()),
        "num_bg": int(neg.numel()),
        "auroc": auroc(pos, neg),
    }


def per_image_scores(scores: torch.Tensor, foreground: torch.Tensor) -> list[dict[str, float | None]]:
    """Per image of (B, h, w) scores and foreground: ``mean_fg`` / ``mean_bg`` of the min-max normalised scores and
    the image's own ``auroc`` (fg scored above bg); ``None`` where a side is empty."""
    s, fg = scores.detach().float().cpu(), foreground.bool().cpu()
    sn = normalise_scores(s)
    out = []
    for i in range(s.shape[0]):
        f, has_fg, has_bg = fg[i], bool(fg[i].any()), bool((~fg[i]).any())
        out.append({"mean_fg": float(sn[i][f].mean()) if has_fg else None,
                    "mean_bg": float(sn[i][~f].mean()) if has_bg else None,
                    "auroc": auroc(s[i][f], s[i][~f]) if has_fg and has_bg else None})
    return out
