import pytest
import torch
import torch.nn.functional as F

from lastvit.analysis import (
    box_cells,
    convnet_patch_scores,
    evaluate_pib,
    foreground_patches,
    patch_scores,
    point_in_box,
)


def _onehot(b, h, w, cells):
    s = torch.zeros(b, h, w)
    for i, (r, c) in enumerate(cells):
        s[i, r, c] = 1.0
    return s


def test_point_in_box_any_vs_center_rules():
    # 4x4 grid of 16 px cells on a 64 px image; argmax cell per image is known.
    scores = _onehot(4, 4, 4, [(1, 1), (1, 1), (2, 2), (0, 3)])
    boxes = [
        torch.tensor([[20.0, 20.0, 30.0, 30.0]]),  # inside cell (1,1), covers its centre (24,24): both hit
        torch.tensor([[0.0, 0.0, 17.0, 17.0]]),  # cells 0..1 (any hit), centre (24,24) outside: centre miss
        torch.tensor([[0.0, 0.0, 32.0, 32.0]]),  # x2=32 -> floor=2: release rule covers cell (2,2); centre 40 out
        torch.zeros(0, 4),  # no box: never a hit
    ]
    r = point_in_box(scores, boxes, image_size=64, patch_size=16)
    assert r["hit_any"].tolist() == [True, True, True, False]
    assert r["hit_center"].tolist() == [True, False, False, False]
    assert r["argmax"].tolist() == [5, 5, 10, 3]
    # patch_size inferred from image size and grid gives the same
    r2 = point_in_box(scores, boxes, image_size=(64, 64))
    assert torch.equal(r2["hit_any"], r["hit_any"])


def test_box_cells_clamps_and_second_box_counts():
    cells = box_cells(torch.tensor([[-5.0, 50.0, 70.0, 64.0]]), (4, 4), (16, 16))
    assert cells[3].all() and not cells[:3].any()
    scores = _onehot(1, 4, 4, [(3, 0)])
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 48.0, 15.0, 63.0]])]
    r = point_in_box(scores, boxes, patch_size=16)
    assert r["hit_any"].item() and r["hit_center"].item()


def test_hit_mask_uses_half_coverage():
    scores = _onehot(2, 2, 2, [(0, 0), (0, 0)])
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :2, :4] = True  # 8 of 16 pixels of cell (0,0): exactly one half -> not > 0.5
    masks[1, :3, :4] = True  # 12 of 16 -> hit
    r = point_in_box(scores, [torch.zeros(0, 4)] * 2, patch_size=4, masks=masks)
    assert r["hit_mask"].tolist() == [False, True]
    fg = foreground_patches(None, (2, 2), patch_size=4, masks=masks)
    assert fg[:, 0, 0].tolist() == [False, True] and fg.sum() == 1


def test_foreground_patches_from_box_centres():
    box = [torch.tensor([[0.0, 0.0, 24.0, 8.0]])]
    fg = foreground_patches(box, (4, 4), patch_size=16)
    # centres (8, 8) inside; (24, 8) lies on the box edge (inclusive) -> inside; (40, 8) outside
    assert fg[0].nonzero().tolist() == [[0, 0], [0, 1]]
    assert torch.equal(foreground_patches(box, (4, 4), image_size=64), fg)


def test_patch_scores_follow_the_readout(micro_vit):
    x = torch.randn(2, 3, 64, 64)
    m = micro_vit("cls")
    s, rec = patch_scores(m, x)
    ref = F.cosine_similarity(rec.patches, rec.prefix[:, :1], dim=-1).reshape(2, 8, 8)
    torch.testing.assert_close(s, ref)
    m.set_aggregator("lazystrike", k=2)
    s, rec = patch_scores(m, x)
    torch.testing.assert_close(s, F.cosine_similarity(rec.patches, rec.pooled[:, None], dim=-1).reshape(2, 8, 8))
    s_cls, _ = patch_scores(m, x, source="cls")
    torch.testing.assert_close(s_cls, ref)
    # a CLIP-style projection head: cosine in the embedding space
    p = micro_vit("mean", head="proj", head_dim=16)
    s, rec = patch_scores(p, x)
    w = p.head.weight
    ref = F.cosine_similarity(rec.patches @ w.T, (rec.pooled @ w.T)[:, None], dim=-1).reshape(2, 8, 8)
    torch.testing.assert_close(s, ref)
    with pytest.raises(ValueError, match="class token"):
        patch_scores(micro_vit("mean", class_token=False), x, source="cls")


def test_convnet_scores_against_manual_gap():
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    s = convnet_patch_scores(net, x)
    f = net.forward_features(x)
    g = f.mean(dim=(2, 3))
    ref = torch.einsum("bchw,bc->bhw", f, g) / (f.norm(dim=1) * g.norm(dim=1)[:, None, None])
    torch.testing.assert_close(s, ref, atol=1e-5, rtol=1e-5)


def test_evaluate_pib_known_answer_and_skips():
    grid_cells = [(0, 0), (3, 3), (1, 2), (2, 1), (0, 0)]
    images = torch.zeros(5, 3, 64, 64)
    for i, (r, c) in enumerate(grid_cells):
        images[i, 0, r * 16, c * 16] = 1.0  # the stub's scores read this marker
    boxes = [
        torch.tensor([[0.0, 0.0, 10.0, 10.0]]),  # hit both
        torch.tensor([[0.0, 0.0, 10.0, 10.0]]),  # miss
        torch.tensor([[32.0, 16.0, 34.0, 20.0]]),  # any hit (cell (1,2)), centre (40,24) outside -> centre miss
        torch.zeros(0, 4),  # skipped: no boxes
        torch.tensor([[0.0, 0.0, 60.0, 60.0]]),  # skipped: large box (>= 0.25 of the image)
    ]
    batches = [
        {"image": images[:3], "boxes": boxes[:3], "id": ["a", "b", "c"], "label": torch.tensor([0, 1, 2])},
        {"image": images[3:], "boxes": boxes[3:], "id": ["d", "e"], "label": torch.tensor([0, 0])},
    ]

    def stub(x):
        return x[:, 0, ::16, ::16]

    metrics, rows = evaluate_pib(torch.nn.Identity(), batches, score_fn=stub, patch_size=16, max_box_area=0.25,
                                 dataset_skipped={"unreadable": 2})
    assert metrics["num_images"] == 3
    assert metrics["pib"] == pytest.approx(2 / 3) and metrics["pib_center"] == pytest.approx(1 / 3)
    assert metrics["skipped"] == {"dataset:unreadable": 2, "large_box": 1, "no_boxes": 1}
    assert metrics["num_skipped"] == 4
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert [(r["hit_any"], r["hit_center"]) for r in rows] == [(1, 1), (0, 0), (1, 0)]
    m2, _ = evaluate_pib(torch.nn.Identity(), batches, score_fn=stub, patch_size=16, limit=2)
    assert m2["num_images"] == 2


def test_evaluate_pib_on_a_model_matches_point_in_box(micro_vit):
    m = micro_vit("lazystrike")
    x = torch.randn(3, 3, 64, 64)
    boxes = [torch.tensor([[0.0, 0.0, 31.0, 31.0]]), torch.tensor([[16.0, 16.0, 63.0, 63.0]]),
             torch.tensor([[8.0, 0.0, 40.0, 20.0]])]
    metrics, rows = evaluate_pib(m, [{"image": x, "boxes": boxes, "label": torch.tensor([0, 1, 2])}])
    s, _ = patch_scores(m, x)
    ref = point_in_box(s, boxes, patch_size=8)
    assert metrics["pib"] == pytest.approx(ref["hit_any"].float().mean().item())
    assert metrics["pib_center"] == pytest.approx(ref["hit_center"].float().mean().item())
    pred = m(x).argmax(1)
    assert [r["pred"] for r in rows] == pred.tolist()
