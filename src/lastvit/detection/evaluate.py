"""Evaluate a trained F-ViT on a COCO/LVIS JSON set: every OV number in one pass over the images.

``evaluate_ovdet(model, ann_file, image_root)`` returns (fractions, not %):

* ``novel_ap50`` / ``base_ap50`` / ``all_ap50``: OV-COCO box AP50 (:func:`~lastvit.detection.metrics.ov_coco_ap50`);
* with a mask head: ``mask_AP`` / ``mask_APr`` / ``mask_APc`` / ``mask_APf`` (federated LVIS,
  :func:`~lastvit.detection.metrics.lvis_ap`; categories without ``frequency`` count as ``f``) and
  ``novel_mask_ap`` (the mean mask AP of the novel categories);
* ``novel_rpn_recall``: the fraction of novel ground-truth boxes with a proposal of IoU >= 0.5 (the RPN's
  post-NMS test proposals);
* ``oracle_box_accuracy`` (novel objects) and ``oracle_box_accuracy_all``: the frozen CLIP branch alone on the
  ground-truth boxes, top-1 over the vocabulary.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from lastvit.detection.data import CocoDetection
from lastvit.detection.metrics import lvis_ap, oracle_region_accuracy, ov_coco_ap50, proposal_recall

__all__ = ["detections_to_coco", "evaluate_ovdet", "predict"]


def detections_to_coco(det: dict[str, torch.Tensor], image_id: Any, label_to_cat: dict[int, int],
                       masks: bool = False) -> list[dict[str, Any]]:
    """COCO result entries (xywh boxes; RLE masks at threshold 0.5 with ``masks``) of one image."""
    out = []
    b = det["boxes"].detach().cpu().float()
    rles = None
    if masks and "masks" in det:
        import numpy as np
        from pycocotools import mask as mask_utils

        m = (det["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
        rles = [mask_utils.encode(np.asfortranarray(x)) for x in m]
        for r in rles:
            r["counts"] = r["counts"].decode()
    for i, (box, s, lab) in enumerate(zip(b.tolist(), det["scores"].tolist(), det["labels"].tolist())):
        e = {"image_id": image_id, "category_id": label_to_cat[int(lab)],
             "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": float(s)}
        if rles is not None:
            e["segmentation"] = rles[i]
        out.append(e)
    return out


@torch.no_grad()
def predict(model: Any, ds: CocoDetection, batch_size: int = 16, max_images: int | None = None) -> dict[str, Any]:
    """Detections (COCO results), proposals and oracle counts over ``ds``."""

    model.eval()
    n = len(ds) if max_images is None else min(len(ds), int(max_images))
    masks = bool(model.config.get("masks"))
    dets: list[dict[str, Any]] = []
    novel = model.roi_heads.novel
    found = total = 0
    oc = ot = ocn = otn = 0
    per_image = []
    for s in range(0, n, batch_size):
        items = [ds[i] for i in range(s, min(n, s + batch_size))]
        images = [it[0] for it in items]
        targets = [it[1] for it in items]
        out, props = model(images, return_proposals=True)
        for d, t, p in zip(out, targets, props):
            dets += detections_to_coco(d, int(t["image_id"]), ds.label_to_cat, masks=masks)
            is_novel = novel[(t["labels"] - 1).clamp_min(0)] if len(t["labels"]) else t["labels"].bool()
            f, tt = proposal_recall([p], [t["boxes"][is_novel]])
            found, total = found + f, total + tt
            per_image.append({k: v.cpu() for k, v in d.items() if k != "masks"})
        c, tt = oracle_region_accuracy(model, images, [t["boxes"] for t in targets], [t["labels"] for t in targets])
        oc, ot = oc + c, ot + tt
        nb = [t["boxes"][novel[t["labels"] - 1]] if len(t["labels"]) else t["boxes"] for t in targets]
        nl = [t["labels"][novel[t["labels"] - 1]] if len(t["labels"]) else t["labels"] for t in targets]
        c, tt = oracle_region_accuracy(model, images, nb, nl)
        ocn, otn = ocn + c, otn + tt
    return {"dets": dets, "n": n, "rpn": (found, total), "oracle": (oc, ot), "oracle_novel": (ocn, otn),
            "per_image": per_image}


def evaluate_ovdet(model: Any, ann_file: str | os.PathLike, image_root: str | os.PathLike, *, batch_size: int = 16,
                   max_images: int | None = None, return_predictions: bool = False) -> dict[str, Any]:
    """Every OV metric of ``model`` on the set (module docstring)."""
    ds = CocoDetection(ann_file, image_root, classes=model.class_names)
    pred = predict(model, ds, batch_size, max_images)
    keep = {im["id"] for im in ds.images[: pred["n"]]}
    gt = {**ds.data, "images": [im for im in ds.data["images"] if im["id"] in keep],
          "annotations": [a for a in ds.data["annotations"] if a["image_id"] in keep]}
    flags = model.roi_heads.novel.tolist()
    novel_ids = [ds.label_to_cat[i + 1] for i, f in enumerate(flags) if f]
    base_ids = [ds.label_to_cat[i + 1] for i, f in enumerate(flags) if not f]
    box = ov_coco_ap50(gt, pred["dets"], novel_ids, base_ids)
    res: dict[str, Any] = {"novel_ap50": box["novel_ap50"], "base_ap50": box["base_ap50"],
                           "all_ap50": box["all_ap50"]}
    if model.config.get("masks"):
        g2 = {**gt, "categories": [{**c, "frequency": c.get("frequency", "f")} for c in gt["categories"]]}
        m = lvis_ap(g2, pred["dets"], iou_type="segm")
        res.update({f"mask_{k}": m[k] for k in ("AP", "APr", "APc", "APf")})
        vals = [m["per_category_ap"][c] for c in novel_ids if not np.isnan(m["per_category_ap"][c])]
        res["novel_mask_ap"] = float(np.mean(vals)) if vals else float("nan")
    f, t = pred["rpn"]
    res["novel_rpn_recall"] = f / t if t else float("nan")
    c, t = pred["oracle_novel"]
    res["oracle_box_accuracy"] = c / t if t else float("nan")
    c, t = pred["oracle"]
    res["oracle_box_accuracy_all"] = c / t if t else float("nan")
    res["images"] = pred["n"]
    if return_predictions:
        res["_predictions"] = pred
    return res
