"""Masking probe (paper Fig. 2b): remove patches highest-score first, lowest first or at random and re-classify.

Two ways to remove a patch:

* ``mode="pixel"``: overwrite the patch's pixels in the (normalised) input. ``fill="zero"`` writes 0; ``"mean"`` writes
  the dataset mean, which is also 0 after normalisation with the dataset's own mean/std (so it equals ``"zero"`` for
  lastvit datasets; it is kept as a name because papers use it); ``"noise"`` writes N(0, 1) noise, i.e. noise with the
  dataset's per-channel statistics (seeded, deterministic).
* ``mode="token"``: the selected patch tokens leave the sequence. The patches are embedded, the position embedding is
  added (``LastViT.embed``), then only the prefix tokens (class token, registers) and the kept patches run through the
  blocks (``LastViT.forward_blocks(keep=...)``); the readout pools over the kept patches only. Window attention (if
  the model has it) is restricted to kept tokens of the same window. At least one patch is always kept in this mode.

The scores come from the one clean forward per batch; every removal level then costs one forward of the three
orders stacked (3 x B images), so L levels cost 3L forwards per image (level 0 reuses the clean pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from lastvit.models.vit import LastViT

__all__ = [
    "embed_tokens",
    "encode_kept",
    "forward_kept",
    "pixel_mask",
    "removal_order",
    "masking_probe",
    "run_masking_probe",
    "ORDERS",
    "FILLS",
]

ORDERS = ("high", "low", "random")
FILLS = ("zero", "mean", "noise")


def embed_tokens(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Tokens entering the first block (B, P + N, D): ``model.embed`` (patches, position, prefix, ``norm_pre``)."""
    return model.embed(images)[0]


def encode_kept(
    model: nn.Module, images: torch.Tensor, keep: torch.Tensor, embedded: torch.Tensor | None = None
) -> torch.Tensor:
    """Final-normed tokens (B, P + n, D) when only patches ``keep`` (B, n) (row-major indices) enter the blocks.

    ``embedded`` (from :func:`embed_tokens` on the same images) skips the patch embedding. The blocks run in the
    model's own loop (``LastViT.forward_blocks(..., keep=keep)``), window attention included."""
    grid = model.grid_size(images)
    x = embed_tokens(model, images) if embedded is None else embedded
    if keep.ndim != 2 or keep.shape[0] != images.shape[0]:
        raise ValueError(f"keep must be (B, n) patch indices, got shape {tuple(keep.shape)}")
    return model.encoder.norm(model.forward_blocks(x, grid, keep=keep))


def forward_kept(
    model: nn.Module, images: torch.Tensor, keep: torch.Tensor, embedded: torch.Tensor | None = None
) -> torch.Tensor:
    """Model output (logits / embedding) with only the kept patch tokens: head(readout(kept patches, prefix))."""
    prefix, patches = model.split(encode_kept(model, images, keep, embedded))
    return model.forward_head(model.pool(patches, prefix))


def removal_order(scores: torch.Tensor, order: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, N) patch indices in removal order: ``high`` (highest score first), ``low`` or ``random``; stable."""
    s = scores.detach().float().flatten(1).cpu()
    if order == "high":
        return torch.sort(s, dim=1, descending=True, stable=True).indices
    if order == "low":
        return torch.sort(s, dim=1, descending=False, stable=True).indices
    if order == "random":
        return torch.stack([torch.randperm(s.shape[1], generator=generator) for _ in range(s.shape[0])])
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def pixel_mask(
    images: torch.Tensor,
    remove: torch.Tensor,
    patch_size: int,
    fill: str = "zero",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Copy of ``images`` with the cells where ``remove`` (B, h, w) is True overwritten by ``fill``."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    b, h, w = remove.shape
    pix = remove.to(images.device).repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    if pix.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"mask grid {h}x{w} x patch {patch_size} does not cover images {tuple(images.shape[-2:])}")
    if fill == "noise":
        value = torch.randn(images.shape, generator=generator).to(images)
    else:
        value = torch.zeros((), dtype=images.dtype, device=images.device)
    return torch.where(pix[:, None], value, images)


def _levels(fractions: Sequence[float], n: int, mode: str) -> list[int]:
    out = []
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"masking fractions must lie in [0, 1], got {f}")
        k = int(round(f * n))
        out.append(min(k, n - 1) if mode == "token" else k)
    return out


@torch.no_grad()
def masking_probe(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    fractions: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9),
    mode: str = "pixel",
    fill: str = "zero",
    orders: Sequence[str] = ORDERS,
    scores: torch.Tensor | None = None,
    patch_size: int | None = None,
    source: str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Masking probe on one batch.

    Args:
        model: a LastViT (scores computed from its clean forward), or, in pixel mode, any classifier
            ``model(images) -> logits`` together with ``scores`` (B, h, w) and ``patch_size``.
        labels: (B,) true classes; -1 (or None) means unknown, then accuracy is measured against the clean prediction.
        fractions: shares of the patches to remove (0 reuses the clean pass).
        mode: ``"pixel"`` or ``"token"``; fill: ``"zero"`` | ``"mean"`` | ``"noise"`` (pixel mode).

    Returns:
        dict with ``fractions``, ``num_removed`` (per level), ``correct`` {order: [int per level]},
        ``agree`` {order: [...]} (same prediction as the clean image), ``num_images``, ``clean_correct``.
    """
    if mode not in ("pixel", "token"):
        raise ValueError(f"mode must be 'pixel' or 'token', got {mode!r}")
    for o in orders:
        if o not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {o!r}")
    is_vit = isinstance(model, LastViT)
    if mode == "token" and not is_vit:
        raise ValueError("token dropping needs a LastViT model")
    if is_vit:
        model.eval()
        patch_size = model.patch_size
        from lastvit.analysis.scores import scores_from_record

        rec = model.forward_tokens(images)
        clean = model.forward_head(rec.pooled)
        if scores is None:
            scores = scores_from_record(model, rec, source=source)
    else:
        if scores is None or patch_size is None:
            raise ValueError("a plain classifier needs scores and patch_size")
        clean = model(images)
    b = images.shape[0]
    grid = tuple(scores.shape[-2:])
    n = grid[0] * grid[1]
    clean_pred = clean.argmax(dim=-1).cpu()
    target = clean_pred.clone() if labels is None else torch.as_tensor(labels).cpu().clone()
    target = torch.where(target < 0, clean_pred, target)
    gen = torch.Generator().manual_seed(seed)
    perms = {o: removal_order(scores, o, gen) for o in orders}
    levels = _levels(fractions, n, mode)
    correct: dict[str, list[int]] = {o: [] for o in orders}
    agree: dict[str, list[int]] = {o: [] for o in orders}
    base_correct = int((clean_pred == target).sum())
    if mode == "token":  # embed once; every level gathers its kept tokens from the same embedding
        emb = embed_tokens(model, images).repeat(len(orders), 1, 1)
        rep = images.repeat(len(orders), 1, 1, 1)
    for k in levels:
        if k == 0:
            for o in orders:
                correct[o].append(base_correct)
                agree[o].append(b)
            continue
        if mode == "pixel":
            batch = []
            for o in orders:
                remove = torch.zeros(b, n, dtype=torch.bool)
                remove.scatter_(1, perms[o][:, :k], True)
                batch.append(pixel_mask(images, remove.reshape(b, *grid), patch_size, fill, gen))
            out = model(torch.cat(batch))
        else:
            keep = torch.cat([torch.sort(perms[o][:, k:], dim=1).values for o in orders])
            out = forward_kept(model, rep, keep, emb)
        pred = out.argmax(dim=-1).cpu().reshape(len(orders), b)
        for j, o in enumerate(orders):
            correct[o].append(int((pred[j] == target).sum()))
            agree[o].append(int((pred[j] == clean_pred).sum()))
    return {
        "fractions": [float(f) for f in fractions],
        "num_removed": levels,
        "num_patches": n,
        "correct": correct,
        "agree": agree,
        "num_images": b,
        "clean_correct": base_correct,
    }


def run_masking_probe(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    *,
    limit: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`masking_probe` over a loader of collated batches; returns accuracy curves in [0, 1]."""
    total: dict[str, Any] | None = None
    seen = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=limit, desc="masking", unit="img")
    for batch in loader:
        x = batch["image"]
        y = batch.get("label")
        if limit is not None:
            x = x[: limit - seen]
            y = y[: limit - seen] if y is not None else None
        if x.shape[0] == 0:
            break
        res = masking_probe(model, x.to(device), None if y is None else torch.as_tensor(y), **kwargs)
        seen += x.shape[0]
        if bar is not None:
            bar.update(x.shape[0])
        if total is None:
            total = res
        else:
            for key in ("correct", "agree"):
                for o in total[key]:
                    total[key][o] = [a + c for a, c in zip(total[key][o], res[key][o])]
            total["num_images"] += res["num_images"]
            total["clean_correct"] += res["clean_correct"]
        if limit is not None and seen >= limit:
            break
    if bar is not None:
        bar.close()
    if total is None:
        raise ValueError("masking probe got no images")
    n = total["num_images"]
    total["accuracy"] = {o: [c / n for c in v] for o, v in total["correct"].items()}
    total["agreement"] = {o: [c / n for c in v] for o, v in total["agree"].items()}
    total["clean_accuracy"] = total["clean_correct"] / n
    return total
