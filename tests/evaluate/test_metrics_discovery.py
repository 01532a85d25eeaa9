import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from lastvit import create_model
from lastvit.data.readers import build_eval_dataset
from lastvit.evaluate.discovery import (
    COCO_PROTOCOLS,
    EIG_SOLVERS,
    coco_reader_options,
    component_box,
    discover,
    fiedler_vector,
    lazystrike_box,
    lost_box,
    tokencut_box,
)
from lastvit.evaluate.metrics import SegConfusion, box_iou, corloc_hits


def test_miou_hand_computed_with_ignore_and_absent_class():
    gt = torch.tensor([[0, 0, 1, 1], [0, 255, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 3, 1, 0]])
    m = SegConfusion(4)
    m.update(pred, gt)
    r = m.compute()
    # class 0: TP 2 (pixels (0,0),(1,0)), FP 1 (pixel (1,3)), FN 1 (pixel (0,1)) -> 2/4
    # class 1: TP 3, FP 1, FN 1 -> 3/5; class 2 absent everywhere -> NaN (excluded); class 3 only at ignore -> NaN
    assert r["IoU"][0] == 50.0 and abs(r["IoU"][1] - 60.0) < 1e-9
    assert math.isnan(r["IoU"][2]) and math.isnan(r["IoU"][3])
    assert abs(r["mIoU"] - 55.0) < 1e-9
    assert r["pixels"] == 7 and abs(r["aAcc"] - 500 / 7) < 1e-9
    # a class predicted but absent from the GT counts as 0
    m2 = SegConfusion(3)
    m2.update(torch.tensor([2, 1]), torch.tensor([1, 1]))
    r2 = m2.compute()
    assert r2["IoU"][2] == 0.0 and abs(r2["mIoU"] - 25.0) < 1e-9


def test_box_iou_and_corloc():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    torch.testing.assert_close(box_iou(a, b)[0], torch.tensor([50 / 150, 1.0, 0.0], dtype=torch.float64))
    preds = [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]]
    gts = [[[5, 0, 15, 10]], [[20, 20, 30, 30], [0, 0, 9, 10]], []]
    assert corloc_hits(preds, gts) == [False, True, False]


def test_component_box_connectivity_and_largest():
    m = np.zeros((5, 6), bool)
    m[0, 0] = m[1, 1] = True  # diagonal neighbours
    m[3:5, 2:6] = True
    box4, _ = component_box(m, (0, 0), patch_size=16)
    box8, _ = component_box(m, (0, 0), patch_size=16, connectivity=8)
    assert box4 == [0, 0, 16, 16] and box8 == [0, 0, 32, 32]
    big, _ = component_box(m, (0, 0), patch_size=16, component="largest", image_size=(70, 90))
    assert big == [32, 48, 90, 70]  # x1 = 96 clipped to width 90, y1 = 80 clipped to height 70


def test_lazystrike_rule_box():
    s = torch.zeros(6, 6)
    s[1:3, 1:4] = 1.0
    s[2, 2] = 2.0
    s[5, 5] = 1.0  # a separate blob, not holding the top patch
    box, comp = lazystrike_box(s, patch_size=8)
    assert box == [8, 8, 32, 24] and comp.sum() == 6
    box_l, _ = lazystrike_box(s, 8, component="largest")
    assert box_l == box


def test_lost_on_constructed_affinity():
    # 3x3 grid; patches 0,1,3 form the object (positively correlated only among themselves),
    # background patches are all positively correlated with each other.
    n = 9
    obj = [0, 1, 3]
    bg = [i for i in range(n) if i not in obj]
    A = -torch.ones(n, n, dtype=torch.float64)
    for g in (obj, bg):
        for i in g:
            for j in g:
                A[i, j] = 1.0
    box, d = lost_box(None, (3, 3), patch_size=10, affinity=A, k_patches=3)
    # degrees: object patches 2, background 5 -> seed = lowest-index lowest-degree patch = 0
    assert d["seed"] == 0
    assert d["degree"].tolist() == [2, 2, 5, 2, 5, 5, 5, 5, 5]
    assert sorted(d["similars"]) == [0, 1, 3]
    assert box == [0, 0, 20, 20]


def test_tokencut_two_clusters():
    g = torch.Generator().manual_seed(0)
    h, w = 4, 4
    fg = torch.zeros(h, w, dtype=torch.bool)
    fg[1:3, 0:2] = True
    a, b = torch.zeros(8), torch.zeros(8)
    a[0], b[1] = 1.0, 1.0
    feats = torch.where(fg.reshape(-1, 1), a, b) + 0.01 * torch.randn(16, 8, generator=g)
    box, d = tokencut_box(feats, (h, w), patch_size=16)
    part = torch.from_numpy(d["partition"])
    # the partition recovers the clusters; the seed's side is reported as foreground
    assert torch.equal(part, fg) or torch.equal(part, ~fg)
    assert bool(part.reshape(-1)[d["seed"]])
    if torch.equal(part, fg):
        assert box == [0, 16, 32, 48]


def test_discover_runs_all_methods_on_tiny_model():
    torch.manual_seed(0)
    m = create_model("vit_micro_patch8_64", num_classes=0)
    samples = [
        {"image": torch.randn(3, 30, 40), "boxes": torch.tensor([[0.0, 0, 40, 30]]), "id": "a"},
        {"image": torch.randn(3, 32, 32), "boxes": torch.zeros(0, 4), "id": "b"},
    ]
    res = discover(m, samples, methods=["lazystrike", "lazystrike-largest", "lost", "tokencut"])
    for r in res.values():
        assert r.ids == ["a", "b"] and len(r.boxes) == 2
        assert r.hits[1] is False
        x0, y0, x1, y1 = r.boxes[0]
        assert 0 <= x0 < x1 <= 40 and 0 <= y0 < y1 <= 30
        assert r.images_per_s > 0


def _graph(n: int, seed: int, tau: float = 0.2) -> np.ndarray:
    g = np.random.default_rng(seed)
    f = g.standard_normal((n, 16))
    f[: n // 3] += 2.5 * g.standard_normal(16)  # one coherent group, the rest spread out
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return np.where(f @ f.T > tau, 1.0, 1e-5)


@pytest.mark.parametrize("solver", EIG_SOLVERS)
def test_fiedler_vector_solves_the_generalised_problem(solver):
    for seed, n in ((0, 48), (1, 150)):
        W = _graph(n, seed)
        d = W.sum(1)
        L, Dm = np.diag(d) - W, np.diag(d)
        lam = scipy.linalg.eigh(L, Dm, eigvals_only=True)  # ascending; lam[0] = 0 (constant vector)
        x = fiedler_vector(W, solver)
        # definition: (D - W) x = lambda_2 D x with the second-smallest lambda, x^T D x = 1
        np.testing.assert_allclose(L @ x, lam[1] * (Dm @ x), atol=1e-8)
        assert abs(x @ Dm @ x - 1.0) < 1e-8
        assert lam[2] - lam[1] > 1e-6  # well separated: the vector is unique up to sign


def test_fiedler_vector_rejects_unknown_solver():
    with pytest.raises(ValueError, match="eigensolver"):
        fiedler_vector(np.ones((4, 4)), "qr")


def test_last_block_keys_are_the_last_qkv_keys():
    torch.manual_seed(0)
    m = create_model("vit_micro_patch8_64", num_classes=0).eval()
    x = torch.randn(2, 3, 48, 64)
    from lastvit.evaluate.discovery import LastKeys, last_block_keys

    with torch.no_grad(), LastKeys(m) as hk:
        m.forward_tokens(x)
    k = last_block_keys(m, x)
    assert k.shape == (2, m.num_prefix_tokens + 48, m.encoder.embed_dim)
    torch.testing.assert_close(k, hk.keys, rtol=0, atol=1e-6)


def test_tokencut_boxes_equal_across_solvers():
    torch.manual_seed(0)
    m = create_model("vit_micro_patch8_64", num_classes=0).eval()
    from lastvit.evaluate.discovery import LastKeys

    for i in range(4):
        x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(i))
        with torch.no_grad(), LastKeys(m) as hk:
            m.forward_tokens(x)
        feats = hk.keys[0, m.num_prefix_tokens :]
        ref = tokencut_box(feats, (6, 8), 8, solver="generalized")
        for solver in ("lanczos", "dense"):
            box, d = tokencut_box(feats, (6, 8), 8, solver=solver)
            assert box == ref[0] and d["seed"] == ref[1]["seed"]
            assert np.array_equal(d["partition"], ref[1]["partition"])


def test_discover_batched_equals_batch_one():
    torch.manual_seed(0)
    m = create_model("vit_micro_patch8_64", num_classes=0)
    g = torch.Generator().manual_seed(1)
    samples = [{"image": torch.randn(3, 40, 56, generator=g), "boxes": torch.tensor([[4.0, 4, 40, 30]]),
                "id": f"s{i}"} for i in range(5)]
    samples.insert(2, {"image": torch.randn(3, 30, 37, generator=g), "boxes": torch.tensor([[0.0, 0, 30, 30]]),
                       "id": "odd"})  # a different size splits the run
    methods = ["lazystrike", "lazystrike-largest", "lost", "tokencut"]
    one = discover(m, samples, methods=methods)
    seen = []
    many = discover(m, samples, methods=methods, batch_size=4, on_image=lambda: seen.append(1))
    assert len(seen) == len(samples)
    for k in methods:
        assert many[k].ids == one[k].ids == [s["id"] for s in samples]
        assert many[k].boxes == one[k].boxes and many[k].hits == one[k].hits
    with pytest.raises(ValueError, match="batch_size"):
        discover(m, samples, batch_size=0)


def _coco_tree(root: Path) -> None:
    (root / "train2014").mkdir(parents=True)
    for i in (1, 2, 3):
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(root / "train2014" / f"{i:012d}.jpg")
    ann = dict(
        images=[dict(id=i, file_name=f"{i:012d}.jpg", width=48, height=40) for i in (1, 2, 3)],
        categories=[dict(id=1, name="person")],
        annotations=[
            # x0 + w = 30.75, y0 + h = 20.0: LOST rounds each coordinate with Python's round (half to even)
            dict(id=10, image_id=1, category_id=1, bbox=[10.5, 9.5, 20.25, 10.5], area=210, iscrowd=0),
            dict(id=11, image_id=2, category_id=1, bbox=[0, 0, 48, 40], area=1920, iscrowd=1),  # crowd only
            dict(id=12, image_id=3, category_id=1, bbox=[0.4, 1.6, 47.2, 37.9], area=1780, iscrowd=0),
        ])
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(ann))


def test_coco_discovery_protocols(tmp_path: Path):
    _coco_tree(tmp_path)
    assert coco_reader_options() == COCO_PROTOCOLS["lost"]
    with pytest.raises(ValueError, match="protocol"):
        coco_reader_options("voc")
    lost = build_eval_dataset("coco", tmp_path, split="train2014", image_size=None, resize=None, masks=False,
                              **coco_reader_options("lost"))
    flt = build_eval_dataset("coco", tmp_path, split="train2014", image_size=None, resize=None, masks=False,
                             **coco_reader_options("float"))
    # LOST: int(round(v)) of (x0, y0, x0 + w, y0 + h): round(10.5) = 10, round(9.5) = 10, round(30.75) = 31
    assert [r["boxes"] for r in lost.records] == [[[10.0, 10.0, 31.0, 20.0]], [], [[0.0, 2.0, 48.0, 40.0]]]
    assert [r["boxes"] for r in flt.records] == [[[10.5, 9.5, 30.75, 20.0]], [[0.4, 1.6, 47.6, 39.5]]]
    assert flt.skipped == {"no objects": 1} and not lost.skipped
    torch.manual_seed(0)
    m = create_model("vit_micro_patch8_64", num_classes=0)
    r_lost = discover(m, (lost[i] for i in range(len(lost))), methods=["lazystrike"])["lazystrike"]
    r_flt = discover(m, (flt[i] for i in range(len(flt))), methods=["lazystrike"])["lazystrike"]
    # the crowd-only image is in the denominator of CorLoc and is a miss whatever the box
    assert r_lost.ids == ["1", "2", "3"] and r_lost.hits[1] is False and r_flt.ids == ["1", "3"]
    assert r_lost.corloc == pytest.approx(100.0 * (r_lost.hits[0] + r_lost.hits[2]) / 3)
