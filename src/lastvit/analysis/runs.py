"""One diagnostic over a loader of collated batches, with its per-image rows and figures: what ``lastvit analyze
KIND`` runs, callable from Python.

Every ``<kind>_run(model, loader, *, out, mean, std, num_figures, device, progress, **options)`` returns
``(metrics, rows, figures)``: the aggregate numbers, one dict per image (or per masking level), and the PNG paths it
wrote into ``out``. :data:`KINDS` maps each kind to its function. Figures come from the batches of the evaluation
pass itself (the data is read once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["KINDS", "pib_run", "scores_run", "masking_run", "norms_run", "votes_run", "pca_run", "attention_run",
           "check_layer"]

Result = tuple[dict[str, Any], list[dict[str, Any]], list[Path]]


def _fg(batch: dict[str, Any], grid: tuple[int, int], patch: int) -> torch.Tensor:
    from lastvit.analysis.pib import foreground_patches

    return foreground_patches(batch["boxes"], grid, patch_size=patch, masks=batch.get("mask"))


def _ids(batch: dict[str, Any], start: int, n: int) -> list[str]:
    return [str(i) for i in batch["id"]] if "id" in batch else [str(start + i) for i in range(n)]


def _blank(v: float | None) -> float | str:
    return "" if v is None or v != v else v


@torch.no_grad()
def pib_run(model: torch.nn.Module, loader: Iterable[dict[str, Any]], *, out: Path, mean: Any = None,
            std: Any = None, num_figures: int = 8, device: str = "cpu", source: str = "auto",
            single_object: bool = False, max_box_area: float | None = None, **_: Any) -> Result:
    """Point-in-Box (:func:`~lastvit.analysis.pib.evaluate_pib`), the overlay figure from its first batch."""
    from lastvit.analysis.pib import evaluate_pib
    from lastvit.viz import plot_score_overlays

    first: dict[str, Any] = {}

    def keep_first(b: dict[str, Any]) -> None:
        if not first:
            first.update(b)

    metrics, rows = evaluate_pib(model, loader, source=source, device=device, single_object=single_object,
                                 max_box_area=max_box_area, on_batch=keep_first)
    figs = []
    if first:
        k = num_figures
        figs.append(plot_score_overlays(first["image"][:k].cpu(), first["scores"][:k].cpu(), out / "pib_overlays.png",
                                        boxes=first["boxes"][:k], mean=mean, std=std,
                                        titles=[str(i) for i in (first["id"] or [])][:k]))
    return metrics, rows, figs


@torch.no_grad()
def scores_run(model: torch.nn.Module, loader: Iterable[dict[str, Any]], *, out: Path, mean: Any = None,
               std: Any = None, num_figures: int = 8, device: str = "cpu", source: str = "auto", **_: Any) -> Result:
    """Patch-score distributions foreground vs background (paper Fig. 2a), per-image AUROC."""
    from lastvit.analysis.distributions import per_image_scores, score_distributions
    from lastvit.analysis.scores import patch_scores
    from lastvit.viz import plot_fg_bg_hist, plot_score_overlays

    all_s, all_fg, rows, figs = [], [], [], []
    for bi, batch in enumerate(loader):
        x = batch["image"].to(device)
        s, rec = patch_scores(model, x, source=source)
        s = s.cpu()
        fg = _fg(batch, rec.grid, model.patch_size)
        for name, st in zip(_ids(batch, len(rows), s.shape[0]), per_image_scores(s, fg), strict=True):
            rows.append({"id": name, **{k: _blank(v) for k, v in st.items()}})
        all_s.append(s)
        all_fg.append(fg)
        if bi == 0:
            figs.append(plot_score_overlays(x.cpu()[:num_figures], s, out / "score_overlays.png",
                                            boxes=batch["boxes"], mean=mean, std=std))
    dist = score_distributions(torch.cat(all_s), torch.cat(all_fg))
    figs.insert(0, plot_fg_bg_hist(dist, out / "score_hist.png", title=getattr(model, "aggregator_name", "")))
    metrics = {k: v for k, v in dist.items() if not isinstance(v, torch.Tensor)}
    metrics["num_images"] = len(rows)
    metrics["histogram"] = {"edges": dist["edges"], "fg": dist["hist_fg"], "bg": dist["hist_bg"]}
    return metrics, rows, figs


def masking_run(model: torch.nn.Module, loader: Iterable[dict[str, Any]], *, out: Path, device: str = "cpu",
                source: str = "auto", fractions: Sequence[float] = (0.0, 0.5), mode: str = "pixel",
                fill: str = "zero", seed: int = 0, **_: Any) -> Result:
    """The masking probe (paper Fig. 2b): accuracy and agreement per removed share, by score order."""
    from lastvit.analysis.masking import run_masking_probe
    from lastvit.viz import plot_masking_curves

    res = run_masking_probe(model, loader, device=device, fractions=list(fractions), mode=mode, fill=fill,
                            source=source, seed=seed)
    rows = []
    for li, (f, k) in enumerate(zip(res["fractions"], res["num_removed"], strict=True)):
        for o in res["accuracy"]:
            rows.append({"fraction": f, "num_removed": k, "order": o, "accuracy": res["accuracy"][o][li],
                         "agreement": res["agreement"][o][li]})
    figs = [plot_masking_curves(res, out / "masking_curves.png",
                                title=f"{mode} masking ({fill})" if mode == "pixel" else "token drop")]
    metrics = {k: res[k] for k in ("fractions", "num_removed", "num_patches", "accuracy", "agreement",
                                   "clean_accuracy", "num_images")}
    return metrics, rows, figs


@torch.no_grad()
def norms_run(model: torch.nn.Module, loader: Iterable[dict[str, Any]], *, out: Path, device: str = "cpu",
              threshold: str | float = "robust", mad_k: float = 5.0, **_: Any) -> Result:
    """Patch-token norms per block and high-norm outliers (paper Fig. 6); per image the largest and mean norm at
    the last block output and its number of outliers."""
    from lastvit.analysis.norms import layer_summary, outlier_stats, token_norms
    from lastvit.viz import plot_norm_hist

    blocks, final, fgs, ids = [], [], [], []
    for batch in loader:
        x = batch["image"].to(device)
        n = token_norms(model, x)
        blocks.append(n["blocks"])
        final.append(n["final"])
        fgs.append(_fg(batch, tuple(n["final"].shape[-2:]), model.patch_size))
        ids.extend(_ids(batch, len(ids), x.shape[0]))
    norms = {"blocks": torch.cat(blocks, dim=1), "final": torch.cat(final)}
    fg = torch.cat(fgs)
    last = norms["blocks"][-1]
    st_last = outlier_stats(last, method=threshold, k=mad_k, foreground=fg)
    st_final = outlier_stats(norms["final"], method=threshold, k=mad_k, foreground=fg)
    thr = st_last["threshold"]
    flat = last.flatten(1)
    rows = [{"id": name, "max_norm_last_block": float(flat[i].max()), "mean_norm_last_block": float(flat[i].mean()),
             "num_outliers": int((flat[i] > thr).sum())} for i, name in enumerate(ids)]
    figs = [plot_norm_hist({"last block (pre-norm)": last}, out / "norm_hist.png", threshold=thr,
                           title="patch-token norms"),
            plot_norm_hist({"after final norm": norms["final"]}, out / "norm_hist_final.png",
                           threshold=st_final["threshold"])]
    metrics = {"last_block": st_last, "final": st_final, "per_layer": layer_summary(norms), "num_images": len(ids)}
    return metrics, rows, figs


@torch.no_grad()
def votes_run(model: torch.nn.Module, loader: Iterable[dict[str, Any]], *, out: Path, mean: Any = None,
              std: Any = None, num_figures: int = 8, device: str = "cpu", k: int | float | None = None,
              **_: Any) -> Result:
    """LazyStrike vote maps (paper Eq. 8, Fig. 5): per image the share of votes on the foreground, whether the
    top-voted patch is in a box (Point-in-Box of the votes) and the patches over 50/30/20% of the maximum."""
    from lastvit.analysis.pib import foreground_share, point_in_box
    from lastvit.analysis.votes import vote_maps
    from lastvit.viz import plot_vote_maps

    kw = {} if k is None else {"k": k}
    rows, figs, res = [], [], None
    for bi, batch in enumerate(loader):
        x = batch["image"].to(device)
        res = vote_maps(model, x, **kw)
        v = res["votes"]
        fg = _fg(batch, res["grid"], model.patch_size)
        share = foreground_share(v, fg)
        hit = point_in_box(v.float(), batch["boxes"], patch_size=model.patch_size)["hit_any"]
        for i, name in enumerate(_ids(batch, len(rows), v.shape[0])):
            rows.append({"id": name, "vote_share_fg": float(share[i]), "fg_fraction": float(fg[i].float().mean()),
                         "top_vote_hit_any": int(hit[i]),
                         **{f"patches_over_{int(100 * f)}pct": int(m[i].sum()) for f, m in res["maps"].items()}})
        if bi == 0:
            figs.append(plot_vote_maps(x.cpu(), v, res["maps"], out / "vote_maps.png", mean=mean, std=std,
                                       boxes=batch["boxes"], max_images=num_figures))
    n = max(len(rows), 1)
    metrics = {"k": res["k"] if res else None, "vote_share_fg": sum(r["vote_share_fg"] for r in rows) / n,
               "top_vote_pib": sum(r["top_vote_hit_any"] for r in rows) / n,
               "fg_fraction": sum(r["fg_fraction"] for r in rows) / n, "num_images": len(rows)}
    return metrics, rows, figs


@torch.no_grad()
def pca_run(model: torch.nn.Module, loader: Iterable[dict[str, Any]], *, out: Path, mean: Any = None,
            std: Any = None, num_figures: int = 8, device: str = "cpu", **_: Any) -> Result:
    """PCA of the patch features of the first ``num_figures`` images to RGB, plain and foreground-only (Fig. 7)."""
    from lastvit.analysis.pca import foreground_pca_rgb, pca_rgb
    from lastvit.viz import plot_pca

    feats, imgs, grid = [], [], None
    for batch in loader:
        x = batch["image"][: num_figures - len(imgs)].to(device)
        rec = model.forward_tokens(x)
        feats.append(rec.patches.cpu())
        imgs.extend(x.cpu())
        grid = rec.grid
        if len(imgs) >= num_figures:
            break
    f = torch.cat(feats)
    images = torch.stack(imgs)
    fg_rgb, fg = foreground_pca_rgb(f, grid)
    figs = [plot_pca(images, pca_rgb(f, grid), out / "pca.png", mean=mean, std=std, title="PCA of patch features"),
            plot_pca(images, fg_rgb, out / "pca_foreground.png", mean=mean, std=std,
                     title="foreground PCA (2-stage)")]
    return {"num_images": len(imgs), "grid": list(grid), "pca_fg_fraction": float(fg.float().mean())}, [], figs


def check_layer(model: torch.nn.Module, layer: int) -> int:
    """``layer`` as a block index of ``model`` (negative counts from the end); a ValueError names the valid range."""
    depth = len(model.encoder.blocks) if hasattr(model, "encoder") else len(model.blocks)
    if not -depth <= int(layer) < depth:
        raise ValueError(f"--layer {layer}: this model has {depth} blocks; give a block index in "
                         f"{-depth}..{depth - 1} (negative counts from the last)")
    return int(layer) % depth


@torch.no_grad()
def attention_run(model: torch.nn.Module, loader: Iterable[dict[str, Any]], *, out: Path, mean: Any = None,
                  std: Any = None, num_figures: int = 8, device: str = "cpu", layer: int = -1, **_: Any) -> Result:
    """Class-token attention of block ``layer``: per image the share of the head-mean attention on the foreground,
    the attention mass on the prefix tokens, and whether the most-attended patch is in a box."""
    from lastvit.analysis.attention import cls_attention_maps
    from lastvit.analysis.pib import foreground_share, point_in_box
    from lastvit.viz import plot_attention

    check_layer(model, layer)
    rows, figs = [], []
    for bi, batch in enumerate(loader):
        x = batch["image"].to(device)
        a = cls_attention_maps(model, x, layer=layer)
        m = a["mean"]
        fg = _fg(batch, tuple(m.shape[-2:]), model.patch_size)
        share = foreground_share(m, fg)
        hit = point_in_box(m, batch["boxes"], patch_size=model.patch_size)["hit_any"]
        for i, name in enumerate(_ids(batch, len(rows), m.shape[0])):
            rows.append({"id": name, "attn_fg_share": _blank(float(share[i])),
                         "prefix_mass": float(a["prefix_mass"][i].mean()), "top_attn_hit_any": int(hit[i])})
        if bi == 0:
            figs.append(plot_attention(x.cpu(), a["heads"], out / "cls_attention.png", mean=mean, std=std,
                                       max_images=num_figures))
    shares = [r["attn_fg_share"] for r in rows if r["attn_fg_share"] != ""]
    n = max(len(rows), 1)
    metrics = {"layer": layer, "attn_fg_share": sum(shares) / max(len(shares), 1),
               "top_attn_pib": sum(r["top_attn_hit_any"] for r in rows) / n,
               "prefix_mass": sum(r["prefix_mass"] for r in rows) / n, "num_images": len(rows)}
    return metrics, rows, figs


#: kind -> the function ``lastvit analyze KIND`` calls
KINDS: dict[str, Callable[..., Result]] = {
    "pib": pib_run,
    "scores": scores_run,
    "masking": masking_run,
    "norms": norms_run,
    "votes": votes_run,
    "pca": pca_run,
    "attention": attention_run,
}
