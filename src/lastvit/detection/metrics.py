"""Open-vocabulary detection metrics on pycocotools.

* :func:`ov_coco_ap50` -- OV-COCO (CLIPSelf ``datasets/coco_ov.py``): COCOeval with ``maxDets=[100, 300, 1000]``;
  the AP50 of category k is the mean of ``precision[0, :, k, 0, -1]`` over entries > -1 (nan without ground
  truth); ``novel_ap50`` / ``base_ap50`` / ``all_ap50`` are nan-means over the novel / base / all categories.
* :func:`lvis_ap` -- the LVIS v1 federated protocol (Gupta et al.; the ``lvis`` package's ``LVISEval``), written
  on pycocotools: per image the detections are capped at the ``max_dets`` (300) best scores overall; a detection
  counts only for the image's positive categories (ground truth present) and its ``neg_category_ids`` (others are
  removed); for the image's ``not_exhaustive_category_ids`` unmatched detections are ignored, not false positives
  (ground-truth annotation ids must be non-zero: pycocotools marks an unmatched detection with 0).
  AP averages IoU 0.50:0.95 and 101 recall points over all areas; ``APr`` / ``APc`` / ``APf`` average the
  categories of each frequency, ``AP`` all categories with ground truth.
* :func:`proposal_recall` -- the fraction of ground-truth boxes whose best proposal has IoU >= ``iou``.
* :func:`oracle_region_accuracy` -- the frozen CLIP branch alone on ground-truth boxes (1x1 RoIAlign of the dense
  CLIP map, cosine with the class texts, background excluded): top-1 accuracy.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

__all__ = ["ov_coco_ap50", "lvis_ap", "proposal_recall", "oracle_region_accuracy", "coco_from_dict"]


def coco_from_dict(gt: dict[str, Any]):
    """A pycocotools ``COCO`` from a dict (``iscrowd`` 0 and ``area`` from the box filled in where missing)."""
    from pycocotools.coco import COCO

    data = copy.deepcopy(gt)
    for a in data["annotations"]:
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
    data.setdefault("info", {})
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _load_res(coco, dets: list[dict[str, Any]]):
    from pycocotools.coco import COCO

    if not dets:
        res = COCO()
        res.dataset = {"images": coco.dataset["images"], "categories": coco.dataset["categories"], "annotations": []}
        with contextlib.redirect_stdout(io.StringIO()):
            res.createIndex()
        return res
    with contextlib.redirect_stdout(io.StringIO()):
        return coco.loadRes(copy.deepcopy(dets))


def _nanmean(x: Iterable[float]) -> float:
    v = [a for a in x if not np.isnan(a)]
    return float(np.mean(v)) if v else float("nan")


def ov_coco_ap50(gt: dict[str, Any], dets: list[dict[str, Any]], novel_ids: Sequence[int],
                 base_ids: Sequence[int], iou_type: str = "bbox") -> dict[str, Any]:
    """``{"novel_ap50", "base_ap50", "all_ap50", "per_category_ap50"}`` (fractions, not %)."""
    from pycocotools.cocoeval import COCOeval

    coco = coco_from_dict(gt)
    res = _load_res(coco, dets)
    ev = COCOeval(coco, res, iou_type)
    ev.params.maxDets = [100, 300, 1000]
    cat_ids = sorted(set(novel_ids) | set(base_ids))
    ev.params.catIds = cat_ids
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"]  # (T, R, K, A, M)
    per = {}
    for k, cid in enumerate(ev.params.catIds):
        p = prec[0, :, k, 0, -1]
        p = p[p > -1]
        per[cid] = float(p.mean()) if p.size else float("nan")
    return {"novel_ap50": _nanmean(per[c] for c in novel_ids), "base_ap50": _nanmean(per[c] for c in base_ids),
            "all_ap50": _nanmean(per.values()), "per_category_ap50": per}


def _federated_dets(coco, dets: list[dict[str, Any]], max_dets: int) -> list[dict[str, Any]]:
    by_img: dict[Any, list] = {}
    for d in dets:
        by_img.setdefault(d["image_id"], []).append(d)
    out = []
    for img_id, ds in by_img.items():
        if img_id not in coco.imgs:
            continue
        ds = sorted(ds, key=lambda d: -d["score"])[:max_dets]
        img = coco.imgs[img_id]
        pos = {a["category_id"] for a in coco.imgToAnns.get(img_id, [])}
        allowed = pos | set(img.get("neg_category_ids", []))
        out += [d for d in ds if d["category_id"] in allowed]
    return out


def lvis_ap(gt: dict[str, Any], dets: list[dict[str, Any]], iou_type: str = "segm",
            max_dets: int = 300) -> dict[str, Any]:
    """``{"AP", "APr", "APc", "APf", "per_category_ap"}`` of the federated LVIS protocol (module docstring)."""
    from pycocotools.cocoeval import COCOeval

    coco = coco_from_dict(gt)
    fdets = _federated_dets(coco, dets, max_dets)
    res = _load_res(coco, fdets)
    ev = COCOeval(coco, res, iou_type)
    ev.params.maxDets = [max_dets]
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.params.catIds = sorted(coco.cats)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
    nel = {img["id"]: set(img.get("not_exhaustive_category_ids", [])) for img in coco.dataset["images"]}
    n_area = len(ev.params.areaRng)
    n_img = len(ev.params.imgIds)
    for k, cid in enumerate(ev.params.catIds):
        for i, img_id in enumerate(ev.params.imgIds):
            e = ev.evalImgs[k * n_area * n_img + i]
            if e is None or cid not in nel.get(img_id, ()):
                continue
            e["dtIgnore"] = np.logical_or(e["dtIgnore"], e["dtMatches"] == 0)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, 0]  # (T, R, K)
    per = {}
    for k, cid in enumerate(ev.params.catIds):
        p = prec[:, :, k]
        p = p[p > -1]
        per[cid] = float(p.mean()) if p.size else float("nan")
    freq = {c["id"]: c.get("frequency") for c in coco.dataset["categories"]}
    out = {"AP": _nanmean(per.values())}
    for f in ("r", "c", "f"):
        out[f"AP{f}"] = _nanmean(per[c] for c in per if freq[c] == f)
    out["per_category_ap"] = per
    return out


def proposal_recall(proposals: Sequence[torch.Tensor], gt_boxes: Sequence[torch.Tensor],
                    iou: float = 0.5) -> tuple[int, int]:
    """(found, total): ground-truth boxes whose best-overlapping proposal has IoU >= ``iou``."""
    found = total = 0
    for p, g in zip(proposals, gt_boxes):
        total += len(g)
        if len(g) and len(p):
            found += int((box_iou(g.float(), p.float()).max(1).values >= iou).sum())
    return found, total


@torch.no_grad()
def oracle_region_accuracy(model: Any, images: Sequence[torch.Tensor], gt_boxes: Sequence[torch.Tensor],
                           gt_labels: Sequence[torch.Tensor]) -> tuple[int, int]:
    """(correct, total) of the CLIP branch alone on ground-truth boxes (labels = class + 1), for an
    :class:`~lastvit.detection.model.FViTDetector` in eval mode."""
    from lastvit.detection.model import region_logits

    was = model.training
    model.eval()
    il, _ = model.transform(list(images))
    _, dense = model.backbone(il.tensors, dense=True)
    scaled = []
    for b, img, s in zip(gt_boxes, images, il.image_sizes):
        r = torch.tensor([s[1] / img.shape[-1], s[0] / img.shape[-2]] * 2)
        scaled.append(b.float() * r)
    rh = model.roi_heads
    model.train(was)
    if not sum(len(b) for b in scaled):
        return 0, 0
    logits = region_logits(dense, scaled, rh.dense_stride, rh.text, rh.vlm_temperature)[:, : rh.num_classes]
    labels = torch.cat([lb.long() for lb in gt_labels]) - 1
    return int((logits.argmax(1) == labels).sum()), int(labels.numel())
