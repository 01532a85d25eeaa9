"""Split makers on tiny COCO / LVIS JSON files (exact kept / dropped counts), the dataset and large-scale jitter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lastvit.detection.data import CocoDetection, LargeScaleJitter, image_path
from lastvit.detection.splits import OV_COCO_FILES, OV_LVIS_FILES, make_ov_coco_split, make_ov_lvis_split
from lastvit.detection.text import read_names


def _coco(tmp_path):
    names = read_names("coco_base") + read_names("coco_novel") + ["hair drier", "traffic light"]
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    cid = {n: i + 1 for i, n in enumerate(names)}
    images = [{"id": i, "file_name": f"{i:03d}.png", "height": 32, "width": 48} for i in (1, 2, 3, 4)]

    def ann(i, img, name, crowd=0):
        return {"id": i, "image_id": img, "category_id": cid[name], "bbox": [2, 3, 10, 8], "area": 80.0,
                "iscrowd": crowd}

    anns = [ann(1, 1, "person"), ann(2, 1, "bus"), ann(3, 2, "bus"), ann(4, 3, "hair drier"), ann(5, 4, "car"),
            ann(6, 4, "hair drier"), ann(7, 4, "car", crowd=1)]
    data = {"info": {"v": 1}, "images": images, "annotations": anns, "categories": cats}
    p = tmp_path / "instances.json"
    p.write_text(json.dumps(data))
    return p, data


def test_ov_coco_split_counts(tmp_path):
    p, _ = _coco(tmp_path)
    counts = make_ov_coco_split(p, p, tmp_path / "out")
    tr, va = counts[OV_COCO_FILES[0]], counts[OV_COCO_FILES[1]]
    assert tr == {"images_kept": 2, "images_dropped": 2, "annotations_kept": 3, "annotations_dropped": 4,
                  "categories": 65}
    assert va == {"images_kept": 3, "images_dropped": 1, "annotations_kept": 5, "annotations_dropped": 2,
                  "categories": 65}
    train = json.loads((tmp_path / "out" / OV_COCO_FILES[0]).read_text())
    assert sorted(a["id"] for a in train["annotations"]) == [1, 5, 7]
    assert sorted(im["id"] for im in train["images"]) == [1, 4]
    assert train["info"] == {"v": 1}
    val = json.loads((tmp_path / "out" / OV_COCO_FILES[1]).read_text())
    assert sorted(im["id"] for im in val["images"]) == [1, 2, 4]


def test_ov_lvis_split_counts(tmp_path):
    cats = [{"id": 1, "name": "apple", "frequency": "f"}, {"id": 2, "name": "bagel", "frequency": "c"},
            {"id": 3, "name": "zither", "frequency": "r"}]
    images = [{"id": i, "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg", "height": 8,
               "width": 8, "neg_category_ids": [], "not_exhaustive_category_ids": []} for i in (1, 2, 3)]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 2, 2]},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 2, 2]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 2, 2]},
            {"id": 4, "image_id": 3, "category_id": 2, "bbox": [0, 0, 2, 2]}]
    p = tmp_path / "lvis_v1_train.json"
    p.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    counts = make_ov_lvis_split(p, tmp_path / "out")[OV_LVIS_FILES[0]]
    assert counts == {"images_kept": 3, "annotations_kept": 2, "annotations_dropped": 2, "categories": 3,
                      "rare_categories": 1}
    info = json.loads((tmp_path / "out" / OV_LVIS_FILES[1]).read_text())
    assert [(c["id"], c["image_count"], c["instance_count"]) for c in info] == [(1, 1, 1), (2, 1, 1), (3, 0, 0)]
    assert image_path(images[0], "/data/coco").as_posix() == "/data/coco/train2017/000000000001.jpg"


def test_malformed_annotation_names_file(tmp_path):
    p, data = _coco(tmp_path)
    data["annotations"][2]["bbox"] = [1, 2, 3]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad\.json: annotation 3 has a malformed bbox"):
        make_ov_coco_split(bad, p, tmp_path / "o")
    data["annotations"][2]["bbox"] = [1, 2, 3, 4]
    data["annotations"][2]["category_id"] = 999
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad\.json: annotation 3 refers to unknown category 999"):
        CocoDetection(bad, tmp_path)
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_dataset_targets_masks_skips_and_missing_image(tmp_path):
    from PIL import Image
    from pycocotools import mask as mask_utils

    p, data = _coco(tmp_path)
    m = np.zeros((32, 48), np.uint8, order="F")
    m[3:11, 2:12] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    for a in data["annotations"]:
        a["segmentation"] = rle
    p.write_text(json.dumps(data))
    for i in (1, 4):
        Image.fromarray(np.full((32, 48, 3), 100, np.uint8)).save(tmp_path / f"{i:03d}.png")
    ds = CocoDetection(p, tmp_path, classes=["person", "car", "bus"], masks=True, filter_empty=True)
    # crowd a7 skipped; hair drier (a4, a6) out of the vocabulary; image 3 has nothing left
    assert ds.skipped == {"crowd": 1, "tiny_box": 0, "out_of_vocabulary": 2, "empty_images": 1}
    assert [im["id"] for im in ds.images] == [1, 2, 4]
    img, t = ds[0]
    assert img.shape == (3, 32, 48) and img.max() == pytest.approx(100 / 255)
    assert t["labels"].tolist() == [1, 3]
    torch.testing.assert_close(t["boxes"][0], torch.tensor([2.0, 3.0, 12.0, 11.0]))
    assert t["masks"].shape == (2, 32, 48) and int(t["masks"][0].sum()) == 80
    with pytest.raises(FileNotFoundError, match=r"002\.png: image 2 of .*instances\.json is missing"):
        ds[1]


def test_large_scale_jitter_hand_cases():
    img = torch.rand(3, 32, 64)
    t = {"boxes": torch.tensor([[4.0, 2.0, 20.0, 10.0]]), "labels": torch.tensor([2]),
         "masks": torch.zeros(1, 32, 64, dtype=torch.uint8)}
    out_img, out = LargeScaleJitter(64, 1.0, 1.0, flip=0.0, seed=0)(img, t)
    torch.testing.assert_close(out_img, img)
    torch.testing.assert_close(out["boxes"], t["boxes"])
    _, out = LargeScaleJitter(64, 1.0, 1.0, flip=1.0, seed=0)(img, t)
    torch.testing.assert_close(out["boxes"], torch.tensor([[44.0, 2.0, 60.0, 10.0]]))
    small, out = LargeScaleJitter(64, 0.5, 0.5, flip=0.0, seed=0)(img, t)
    assert small.shape == (3, 16, 32) and out["masks"].shape == (1, 16, 32)
    torch.testing.assert_close(out["boxes"], torch.tensor([[2.0, 1.0, 10.0, 5.0]]))
    # x2: the 64 x 128 image is cropped to 64 x 64; a box outside the crop is dropped, others are clipped
    big, out = LargeScaleJitter(64, 2.0, 2.0, flip=0.0, seed=0)(img, t)
    assert big.shape == (3, 64, 64)
    assert len(out["boxes"]) in (0, 1) and bool((out["boxes"] >= 0).all() and (out["boxes"] <= 64).all())
