"""Figures of the lazy-aggregation diagnostics (matplotlib, Agg, no global pyplot state).

Every function takes arrays/tensors and a path, writes a PNG atomically (temporary name, then ``os.replace``) and
returns the path.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lastvit.io import atomic_save

__all__ = [
    "save_figure",
    "to_display",
    "plot_score_overlays",
    "plot_fg_bg_hist",
    "plot_masking_curves",
    "plot_norm_hist",
    "plot_vote_maps",
    "plot_pca",
    "pca_figure",
    "plot_attention",
    "plot_dynamics",
]

from lastvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402  (one definition)

ORDER_STYLE = {"high": ("tab:red", "high score first"), "low": ("tab:blue", "low score first"),
               "random": ("tab:gray", "random")}


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically and return the path (``tight``: crop to the drawn area, which
    costs a second draw; grid figures lay themselves out and skip it)."""
    FigureCanvasAgg(fig)
    return atomic_save(fig, path, lambda f_, out: f_.savefig(out, format="png", dpi=dpi,
                                                             bbox_inches="tight" if tight else None))


def to_display(image: Any, mean: Sequence[float] | None = IMAGENET_MEAN,
               std: Sequence[float] | None = IMAGENET_STD) -> np.ndarray:
    """(3, H, W) normalised image -> (H, W, 3) in [0, 1] (un-normalised with ``mean``/``std``)."""
    im = _np(image)
    if im.ndim == 3 and im.shape[0] in (1, 3):
        im = im.transpose(1, 2, 0)
    if mean is not None and std is not None:
        im = im * np.asarray(std)[None, None] + np.asarray(mean)[None, None]
    return np.clip(im, 0, 1)


def _grid_axes(fig: Figure, rows: int, cols: int, right: float = 0.99, top: float | None = None):
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    if top is None:
        top = 0.92 if rows == 1 else 0.96
    fig.subplots_adjust(left=0.01, right=right, bottom=0.01, top=top, wspace=0.06, hspace=0.12)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return axes


def _draw_boxes(ax, boxes: Any, color: str = "lime") -> None:
    if boxes is None:
        return
    for x1, y1, x2, y2 in _np(boxes).reshape(-1, 4):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.8))


def _overlay(ax, img: np.ndarray, heat: np.ndarray, cmap: str = "jet", alpha: float = 0.5) -> Any:
    h, w = img.shape[:2]
    ax.imshow(img, extent=(0, w, h, 0))
    return ax.imshow(heat, cmap=cmap, alpha=alpha, extent=(0, w, h, 0), interpolation="nearest")


def plot_score_overlays(
    images: Any,
    scores: Any,
    path: str | os.PathLike,
    *,
    boxes: Sequence[Any] | None = None,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    titles: Sequence[str] | None = None,
    mark_argmax: bool = True,
    max_images: int = 8,
    suptitle: str | None = None,
) -> Path:
    """Patch-score heatmaps over the un-normalised images, GT boxes in green, the argmax patch as a white square."""
    imgs, sc = _np(images), _np(scores)
    b = min(len(imgs), max_images)
    fig = Figure(figsize=(2.4 * b + 0.8, 2.7))
    axes = _grid_axes(fig, 1, b, right=0.9)
    for i in range(b):
        ax = axes[0, i]
        img = to_display(imgs[i], mean, std)
        hh, ww = img.shape[:2]
        s = sc[i]
        im = _overlay(ax, img, s)
        if boxes is not None:
            _draw_boxes(ax, boxes[i])
        if mark_argmax:
            r, c = np.unravel_index(int(np.argmax(s)), s.shape)
            ph, pw = hh / s.shape[0], ww / s.shape[1]
            ax.add_patch(Rectangle((c * pw, r * ph), pw, ph, fill=False, edgecolor="white", linewidth=2))
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    cax = fig.add_axes((0.92, 0.1, 0.012, 0.75))
    fig.colorbar(im, cax=cax, label="patch score")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path, tight=False)


def plot_fg_bg_hist(dist: Mapping[str, Any], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Normalised histograms of foreground vs background patch scores with dashed means (paper Fig. 2a)."""
    edges = _np(dist["edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    fig = Figure(figsize=(5, 3.4))
    ax = fig.subplots()
    for key, color, name in (("hist_bg", "tab:blue", "background"), ("hist_fg", "tab:orange", "foreground")):
        ax.bar(centers, _np(dist[key]), width=width, alpha=0.55, color=color, label=name)
        m = dist["mean_" + key[-2:]]
        if np.isfinite(m):
            ax.axvline(m, color=color, linestyle="--", linewidth=1.5)
    ax.set_xlabel("normalised patch score")
    ax.set_ylabel("density")
    ax.legend(frameon=False, fontsize=8)
    au = dist.get("auroc")
    ax.set_title((title + "  " if title else "") + (f"AUROC fg>bg = {au:.3f}" if au is not None else ""), fontsize=9)
    return save_figure(fig, path)


def plot_masking_curves(result: Mapping[str, Any], path: str | os.PathLike, *, metric: str = "accuracy",
                        title: str | None = None) -> Path:
    """Accuracy vs number of removed patches for each order (paper Fig. 2b); ``result`` from run_masking_probe."""
    x = np.asarray(result["num_removed"])
    fig = Figure(figsize=(5, 3.4))
    ax = fig.subplots()
    for order, ys in result[metric].items():
        color, name = ORDER_STYLE.get(order, (None, order))
        ax.plot(x, 100 * np.asarray(ys), marker="o", color=color, label=name)
    ax.set_xlabel(f"removed patches (of {result.get('num_patches', '?')})")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_norm_hist(norms: Mapping[str, Any], path: str | os.PathLike, *, bins: int = 60,
                   threshold: float | None = None, title: str | None = None) -> Path:
    """Histograms (log y) of patch-token L2 norms, one series per label in ``norms`` (paper Fig. 6)."""
    fig = Figure(figsize=(5, 3.4))
    ax = fig.subplots()
    allv = np.concatenate([_np(v).ravel() for v in norms.values()])
    rng = (float(allv.min()), float(allv.max()) + 1e-9)
    for name, v in norms.items():
        ax.hist(_np(v).ravel(), bins=bins, range=rng, alpha=0.55, label=str(name))
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1.2, label=f"outlier > {threshold:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("patch token L2 norm")
    ax.set_ylabel("count")
    ax.legend(frameon=False, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_vote_maps(images: Any, votes: Any, maps: Mapping[float, Any], path: str | os.PathLike, *,
                   mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD,
                   boxes: Sequence[Any] | None = None, max_images: int = 6) -> Path:
    """Per image: the image, the vote counts, and the patches above 50/30/20% of the max vote in red (Fig. 5)."""
    imgs, v = _np(images), _np(votes)
    b = min(len(imgs), max_images)
    fr = list(maps)
    fig = Figure(figsize=(2.1 * (2 + len(fr)), 2.2 * b))
    axes = _grid_axes(fig, b, 2 + len(fr))
    for i in range(b):
        img = to_display(imgs[i], mean, std)
        axes[i, 0].imshow(img)
        if boxes is not None:
            _draw_boxes(axes[i, 0], boxes[i])
        _overlay(axes[i, 1], img, v[i], cmap="viridis", alpha=0.7)
        for j, f in enumerate(fr):
            m = _np(maps[f])[i].astype(float)
            red = np.zeros((*m.shape, 4))
            red[..., 0], red[..., 3] = 1.0, 0.6 * m
            hh, ww = img.shape[:2]
            axes[i, 2 + j].imshow(img, extent=(0, ww, hh, 0))
            axes[i, 2 + j].imshow(red, extent=(0, ww, hh, 0), interpolation="nearest")
            if i == 0:
                axes[i, 2 + j].set_title(f"> {int(round(100 * f))}% of max", fontsize=8)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=8)
            axes[i, 1].set_title("votes", fontsize=8)
    return save_figure(fig, path, tight=False)


def plot_pca(images: Any, rgb: Any, path: str | os.PathLike, *, mean: Sequence[float] | None = IMAGENET_MEAN,
             std: Sequence[float] | None = IMAGENET_STD, max_images: int = 8, title: str | None = None) -> Path:
    """Images (top row) and the PCA-RGB of their patch features (bottom row) (paper Fig. 7)."""
    return save_figure(pca_figure(images, rgb, mean=mean, std=std, max_images=max_images, title=title), path,
                       tight=False)


def pca_figure(images: Any, rgb: Any, *, mean: Sequence[float] | None = IMAGENET_MEAN,
               std: Sequence[float] | None = IMAGENET_STD, max_images: int = 8, title: str | None = None) -> Figure:
    """The figure of :func:`plot_pca`; a title gets its own band above the images (it never overlaps them)."""
    imgs, p = _np(images), _np(rgb)
    b = min(len(imgs), max_images)
    band = 0.4 if title else 0.05  # inches above the grid
    height = 2 * 2.1 + band  # two rows of 2.1-inch tiles
    fig = Figure(figsize=(2.1 * b, height))
    axes = _grid_axes(fig, 2, b, top=1.0 - band / height)
    for i in range(b):
        axes[0, i].imshow(to_display(imgs[i], mean, std))
        axes[1, i].imshow(p[i], interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 - 0.08 / height, va="top")
    return fig


def plot_attention(images: Any, maps: Any, path: str | os.PathLike, *, mean: Sequence[float] | None = IMAGENET_MEAN,
                   std: Sequence[float] | None = IMAGENET_STD, max_images: int = 6, max_heads: int = 6) -> Path:
    """Class-token attention: per image the image, the head-mean map and up to ``max_heads`` single heads.
    ``maps`` is (B, H, h, w) per head or (B, h, w)."""
    imgs, m = _np(images), _np(maps)
    if m.ndim == 3:
        m = m[:, None]
    b = min(len(imgs), max_images)
    nh = min(m.shape[1], max_heads) if m.shape[1] > 1 else 0
    fig = Figure(figsize=(2.1 * (2 + nh), 2.2 * b))
    axes = _grid_axes(fig, b, 2 + nh)
    for i in range(b):
        img = to_display(imgs[i], mean, std)
        axes[i, 0].imshow(img)
        _overlay(axes[i, 1], img, m[i].mean(0), cmap="inferno", alpha=0.6)
        for j in range(nh):
            axes[i, 2 + j].imshow(m[i, j], cmap="inferno", interpolation="nearest")
            if i == 0:
                axes[i, 2 + j].set_title(f"head {j}", fontsize=8)
        if i == 0:
            axes[i, 1].set_title("CLS attn (mean)", fontsize=8)
    return save_figure(fig, path, tight=False)


def plot_dynamics(csv_path: str | os.PathLike, png_path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Training dynamics (paper Fig. 3): PiB (any-overlap and centre) and accuracy against the step, from the CSV
    written by :class:`lastvit.analysis.dynamics.DynamicsCallback` (several runs: a ``run`` column)."""
    p = Path(csv_path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such dynamics CSV")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "step" not in rows[0]:
        raise ValueError(f"{p}: not a dynamics CSV (needs a 'step' column and rows)")
    runs: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        runs.setdefault(r.get("run") or "run", []).append(r)
    fig = Figure(figsize=(9, 3.4))
    ax1, ax2 = fig.subplots(1, 2)
    for name, rs in runs.items():
        step = np.asarray([float(r["step"]) for r in rs])
        for key, ls in (("pib", "-"), ("pib_center", "--")):
            y = [float(r[key]) if r.get(key) not in (None, "", "nan") else np.nan for r in rs]
            ax1.plot(step, y, ls, marker=".", label=f"{name} {key}")
        if "accuracy" in rs[0]:
            acc = [float(r["accuracy"]) * 100 if r.get("accuracy") not in (None, "", "nan") else np.nan for r in rs]
            ax2.plot(step, acc, marker=".", label=name)
    ax1.set_xlabel("step")
    ax1.set_ylabel("Point-in-Box")
    ax1.set_ylim(0, 1)
    ax1.grid(alpha=0.3)
    ax1.legend(frameon=False, fontsize=7)
    ax2.set_xlabel("step")
    ax2.set_ylabel("probe accuracy (%)")
    ax2.grid(alpha=0.3)
    ax2.legend(frameon=False, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, png_path)
