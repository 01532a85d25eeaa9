"""CLI end to end on tiny fixtures in the datasets' real on-disk layouts."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lastvit.cli import main

VOC_OBJ = [("cat", 8), ("dog", 12)]


def _voc(root, n=3, corrupt=True):
    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation", "ImageSets/Main"):
        (base / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = []
    for i in range(n):
        sid = f"2007_{i:06d}"
        ids.append(sid)
        h, w = 40, 56
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{sid}.jpg")
        name, cls = VOC_OBJ[i % 2]
        x0, y0, x1, y1 = 10, 8, 34, 30
        seg = np.zeros((h, w), np.uint8)
        seg[y0:y1, x0:x1] = cls
        seg[y0, x0:x1] = 255
        im = Image.fromarray(seg, mode="P")
        im.putpalette([0, 0, 0] * 256)
        im.save(base / "SegmentationClass" / f"{sid}.png")
        (base / "Annotations" / f"{sid}.xml").write_text(
            f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"<object><name>{name}</name><difficult>0</difficult><truncated>0</truncated>"
            f"<bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
            f"</object></annotation>")
    if corrupt:  # a listed image whose file is not a JPEG: skipped and counted
        sid = "2007_999999"
        ids.append(sid)
        (base / "JPEGImages" / f"{sid}.jpg").write_bytes(b"not a jpeg")
        (base / "Annotations" / f"{sid}.xml").write_text((base / "Annotations" / f"{ids[0]}.xml").read_text())
        Image.open(base / "SegmentationClass" / f"{ids[0]}.png").save(base / "SegmentationClass" / f"{sid}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit"


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return _voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory):
    from lastvit import create_model
    from lastvit.checkpoints import save_checkpoint

    torch.manual_seed(0)
    m = create_model("vit_micro_patch8_64", num_classes=4)
    p = tmp_path_factory.mktemp("ckpt") / "vit.pt"
    save_checkpoint(m, str(p))
    return p


def _read_csv(p):
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def test_discovery_cli(voc, vit_ckpt, tmp_path):
    out = tmp_path / "disc"
    rc = main(["evaluate", "discovery", "--checkpoint", str(vit_ckpt), "--dataset", "voc", "--root", str(voc),
               "--split", "trainval", "--methods", "lazystrike,lost,tokencut", "--out", str(out), "--no-progress"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["methods"]) == {"lazystrike", "lost", "tokencut"}
    assert m["methods"]["lost"]["images"] == 3 and sum(m["skipped"].values()) >= 1
    rows = _read_csv(out / "per_image.csv")
    assert [r["id"] for r in rows] == ["2007_000000", "2007_000001", "2007_000002"]
    hits = [int(r["lost_hit"]) for r in rows]
    assert m["methods"]["lost"]["corloc"] == pytest.approx(100 * sum(hits) / 3)
    assert not list(out.glob(".tmp-*"))


def test_coarse_seg_cli(voc, vit_ckpt, tmp_path):
    out = tmp_path / "coarse"
    rc = main(["evaluate", "coarse-seg", "--checkpoint", str(vit_ckpt), "--dataset", "voc", "--root", str(voc),
               "--out", str(out), "--no-progress", "--num-workers", "1"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    rows = _read_csv(out / "per_image.csv")
    assert m["images"] == 3 and len(rows) == 3 and sum(m["skipped"].values()) == 1  # the corrupt JPEG
    assert m["jaccard"] == pytest.approx(sum(float(r["jaccard"]) for r in rows) / 3)
    # gt foreground = 22x24 object minus its 24 ignore pixels, over 40x56
    assert float(rows[0]["fg_fraction_gt"]) == pytest.approx((22 * 24 - 24) / (40 * 56))


def test_coarse_seg_cli_on_a_synthetic_tree_uses_its_masks(vit_ckpt, tmp_path):
    syn = tmp_path / "syn"
    assert main(["data", "synth", "--demo", "--out", str(syn), "--splits", "test", "--size", "4"]) == 0
    out = tmp_path / "coarse"
    assert main(["evaluate", "coarse-seg", "--checkpoint", str(vit_ckpt), "--dataset", "synthetic", "--root",
                 str(syn), "--split", "test", "--out", str(out), "--no-progress"]) == 0
    rows = _read_csv(out / "per_image.csv")
    assert len(rows) == 4
    masks = {p.stem: np.asarray(Image.open(p)) > 0 for p in (syn / "Masks" / "test").glob("*.png")}
    for r in rows:
        assert float(r["fg_fraction_gt"]) == pytest.approx(float(masks[r["id"]].mean()))
    # the tree's own normalisation (SyntheticConfig: 0.5 / 0.25) is used, not ImageNet's
    norm = json.loads((out / "metrics.json").read_text())["normalisation"]
    assert norm == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert main(["evaluate", "coarse-seg", "--checkpoint", str(vit_ckpt), "--dataset", "synthetic", "--root",
                 str(syn), "--split", "test", "--out", str(tmp_path / "c2"), "--no-progress", "--mean", "0.4", "0.4",
                 "0.4"]) == 0
    assert json.loads((tmp_path / "c2" / "metrics.json").read_text())["normalisation"]["mean"] == [0.4] * 3


def test_zeroshot_seg_cli_voc21(voc, tmp_path):
    from lastvit.checkpoints.clip import save_clip
    from lastvit.models.clip import CLIP

    torch.manual_seed(0)
    clip = CLIP("vit_micro_patch8_64", text=dict(context_length=16, vocab_size=64, width=32, heads=2, layers=1),
                embed_dim=16)
    ck = tmp_path / "clip.pt"
    save_clip(clip, ck)
    out = tmp_path / "zs"
    tpl = tmp_path / "templates.txt"
    tpl.write_text("a photo of a {}.\nthe {}.\n")
    rc = main(["evaluate", "zeroshot-seg", "--checkpoint", str(ck), "--dataset", "voc21", "--root", str(voc),
               "--variant", "naclip", "--templates", str(tpl), "--short-side", "48", "--crop", "32",
               "--stride", "16", "--limit", "1", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    pc = _read_csv(out / "per_class.csv")
    assert len(pc) == 21 and pc[0]["class"] == "background" and pc[8]["class"] == "cat"  # issue 17.6: not "sky"
    assert m["images"] == 1 and m["effective"]["logit_scale"] == 65.0 and m["effective"]["variant"] == "naclip"
    assert m["pixels"] == 40 * 56 - 24  # the 24 boundary (255) pixels are ignored


def test_zeroshot_seg_cli_on_a_synthetic_tree(tmp_path):
    from lastvit.checkpoints.clip import save_clip
    from lastvit.models.clip import CLIP

    syn = tmp_path / "syn"
    assert main(["data", "synth", "--demo", "--out", str(syn), "--splits", "test", "--size", "3"]) == 0
    classes = (syn / "classes.txt").read_text().split()
    assert (syn / "seg_classes.txt").read_text().split() == ["background", *classes]
    for img in (syn / "test").rglob("*.png"):  # class map = (class index + 1) on the object mask, 0 elsewhere
        seg = np.asarray(Image.open(syn / "Segmentation" / img.relative_to(syn)))
        mask = np.asarray(Image.open(syn / "Masks" / "test" / img.name)) > 0
        assert set(np.unique(seg[mask])) == {classes.index(img.parent.name) + 1} and not seg[~mask].any()
    torch.manual_seed(0)
    clip = CLIP("vit_micro_patch8_64", text=dict(context_length=16, vocab_size=64, width=32, heads=2, layers=1),
                embed_dim=16)
    save_clip(clip, tmp_path / "clip.pt")
    out = tmp_path / "zs"
    assert main(["evaluate", "zeroshot-seg", "--checkpoint", str(tmp_path / "clip.pt"), "--dataset", "seg",
                 "--root", str(syn), "--img-dir", "test", "--ann-dir", "Segmentation/test", "--img-suffix", ".png",
                 "--classnames", str(syn / "seg_classes.txt"), "--background", "--prob-thd", "0.2",
                 "--templates", "plain", "--short-side", "0", "--crop", "64", "--stride", "32", "--out", str(out),
                 "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["images"] == 3 and m["pixels"] == 3 * 64 * 64
    assert [r["class"] for r in _read_csv(out / "per_class.csv")] == ["background", *classes]


def test_classify_cli_head_and_probes(tmp_path, vit_ckpt):
    from lastvit.data import SyntheticConfig, SyntheticDataset, write_imagefolder

    cfg = SyntheticConfig(image_size=32, num_classes=4)
    root = tmp_path / "syn"
    write_imagefolder(SyntheticDataset(cfg, split="train", size=12, seed=0), root)
    write_imagefolder(SyntheticDataset(cfg, split="val", size=8, seed=1), root)
    out = tmp_path / "cls"
    rc = main(["evaluate", "classify", "--checkpoint", str(vit_ckpt), "--dataset", "synthetic", "--root", str(root),
               "--split", "val", "--train-split", "train", "--modes", "knn,linear", "--image-size", "32",
               "--resize", "32", "--epochs", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["train_images"] == 12 and m["test_images"] == 8
    assert 0.0 <= m["knn"]["top1"] <= 100.0 and 0.0 <= m["linear"]["top1"] <= 100.0


def test_cli_errors_are_one_line(tmp_path, capsys, voc):
    rc = main(["evaluate", "discovery", "--checkpoint", str(tmp_path / "nope.pt"), "--dataset", "voc",
               "--root", str(voc), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.pt" in err[0]


def _coco2014(root, bboxes, crowd, seed):
    """A COCO train2014 tree: one 48x40 image per box, box i crowd when crowd[i]."""
    (root / "train2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i, (bbox, c) in enumerate(zip(bboxes, crowd)):
        fn = f"COCO_train2014_{i:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "train2014" / fn)
        images.append({"id": i + 1, "file_name": fn, "width": 48, "height": 40})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": bbox, "area": 600,
                     "iscrowd": int(c), "segmentation": [[4, 4, 34, 4, 34, 24, 4, 24]]})
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    return root


def test_discovery_cli_coco20k_image_list(tmp_path, vit_ckpt):
    root = _coco2014(tmp_path / "coco", [[4, 4, 30, 20]] * 3, [0, 0, 0], seed=1)
    lst = tmp_path / "coco_20k_filenames.txt"
    lst.write_text("train2014/COCO_train2014_000000000000.jpg\ntrain2014/COCO_train2014_000000000002.jpg\n")
    out = tmp_path / "c20k"
    rc = main(["evaluate", "discovery", "--checkpoint", str(vit_ckpt), "--dataset", "coco", "--root", str(root),
               "--split", "train2014", "--image-list", str(lst), "--methods", "lazystrike-largest,lost",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    rows = _read_csv(out / "per_image.csv")
    assert [r["id"] for r in rows] == ["1", "3"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["methods"]["lost"]["images"] == 2


def test_discovery_cli_coco_defaults_to_the_lost_protocol(tmp_path, vit_ckpt):
    # COCO20k as LOST scores it: a crowd-only image stays in CorLoc's denominator as a miss; --coco-protocol float
    # keeps the previous behaviour (the image is left out)
    root = _coco2014(tmp_path / "coco", [[4.5, 4, 30, 20]] * 2, [0, 1], seed=2)
    counts = {}
    for proto in (None, "float"):
        out = tmp_path / f"run_{proto}"
        extra = ["--coco-protocol", proto] if proto else []
        rc = main(["evaluate", "discovery", "--checkpoint", str(vit_ckpt), "--dataset", "coco", "--root", str(root),
                   "--split", "train2014", "--methods", "lazystrike", "--out", str(out), "--no-progress", *extra])
        assert rc == 0
        rows = _read_csv(out / "per_image.csv")
        counts[proto] = [r["id"] for r in rows]
        if proto is None:
            assert rows[1]["lazystrike_hit"] == "0"  # the crowd-only image is a miss
            assert rows[0]["lazystrike_box"] and json.loads((out / "metrics.json").read_text())[
                "methods"]["lazystrike"]["images"] == 2
    assert counts == {None: ["1", "2"], "float": ["1"]}


def test_zeroshot_seg_cli_mmseg_layout_reduce_zero(tmp_path):
    from lastvit.checkpoints.clip import save_clip
    from lastvit.models.clip import CLIP

    root = tmp_path / "ade"
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
            root / "images" / "validation" / f"ADE_val_{i:08d}.jpg")
        lab = np.zeros((24, 32), np.uint8)
        lab[:, 16:] = 1 + i  # 0 = "other" -> ignore after reduce-zero; 1, 2 -> classes 0, 1
        Image.fromarray(lab, mode="L").save(root / "annotations" / "validation" / f"ADE_val_{i:08d}.png")
    names = tmp_path / "names.txt"
    names.write_text("wall\nbuilding, edifice\n")
    torch.manual_seed(0)
    clip = CLIP("vit_micro_patch8_64", text=dict(context_length=16, vocab_size=64, width=32, heads=2, layers=1),
                embed_dim=16)
    ck = tmp_path / "clip.pt"
    save_clip(clip, ck)
    out = tmp_path / "zs"
    rc = main(["evaluate", "zeroshot-seg", "--checkpoint", str(ck), "--dataset", "seg", "--root", str(root),
               "--img-dir", "images/validation", "--ann-dir", "annotations/validation", "--classnames", str(names),
               "--reduce-zero-label", "--templates", "plain", "--short-side", "0", "--crop", "16", "--stride", "8",
               "--variant", "clearclip", "--out", str(out), "--no-progress"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["images"] == 2 and m["pixels"] == 2 * 24 * 16  # the left halves (label 0) are ignored
    assert [r["class"] for r in m["per_class"]] == ["wall", "building"]


def test_coarse_seg_cli_seg_layout_both_protocols_and_strict_json(vit_ckpt, tmp_path):
    """--dataset seg reads --img-dir / --ann-dir; both protocols are reported; a NaN (no objects anywhere) is
    written as null with its reason, never as a bare NaN."""
    root = tmp_path / "segtree"
    (root / "imgs").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(root / "imgs" / f"im{i}.jpg")
        Image.fromarray(np.zeros((32, 40), np.uint8), mode="L").save(root / "labels" / f"im{i}.png")  # background
    out = tmp_path / "coarse"
    assert main(["evaluate", "coarse-seg", "--checkpoint", str(vit_ckpt), "--dataset", "seg", "--root", str(root),
                 "--img-dir", "imgs", "--ann-dir", "labels", "--out", str(out), "--no-progress"]) == 0

    def refuse(name):
        raise AssertionError(f"bare {name} in metrics.json")

    m = json.loads((out / "metrics.json").read_text(), parse_constant=refuse)
    assert m["images"] == 2 and m["objects"] == 0
    assert {"per_image", "per_object"} <= set(m["protocols"])
    assert m["jaccard_per_object"] is None and m["jaccard_per_object_null_reason"] == "nan"
    assert m["protocols"]["per_object"] is None and m["protocols"]["per_object_null_reason"] == "nan"
    assert m["load_report"]["format"] == "lastvit"
    assert all(r["jaccard_per_object"] == "" for r in _read_csv(out / "per_image.csv"))


def test_coarse_seg_cli_layout_flags_need_dataset_seg(voc, vit_ckpt, tmp_path, capsys):
    rc = main(["evaluate", "coarse-seg", "--checkpoint", str(vit_ckpt), "--dataset", "voc", "--root", str(voc),
               "--img-dir", "x", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--img-dir" in err[0]


@pytest.mark.parametrize("case", ["no_categories", "no_file_name"])
def test_discovery_cli_bad_coco_json_is_one_line(tmp_path, vit_ckpt, capsys, case):
    root = tmp_path / "coco"
    (root / "train2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "train2014" / "a.jpg")
    img = {"id": 1, "file_name": "a.jpg", "width": 16, "height": 16}
    d = {"images": [img], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8],
                                           "area": 64, "iscrowd": 0}],
         "categories": [{"id": 1, "name": "thing"}]}
    if case == "no_categories":
        del d["categories"]
    else:
        del img["file_name"]
    ann = root / "annotations" / "instances_train2014.json"
    ann.write_text(json.dumps(d))
    rc = main(["evaluate", "discovery", "--checkpoint", str(vit_ckpt), "--dataset", "coco", "--root", str(root),
               "--split", "train2014", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "instances_train2014.json" in err[0], err


def test_coarse_seg_cli_zero_images_is_an_error_naming_where_it_looked(vit_ckpt, tmp_path, capsys):
    root = tmp_path / "emptytree"
    (root / "imgs").mkdir(parents=True)
    (root / "labels").mkdir()
    rc = main(["evaluate", "coarse-seg", "--checkpoint", str(vit_ckpt), "--dataset", "seg", "--root", str(root),
               "--img-dir", "imgs", "--ann-dir", "labels", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "imgs" in err[0], err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_zeroshot_seg_cli_synthetic_preset_and_pamr(tmp_path):
    """A synthetic tree needs only --dataset synthetic (the preset fills layout, classes and labels);
    --pamr-steps reaches the evaluator."""
    from lastvit.checkpoints.clip import save_clip
    from lastvit.models.clip import CLIP

    syn = tmp_path / "syn"
    assert main(["data", "synth", "--demo", "--out", str(syn), "--splits", "test", "--size", "2"]) == 0
    torch.manual_seed(0)
    clip = CLIP("vit_micro_patch8_64", text=dict(context_length=16, vocab_size=64, width=32, heads=2, layers=1),
                embed_dim=16)
    save_clip(clip, tmp_path / "clip.pt")
    out = tmp_path / "zs"
    assert main(["evaluate", "zeroshot-seg", "--checkpoint", str(tmp_path / "clip.pt"), "--dataset", "synthetic",
                 "--root", str(syn), "--templates", "plain", "--crop", "64", "--stride", "32", "--pamr-steps", "1",
                 "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    classes = (syn / "classes.txt").read_text().split()
    assert m["images"] == 2 and m["effective"]["pamr_steps"] == 1
    assert [r["class"] for r in m["per_class"]] == classes  # objects only: background is ignored
    masks = [np.asarray(Image.open(p)) > 0 for p in sorted((syn / "Masks" / "test").glob("*.png"))]
    assert m["pixels"] == sum(int(k.sum()) for k in masks)
    assert m["load_report"]["format"] == "lastvit" and m["normalisation_source"] == "synthetic tree"
