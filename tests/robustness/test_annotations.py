"""Bad annotations in their real formats (PASCAL/ILSVRC XML, COCO JSON, PNG masks and label maps): processed
(clipped) or skipped and counted once with the reason; a file the reader cannot use at all is one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.robustness.corpus import coco_json, voc_xml

from lastvit.cli import main
from lastvit.data import DataError, build_eval_dataset


def _jpg(path: Path, w: int = 40, h: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 140, 30)).save(path, "JPEG")


@pytest.fixture()
def voc(tmp_path: Path) -> Path:
    base = tmp_path / "VOC2012"
    cases = {
        "good": voc_xml(40, 30, [("dog", (5, 5, 20, 20))]),
        "malformed": "<annotation><object><name>dog</name><bndbox><xmin>1",
        "no_object": voc_xml(40, 30, []),
        "outside": voc_xml(40, 30, [("cat", (-10, -5, 60, 50))]),  # clipped to the image
        "degenerate": voc_xml(40, 30, [("cat", (5, 5, 30, 25)), ("dog", (10, 10, 9, 20)),  # zero width, 1-based
                                       ("dog", (20, 20, 15, 10))]),  # negative area
        "unknown_class": voc_xml(40, 30, [("dragon", (1, 1, 9, 9))]),
        "no_bndbox": "<annotation><size><width>40</width><height>30</height></size><object><name>dog</name>"
                     "</object></annotation>",
        "not_numeric": voc_xml(40, 30, [("dog", ("a", 1, 2, 3))]),
        "missing_xml": None,
        "bad_seg": voc_xml(40, 30, [("dog", (5, 5, 20, 20))]),
    }
    for sid, xml in cases.items():
        _jpg(base / "JPEGImages" / f"{sid}.jpg")
        if xml is not None:
            (base / "Annotations").mkdir(parents=True, exist_ok=True)
            (base / "Annotations" / f"{sid}.xml").write_text(xml)
        lab = np.zeros((30, 40) if sid != "bad_seg" else (31, 40), np.uint8)  # bad_seg: the wrong size
        lab[5:20, 5:20] = 12
        (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        Image.fromarray(lab, mode="L").convert("P").save(base / "SegmentationClass" / f"{sid}.png")
    for kind in ("Main", "Segmentation"):
        (base / "ImageSets" / kind).mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / kind / "val.txt").write_text("\n".join(cases) + "\n")
    return tmp_path


def test_voc_annotations_clipped_or_counted(voc: Path):
    ds = build_eval_dataset("voc", voc, image_size=None, imageset="Main", load_seg=False)
    assert dict(ds.skipped) == {"malformed annotation": 3, "no objects": 1, "unknown VOC class": 1,
                                "missing annotation": 1}
    ids = [r["id"] for r in ds.records]
    assert ids == ["good", "outside", "degenerate", "bad_seg"]
    out = ds[ids.index("outside")]
    assert torch.equal(out["boxes"], torch.tensor([[0.0, 0.0, 40.0, 30.0]]))  # clipped to the 40x30 image
    deg = ds[ids.index("degenerate")]
    assert deg["boxes"].shape == (1, 4) and deg["box_labels"] == [7]  # the two empty boxes dropped
    ds[ids.index("degenerate")]  # read again: counted once
    assert ds.fixed["empty box dropped after clipping"] == 2


def test_voc_label_map_of_the_wrong_size_is_skipped_at_read(voc: Path):
    ds = build_eval_dataset("voc", voc, image_size=None, imageset="Segmentation")
    bad = [r["id"] for r in ds.records].index("bad_seg")
    assert ds[bad] is None and ds[bad] is None
    assert ds.skipped["bad annotation file"] == 1
    assert any("bad_seg.png: label map is 40x31, image is 40x30" in e for e in ds.extra["errors"])
    good = ds[[r["id"] for r in ds.records].index("good")]
    assert good["seg"].shape == (30, 40) and int(good["seg"].max()) == 12


def _coco(tmp_path: Path, text: str, files=("1.jpg", "2.jpg")) -> Path:
    root = tmp_path / "coco"
    for f in files:
        _jpg(root / "val2017" / f)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_val2017.json").write_text(text)
    return root


IMAGES = [{"id": 1, "file_name": "1.jpg", "width": 40, "height": 30},
          {"id": 2, "file_name": "2.jpg", "width": 40, "height": 30}]
CATS = [{"id": 1, "name": "dog"}, {"id": 3, "name": "cat"}]


@pytest.mark.parametrize("case,problem", [
    ("no_categories", "'categories' is missing"),
    ("no_images", "'images' is missing"),
    ("no_file_name", "image 2 has no 'file_name'"),
    ("not_json", "malformed COCO annotation file"),
    ("a_list", "not a JSON object"),
])
def test_coco_file_lastvit_cannot_use_is_one_line(tmp_path: Path, case: str, problem: str, capsys):
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}]
    images = [dict(i) for i in IMAGES]
    if case == "no_file_name":
        images[1].pop("file_name")
    text = {"no_categories": coco_json(IMAGES, anns, None),
            "no_images": coco_json(IMAGES, anns, CATS, drop=("images",)),
            "no_file_name": coco_json(images, anns, CATS), "not_json": '{"images": [', "a_list": "[1, 2]"}[case]
    root = _coco(tmp_path, text)
    ann = root / "annotations" / "instances_val2017.json"
    with pytest.raises(DataError, match=problem):
        build_eval_dataset("coco", root)
    rc = main(["data", "check", "coco", "--root", str(root)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith(f"lastvit data check: error: {ann}: ") and problem.split("'")[0] in err[0]


def test_coco_bad_boxes_and_labels_beyond_the_categories(tmp_path: Path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 50, 50], "area": 1, "iscrowd": 0},  # outside
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0},  # zero width
        {"id": 3, "image_id": 1, "category_id": 99, "bbox": [2, 2, 4, 4], "area": 16, "iscrowd": 0},  # no such cat
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [1, 2, 3], "area": 1, "iscrowd": 0},  # 3 numbers
    ]
    root = _coco(tmp_path, coco_json(IMAGES, anns, CATS))
    ds = build_eval_dataset("coco", root, image_size=None, masks=False)
    assert ds.classes == ["dog", "cat"] and [r["id"] for r in ds.records] == ["1"]
    assert ds.skipped == {"malformed annotation": 1,
                          "annotation with a category_id not in categories (label -1)": 1}
    s = ds[0]
    assert torch.equal(s["boxes"], torch.tensor([[30.0, 20.0, 40.0, 30.0], [2.0, 2.0, 6.0, 6.0]]))
    assert s["box_labels"] == [0, -1]
    assert ds.fixed["empty box dropped after clipping"] == 1


def test_masks_of_the_wrong_size_and_labels_beyond_the_classes(tmp_path: Path):
    root = tmp_path / "seg"
    for stem, shape, top in (("a", (30, 40), 2), ("b", (30, 40), 7), ("c", (20, 40), 1)):
        _jpg(root / "images" / f"{stem}.jpg")
        lab = np.zeros(shape, np.uint8)
        lab[:10] = top
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        Image.fromarray(lab).save(root / "annotations" / f"{stem}.png")
    ds = build_eval_dataset("seg", root, image_size=None, classes=["sky", "road", "car"])
    samples = [ds[i] for i in range(3)] + [ds[1]]
    assert samples[2] is None and ds.skipped == {"bad annotation file": 1}  # c: label map 40x20, image 40x30
    assert int(samples[1]["seg"].max()) == 7  # label 7 of 3 classes: kept, and counted once
    assert ds.fixed == {"segmentation label beyond the class count (kept as is)": 1}
