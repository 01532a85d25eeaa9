"""Coarse (foreground) segmentation from patch scores on VOC12 val (paper Table 6).

The paper follows CRATE ("Emergence of segmentation with minimalistic white-box transformers"), whose coarse
segmentation score is DINO's attention-map evaluation (Caron et al. 2021, Table 7): a per-image map is
thresholded to a foreground mask and compared with the ground-truth foreground by the Jaccard index, averaged
over images. Here the map is the paper's patch score (Eq. 3, ``lastvit.analysis.patch_scores``) instead of the
class-token attention.

Threshold rules (``rule``):

* ``"mass"`` (default, DINO / CRATE): keep the highest-scoring patches that together hold ``mass`` (0.6) of the
  map's total; scores are shifted by their image minimum first (cosines can be negative, attention cannot), so
  the map is non-negative. A patch is kept when the cumulative mass of the patches *above and including* it, in
  decreasing order, has not yet exceeded ``mass`` of the total plus the first one that crosses it
  (DINO's ``cumsum(sorted ascending) > 1 - mass``);
* ``"mean"``: score > image mean; ``"mean_std"``: score > mean + 1 std (the discovery rule).

The patch mask is upsampled by nearest neighbour to pixels (each patch covers ``p x p`` pixels of the padded
input) and cropped to the image. Ground-truth foreground = label not in {0, ignore}; ignore pixels (255) are left
out of both intersection and union (DINO's code counts VOC's 255 boundary as foreground; ``ignore_boundary=False``
reproduces that). ``jaccard`` = mean over images (an image with an empty union scores 1); ``binary_miou`` =
mean of background and foreground IoU over the dataset's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lastvit.evaluate.discovery import model_patch_scores, pad_to_patch

__all__ = ["threshold_scores", "mask_to_pixels", "jaccard", "evaluate_coarse_seg", "RULES"]

RULES = ("mass", "mean", "mean_std")


def threshold_scores(scores: torch.Tensor, rule: str = "mass", mass: float = 0.6) -> torch.Tensor:
    """Boolean foreground mask (h, w) of one patch-score map."""
    s = scores.detach().double()
    if rule == "mass":
        if not 0.0 < mass <= 1.0:
            raise ValueError(f"mass must lie in (0, 1], got {mass}")
        v = (s - s.min()).reshape(-1)
        total = v.sum()
        if total <= 0:
            return torch.ones_like(s, dtype=torch.bool)
        val, idx = torch.sort(v, stable=True)  # ascending
        cum = torch.cumsum(val / total, 0)
        keep_sorted = cum > (1.0 - mass)
        keep = torch.zeros_like(keep_sorted)
        keep[idx] = keep_sorted
        return keep.reshape(s.shape)
    if rule == "mean":
        return s > s.mean()
    if rule == "mean_std":
        return s > s.mean() + s.std(unbiased=False)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def mask_to_pixels(mask: torch.Tensor, patch_size: int, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling of a patch mask (h, w) by ``patch_size``, cropped to ``size``."""
    m = mask.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)
    return m[: size[0], : size[1]]


def jaccard(pred: torch.Tensor, gt_fg: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Jaccard index of two boolean masks over ``valid`` pixels (1.0 when the union is empty)."""
    if valid is not None:
        pred, gt_fg = pred[valid], gt_fg[valid]
    union = int((pred | gt_fg).sum())
    return 1.0 if union == 0 else int((pred & gt_fg).sum()) / union


@torch.no_grad()
def evaluate_coarse_seg(
    model: nn.Module,
    samples: Iterable[dict],
    rule: str = "mass",
    mass: float = 0.6,
    device: torch.device | str = "cpu",
    ignore_index: int = 255,
    ignore_boundary: bool = True,
    on_image: Callable[[dict], None] | None = None,
) -> dict:
    """Coarse segmentation metrics over samples with ``image`` and ``seg`` (VOC class map: 0 background, 255 ignore)
    or a binary foreground ``mask``; see the module docstring."""
    device = torch.device(device)
    model.eval().to(device)
    p = model.patch_size
    rows = []
    conf = torch.zeros(2, 2, dtype=torch.int64)
    for i, s in enumerate(samples):
        if "seg" in s:
            gt = torch.as_tensor(s["seg"]).long()
        elif "mask" in s:  # a binary foreground mask (the synthetic benchmark, COCO instances)
            gt = (torch.as_tensor(s["mask"]) > 0).long()
        else:
            raise ValueError(f"sample {s.get('id', i)} has neither a 'seg' map nor a foreground 'mask': coarse "
                             "segmentation needs segmentation labels")
        img = s["image"]
        x = pad_to_patch(img[None].to(device).float(), p)
        sc = model_patch_scores(model, x)[0].cpu()
        fg = mask_to_pixels(threshold_scores(sc, rule, mass), p, tuple(gt.shape))
        if fg.shape != gt.shape:
            fg = F.pad(fg, (0, gt.shape[1] - fg.shape[1], 0, gt.shape[0] - fg.shape[0]))
        ign = gt == ignore_index
        gt_fg = (gt != 0) & (~ign if ignore_boundary else torch.ones_like(ign))
        valid = ~ign if ignore_boundary else None
        jac = jaccard(fg, gt_fg, valid)
        v = ~ign if ignore_boundary else torch.ones_like(ign)
        conf += torch.bincount(gt_fg[v].long() * 2 + fg[v].long(), minlength=4).reshape(2, 2)
        rows.append({"id": str(s.get("id", i)), "jaccard": 100.0 * jac,
                     "fg_fraction_pred": float(fg.double().mean()), "fg_fraction_gt": float(gt_fg.double().mean())})
        if on_image is not None:
            on_image(rows[-1])
    c = conf.double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    ious = [float(tp[k] / union[k]) if union[k] > 0 else math.nan for k in range(2)]
    valid_ious = [x for x in ious if not math.isnan(x)]
    return {
        "jaccard": sum(r["jaccard"] for r in rows) / max(1, len(rows)),
        "binary_miou": 100.0 * sum(valid_ious) / len(valid_ious) if valid_ious else math.nan,
        "iou_background": 100.0 * ious[0], "iou_foreground": 100.0 * ious[1],
        "images": len(rows), "per_image": rows,
    }
