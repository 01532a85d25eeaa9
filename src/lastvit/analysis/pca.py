"""PCA of patch features to RGB (paper Fig. 7; DINOv2-style foreground PCA)."""

from __future__ import annotations

import torch

__all__ = ["pca_basis", "pca_rgb", "foreground_pca_rgb"]


def pca_basis(x: torch.Tensor, n_components: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (D,), components (n, D))`` of rows of ``x`` (M, D) by SVD in float64, each component's sign fixed so
    that its largest-magnitude loading is positive (deterministic)."""
    x = x.detach().double().reshape(-1, x.shape[-1])
    if x.shape[0] < 2:
        raise ValueError("PCA needs at least two feature vectors")
    mean = x.mean(dim=0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    comps = vh[:n_components]
    if comps.shape[0] < n_components:
        comps = torch.cat([comps, comps.new_zeros(n_components - comps.shape[0], x.shape[1])])
    sign = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    sign[sign == 0] = 1
    return mean, comps * sign


def _minmax(p: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    ref = p if valid is None else p[valid]
    if ref.numel() == 0:
        return torch.zeros_like(p)
    lo, hi = ref.amin(dim=0), ref.amax(dim=0)
    return ((p - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)


def pca_rgb(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """First three principal components of patch features (B, N, D), fitted over all images together, min-max
    scaled per component over the set: (B, h, w, 3) float32 in [0, 1]."""
    b, n, d = features.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} patches do not match grid {grid}")
    mean, comps = pca_basis(features.reshape(-1, d))
    proj = (features.detach().double().reshape(-1, d) - mean) @ comps.T
    return _minmax(proj).reshape(b, *grid, 3).float()


def foreground_pca_rgb(
    features: torch.Tensor,
    grid: tuple[int, int],
    *,
    foreground: torch.Tensor | None = None,
    threshold: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv2-style two-stage PCA: foreground = given mask (B, h, w), or first component > ``threshold`` with the
    component's sign chosen so that the foreground is the smaller side; a second PCA over foreground patches
    only colours them (background black). Returns ``(rgb (B, h, w, 3), foreground (B, h, w) bool)``."""
    b, n, d = features.shape
    flat = features.detach().double().reshape(-1, d)
    if foreground is None:
        mean, comps = pca_basis(flat, 1)
        first = (flat - mean) @ comps[0]
        fg = first > threshold
        if fg.float().mean() > 0.5:
            fg = first < -threshold if threshold != 0 else first <= 0
    else:
        fg = foreground.reshape(-1).bool()
    rgb = torch.zeros(b * n, 3, dtype=torch.float64)
    if int(fg.sum()) >= 2:
        mean2, comps2 = pca_basis(flat[fg])
        rgb[fg] = _minmax((flat[fg] - mean2) @ comps2.T)
    return rgb.reshape(b, *grid, 3).float(), fg.reshape(b, *grid)
