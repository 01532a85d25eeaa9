import torch

from lastvit import create_model
from lastvit.evaluate.coarse_seg import evaluate_coarse_seg, jaccard, mask_to_pixels, threshold_scores


def test_mass_threshold_keeps_top_mass():
    s = torch.tensor([[0.0, 1.0], [2.0, 7.0]])  # shifted by min 0: masses 0, 1, 2, 7 of 10
    # ascending cumsum: 0, .1, .3, 1.0 ; keep where > 0.4 -> only the 7
    assert threshold_scores(s, "mass", 0.6).tolist() == [[False, False], [False, True]]
    # 0.75: cumsum > 0.25 -> keeps 2 and 7
    assert threshold_scores(s, "mass", 0.75).tolist() == [[False, False], [True, True]]
    assert threshold_scores(s - 5.0, "mass", 0.75).tolist() == [[False, False], [True, True]]  # shift-invariant
    assert threshold_scores(s, "mean").tolist() == [[False, False], [False, True]]


def test_jaccard_and_upsampling_with_ignore():
    m = mask_to_pixels(torch.tensor([[True, False]]), 2, (2, 3))
    assert m.tolist() == [[True, True, False], [True, True, False]]
    gt = torch.tensor([[True, False, False], [True, True, False]])
    valid = torch.tensor([[True, False, True], [True, True, True]])
    # over valid pixels: pred {(0,0),(1,0),(1,1)}, gt {(0,0),(1,0),(1,1)} -> 1.0
    assert jaccard(m, gt, valid) == 1.0
    assert jaccard(m, gt) == 3 / 4


def test_evaluate_coarse_seg_runs_and_counts_ignore():
    torch.manual_seed(0)
    model = create_model("vit_micro_patch8_64", num_classes=0)
    seg = torch.zeros(20, 30, dtype=torch.long)
    seg[5:15, 5:20] = 3
    seg[5, 5:20] = 255
    res = evaluate_coarse_seg(model, [{"image": torch.randn(3, 20, 30), "seg": seg, "id": "im"}], rule="mean")
    assert res["images"] == 1 and res["per_image"][0]["id"] == "im"
    assert 0.0 <= res["jaccard"] <= 100.0
    assert abs(res["per_image"][0]["fg_fraction_gt"] - 135 / 600) < 1e-9  # 10x15 object minus 15 ignore pixels


def _fixed_scores(monkeypatch, maps):
    """Patch scores by hand: the i-th image gets maps[i] (a (h, w) grid), so the predicted mask is known."""
    import lastvit.evaluate.coarse_seg as cs

    it = iter(maps)
    monkeypatch.setattr(cs, "model_patch_scores", lambda model, x: next(it)[None])


def test_both_protocols_from_their_definitions(monkeypatch):
    # 16x32 image, 8-px patches -> 2x4 grid; the prediction ("mean" rule) is exactly patch (0, 0)
    score = torch.zeros(2, 4)
    score[0, 0] = 1.0
    seg = torch.zeros(16, 32, dtype=torch.long)
    seg[0:8, 0:8] = 1  # object A = the predicted patch, 64 px
    seg[8:16, 16:32] = 2  # object B, 128 px, missed
    empty = torch.zeros(16, 32, dtype=torch.long)  # an image without objects
    one = torch.zeros(16, 32, dtype=torch.long)
    one[0:8, 0:8] = 4  # a single object, exactly the prediction
    _fixed_scores(monkeypatch, [score, score, score])
    model = create_model("vit_micro_patch8_64", num_classes=0)
    res = evaluate_coarse_seg(model, [{"image": torch.zeros(3, 16, 32), "seg": seg, "id": "two"},
                                      {"image": torch.zeros(3, 16, 32), "seg": empty, "id": "none"},
                                      {"image": torch.zeros(3, 16, 32), "seg": one, "id": "one"}], rule="mean")
    # per image: |P & FG| / |P | FG| = 64/192, 0/64 and 64/64; mean over the 3 images
    assert res["protocols"]["per_image"] == res["jaccard"]
    assert abs(res["jaccard"] - 100 * (64 / 192 + 0.0 + 1.0) / 3) < 1e-9
    # per object: in "two" A scores 64/64 and B 0/(64+128) -> 0.5; "one" scores 1; "none" has no object and is
    # left out: mean over the 2 images with objects (not over the 3 objects, which would give 2/3)
    assert res["objects"] == 3 and res["images_without_objects"] == 1
    assert abs(res["jaccard_per_object"] - 100 * (0.5 + 1.0) / 2) < 1e-9
    assert res["protocols"]["per_object"] == res["jaccard_per_object"]
    rows = {r["id"]: r for r in res["per_image"]}
    assert rows["two"]["objects"] == 2 and rows["none"]["objects"] == 0
    assert rows["none"]["jaccard_per_object"] != rows["none"]["jaccard_per_object"]  # NaN: no objects


def test_objects_from_instances_and_from_boxes():
    from lastvit.evaluate.coarse_seg import object_masks

    seg = torch.zeros(4, 6, dtype=torch.long)
    seg[:, 0:2] = 3
    seg[:, 4:6] = 3  # two instances of one class: one class region
    inst = torch.zeros(4, 6, dtype=torch.long)
    inst[:, 0:2], inst[:, 4:6] = 1, 2
    assert len(object_masks({"seg": seg}, seg)) == 1
    objs = object_masks({"seg": seg, "instances": inst}, seg)
    assert [int(o.sum()) for o in objs] == [8, 8]
    mask = (seg > 0).long()  # a binary mask cut by the boxes (pixel-edge xyxy)
    objs = object_masks({"mask": mask, "boxes": torch.tensor([[0.0, 0.0, 2.0, 4.0], [4.0, 0.0, 6.0, 2.0]])}, mask)
    assert [int(o.sum()) for o in objs] == [8, 4]
    assert len(object_masks({"mask": mask}, mask)) == 1
