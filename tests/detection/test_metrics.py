"""AP50 of OV-COCO and the federated LVIS filter against hand-counted detections; proposal recall."""

from __future__ import annotations

import math

import pytest
import torch

from lastvit.detection.metrics import lvis_ap, ov_coco_ap50, proposal_recall


def _img(i, **kw):
    return {"id": i, "height": 100, "width": 100, **kw}


def _gt(i, img, cat, box):
    return {"id": i, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}


def _dt(img, cat, box, score):
    return {"image_id": img, "category_id": cat, "bbox": box, "score": score}


def test_ov_coco_ap50_hand_counted():
    gt = {"images": [_img(1), _img(2)],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
          "annotations": [_gt(1, 1, 1, [10, 10, 20, 20]), _gt(2, 2, 2, [50, 50, 30, 30])]}
    dets = [_dt(1, 1, [12, 12, 20, 20], 0.9),  # IoU 324 / 476 = 0.68 >= 0.5: a true positive at AP50
            _dt(2, 1, [0, 0, 10, 10], 0.95),  # a false positive ranked first
            _dt(2, 2, [50, 50, 30, 30], 0.5)]
    r = ov_coco_ap50(gt, dets, novel_ids=[2], base_ids=[1, 3])
    # category 1: [FP, TP] -> interpolated precision 1/2 at every recall point; category 3 has no GT -> nan
    assert r["per_category_ap50"][1] == pytest.approx(0.5)
    assert math.isnan(r["per_category_ap50"][3])
    assert r["base_ap50"] == pytest.approx(0.5) and r["novel_ap50"] == pytest.approx(1.0)
    assert r["all_ap50"] == pytest.approx(0.75)


def _lvis():
    cats = [{"id": 1, "name": "apple", "frequency": "f"}, {"id": 2, "name": "zither", "frequency": "r"}]
    images = [_img(1, neg_category_ids=[], not_exhaustive_category_ids=[]),
              _img(2, neg_category_ids=[1], not_exhaustive_category_ids=[]),
              _img(3, neg_category_ids=[], not_exhaustive_category_ids=[]),
              _img(4, neg_category_ids=[], not_exhaustive_category_ids=[1])]
    anns = [_gt(1, 1, 1, [10, 10, 20, 20]), _gt(2, 2, 2, [40, 40, 20, 20]), _gt(3, 4, 1, [5, 5, 30, 30])]
    dets = [_dt(1, 1, [10, 10, 20, 20], 0.9),  # TP
            _dt(2, 1, [0, 0, 10, 10], 0.95),  # FP: apple is a verified negative of image 2
            _dt(3, 1, [0, 0, 10, 10], 0.99),  # removed: apple is neither positive nor negative in image 3
            _dt(4, 1, [60, 60, 20, 20], 0.97),  # ignored: unmatched, apple is not exhaustive in image 4
            _dt(4, 1, [5, 5, 30, 30], 0.7),  # TP
            _dt(2, 2, [40, 40, 20, 20], 0.6),  # TP
            _dt(1, 2, [0, 0, 10, 10], 0.99)]  # removed: zither unverified in image 1
    return {"images": images, "annotations": anns, "categories": cats}, dets


def test_lvis_federated_filter_hand_counted():
    gt, dets = _lvis()
    r = lvis_ap(gt, dets, iou_type="bbox")
    # apple: ranked [FP .95, TP .9, TP .7] of 2 GT -> precision envelope 2/3 at every recall point and IoU
    assert r["per_category_ap"][1] == pytest.approx(2 / 3)
    assert r["per_category_ap"][2] == pytest.approx(1.0)
    assert r["APf"] == pytest.approx(2 / 3) and r["APr"] == pytest.approx(1.0) and math.isnan(r["APc"])
    assert r["AP"] == pytest.approx(5 / 6)


def test_lvis_without_federated_fields_is_plain_coco():
    gt, dets = _lvis()
    for im in gt["images"]:  # every category verified everywhere: nothing removed or ignored
        im["neg_category_ids"] = [1, 2]
        im["not_exhaustive_category_ids"] = []
    r = lvis_ap(gt, dets, iou_type="bbox")
    # apple ranked [FP .99, FP .97, FP .95, TP .9, TP .7]: precision 1/4 at recall 1/2, 2/5 at recall 1
    assert r["per_category_ap"][1] == pytest.approx(0.4)
    # zither: [FP .99 (image 1), TP .6] -> 1/2
    assert r["per_category_ap"][2] == pytest.approx(0.5)


def test_lvis_caps_detections_per_image():
    gt, dets = _lvis()
    # the cap comes first (LVIS results keep the best max_dets of an image), the federated filter after: with 1
    # per image, image 1 keeps its unverified zither (.99, then removed) and loses the apple TP; image 2 keeps the
    # apple FP (.95) and loses the zither TP; image 4 keeps the ignored detection -> no true positive is left
    r = lvis_ap(gt, dets, iou_type="bbox", max_dets=1)
    assert r["per_category_ap"][1] == 0.0 and r["per_category_ap"][2] == 0.0
    r = lvis_ap(gt, dets, iou_type="bbox", max_dets=2)  # no image has more than 2 detections
    assert r["per_category_ap"][1] == pytest.approx(2 / 3)


def test_proposal_recall():
    props = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])]
    gts = [torch.tensor([[0.0, 0.0, 10.0, 12.0], [50.0, 50.0, 60.0, 60.0], [20.0, 20.0, 40.0, 40.0]])]
    assert proposal_recall(props, gts, 0.5) == (1, 3)  # IoUs 100/120, 0, 100/400
