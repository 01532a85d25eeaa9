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
reproduces that). ``binary_miou`` = mean of background and foreground IoU over the dataset's pixels.

The paper's protocol for Table 6 is not published, and two readings of "Jaccard of the thresholded map against the
ground truth" give numbers about 2x apart on the same maps, so both are computed and reported by name
(:data:`PROTOCOLS`):

* ``"per_image"``: one foreground mask per image (every labelled object together) against the predicted mask;
  the score is the mean over images (an image with an empty union scores 1). This is ``jaccard``.
* ``"per_object"``: DINO-style, each ground-truth object scored separately against the predicted mask,
  ``|P & O| / |P | O|`` over the valid pixels (pixels of the image's other objects count as false positives for
  ``O``); an image scores the mean over its objects and the score is the mean over the images that have objects
  (the ``get_per_sample_jaccard`` evaluation of the public emergent-segmentation code). Objects
  (:func:`object_masks`): an
  ``instances`` map when the sample has one (VOC ``SegmentationObject``: each id not in {0, 255}); else each class
  present in ``seg`` (a class region: VOC's ``SegmentationClass`` holds no instances); else a binary ``mask`` cut
  by each of the sample's ``boxes`` (the synthetic benchmark), or the whole mask when there are no boxes. An image
  without objects is left out of this mean (counted in ``images_without_objects``). This is
  ``jaccard_per_object``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lastvit.evaluate.discovery import model_patch_scores, pad_to_patch

__all__ = ["PROTOCOLS", "RULES", "evaluate_coarse_seg", "jaccard", "mask_to_pixels", "object_masks",
           "per_object_jaccard", "threshold_scores"]

RULES = ("mass", "mean", "mean_std")
#: the two candidate protocols of the paper's Table 6 (see the module docstring)
PROTOCOLS = ("per_image", "per_object")


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


def object_masks(sample: dict, gt: torch.Tensor, ignore_index: int = 255) -> list[torch.Tensor]:
    """Boolean masks (H, W) of the ground-truth objects of ``sample`` for the ``per_object`` protocol: its
    ``instances`` map, else the class regions of ``seg``, else its binary ``mask`` cut by each box (see the module
    docstring). ``gt`` is the label map the evaluation uses (``seg``, or the binary ``mask`` as 0/1)."""
    inst = sample.get("instances")
    if inst is not None:
        inst = torch.as_tensor(inst).long()
        return [inst == v for v in torch.unique(inst).tolist() if v not in (0, ignore_index)]
    if "seg" in sample:
        return [gt == v for v in torch.unique(gt).tolist() if v not in (0, ignore_index)]
    fg = gt == 1
    boxes = sample.get("boxes")
    if boxes is None or len(boxes) == 0:
        return [fg] if bool(fg.any()) else []
    h, w = fg.shape
    out = []
    for b in torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).tolist():
        x0, y0 = max(0, math.floor(b[0])), max(0, math.floor(b[1]))
        x1, y1 = min(w, math.ceil(b[2])), min(h, math.ceil(b[3]))
        box = torch.zeros_like(fg)
        box[y0:y1, x0:x1] = True
        o = fg & box
        if bool(o.any()):
            out.append(o)
    return out


def per_object_jaccard(pred: torch.Tensor, objects: list[torch.Tensor], valid: torch.Tensor | None = None
                       ) -> list[float]:
    """Jaccard of the predicted foreground ``pred`` against each object mask separately (over ``valid``)."""
    return [jaccard(pred, o, valid) for o in objects]


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
    or a binary foreground ``mask``; see the module docstring.

    Returns ``{"jaccard" (per-image protocol, %), "jaccard_per_object" (%), "protocols": {name: value},
    "binary_miou", "iou_background", "iou_foreground", "images", "objects", "images_without_objects",
    "per_image": rows}``.
    """
    device = torch.device(device)
    model.eval().to(device)
    p = model.patch_size
    rows = []
    obj_scores: list[float] = []  # per image with objects: the mean over its objects
    n_objects = 0
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
        objs = [o & ~ign for o in object_masks(s, gt, ignore_index)] if ignore_boundary else \
            object_masks(s, gt, ignore_index)
        obj_j = per_object_jaccard(fg, [o for o in objs if bool(o.any())], valid)
        if obj_j:
            obj_scores.append(sum(obj_j) / len(obj_j))
        n_objects += len(obj_j)
        v = ~ign if ignore_boundary else torch.ones_like(ign)
        conf += torch.bincount(gt_fg[v].long() * 2 + fg[v].long(), minlength=4).reshape(2, 2)
        rows.append({"id": str(s.get("id", i)), "jaccard": 100.0 * jac, "objects": len(obj_j),
                     "jaccard_per_object": 100.0 * sum(obj_j) / len(obj_j) if obj_j else math.nan,
                     "fg_fraction_pred": float(fg.double().mean()), "fg_fraction_gt": float(gt_fg.double().mean())})
        if on_image is not None:
            on_image(rows[-1])
    c = conf.double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    ious = [float(tp[k] / union[k]) if union[k] > 0 else math.nan for k in range(2)]
    valid_ious = [x for x in ious if not math.isnan(x)]
    if not rows:
        raise ValueError("coarse segmentation: no images to evaluate")
    per_image = sum(r["jaccard"] for r in rows) / len(rows)
    per_object = 100.0 * sum(obj_scores) / len(obj_scores) if obj_scores else math.nan
    return {
        "jaccard": per_image,
        "jaccard_per_object": per_object,
        "protocols": {"per_image": per_image, "per_object": per_object},
        "objects": n_objects,
        "images_without_objects": len(rows) - len(obj_scores),
        "binary_miou": 100.0 * sum(valid_ious) / len(valid_ious) if valid_ious else math.nan,
        "iou_background": 100.0 * ious[0], "iou_foreground": 100.0 * ious[1],
        "images": len(rows), "per_image": rows,
    }
