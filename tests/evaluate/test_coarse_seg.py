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
