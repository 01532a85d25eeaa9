"""Box-aware transforms against hand-computed values."""

from __future__ import annotations

import torch

from lastvit.data import CenterCrop, Compose, HorizontalFlip, Normalize, RandomResizedCrop, Resize, eval_transform


def _sample(h: int, w: int, boxes, **extra):
    s = dict(image=torch.zeros(3, h, w, dtype=torch.uint8), boxes=torch.tensor(boxes, dtype=torch.float32))
    s.update(extra)
    return s


def test_resize256_centercrop224_known_boxes():
    # 500x375 (w x h): Resize(256) -> 341x256 (torchvision: int(256 * 500 / 375) = 341), crop offsets
    # top = round((256 - 224) / 2) = 16, left = round((341 - 224) / 2) = round(58.5) = 58.
    s = _sample(375, 500, [[100, 50, 300, 200], [0, 0, 50, 30], [250, 250, 340, 375]],
                difficult=[0, 1, 0], box_labels=[3, 4, 5])
    out = Compose([Resize(256), CenterCrop(224)])(s)
    assert out["image"].shape == (3, 224, 224)
    sx, sy = 341 / 500, 256 / 375
    exp0 = [100 * sx - 58, 50 * sy - 16, 300 * sx - 58, 200 * sy - 16]
    # box 1 ends at x = 50 * sx = 34.1 < 58: falls outside the crop -> dropped; box 2's bottom (375 * sy - 16 =
    # 240) is clipped to the crop
    exp2 = [250 * sx - 58, 250 * sy - 16, 340 * sx - 58, 224]
    assert torch.allclose(out["boxes"], torch.tensor([exp0, exp2]), atol=1e-4)
    assert out["boxes_dropped"] == 1 and out["difficult"] == [0, 0] and out["box_labels"] == [3, 5]
    assert abs(exp0[0] - 10.2) < 1e-6 and abs(exp0[3] - (200 * 256 / 375 - 16)) < 1e-9


def test_eval_transform_portrait_mask_and_seg_follow():
    h, w = 400, 300
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[100:200, 60:240] = True
    seg = torch.zeros(h, w, dtype=torch.int64)
    seg[100:200, 60:240] = 7
    seg[0:10] = 255
    s = _sample(h, w, [[60, 100, 240, 200]], mask=mask, seg=seg)
    out = eval_transform(224, 256)(s)
    # Resize(256): 300x400 -> 256x341; crop top = round((341-224)/2) = 58, left = 16
    sx, sy = 256 / 300, 341 / 400
    exp = torch.tensor([[60 * sx - 16, 100 * sy - 58, 240 * sx - 16, 200 * sy - 58]])
    assert torch.allclose(out["boxes"], exp, atol=1e-4)
    ys, xs = torch.nonzero(out["mask"], as_tuple=True)
    got = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    assert (got - exp[0]).abs().max() <= 1.0
    assert set(out["seg"].unique().tolist()) <= {0, 7, 255}
    assert out["image"].dtype == torch.float32 and out["image"].shape == (3, 224, 224)


def test_center_crop_pads_small_images():
    s = _sample(10, 20, [[2, 2, 18, 8]], seg=torch.ones(10, 20, dtype=torch.int64))
    out = CenterCrop(16)(s)
    # top = round(-3) = -3 (pad 3), left = round(2) = 2
    assert out["image"].shape == (3, 16, 16)
    assert torch.allclose(out["boxes"], torch.tensor([[0.0, 5.0, 16.0, 11.0]]))
    assert (out["seg"][:3] == 255).all() and (out["seg"][3:13] == 1).all() and (out["seg"][13:] == 255).all()


def test_horizontal_flip_boxes_and_mask():
    img = torch.arange(2 * 5, dtype=torch.uint8).view(1, 2, 5).expand(3, 2, 5).contiguous()
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    s = dict(image=img, boxes=torch.tensor([[0.0, 0.0, 2.0, 1.0]]), mask=mask)
    out = HorizontalFlip(p=1.0)(s)
    assert torch.equal(out["boxes"], torch.tensor([[3.0, 0.0, 5.0, 1.0]]))
    assert out["mask"][0].tolist() == [False, False, False, True, True]
    assert out["image"][0, 0].tolist() == [4, 3, 2, 1, 0]
    g = torch.Generator().manual_seed(0)
    flips = [HorizontalFlip(0.5, generator=g)(dict(image=img, boxes=torch.zeros(0, 4)))["image"][0, 0, 0]
             for _ in range(40)]
    assert 5 < sum(int(f == 4) for f in flips) < 35


def test_random_resized_crop_keeps_box_and_mask_consistent():
    g = torch.Generator().manual_seed(3)
    t = RandomResizedCrop(32, scale=(0.3, 1.0), generator=g)
    n_drop = 0
    for _ in range(20):
        mask = torch.zeros(64, 80, dtype=torch.bool)
        mask[20:40, 30:60] = True
        s = _sample(64, 80, [[30, 20, 60, 40]], mask=mask)
        out = t(s)
        assert out["image"].shape == (3, 32, 32) and out["mask"].shape == (32, 32)
        if len(out["boxes"]) == 0:
            n_drop += 1
            assert out["boxes_dropped"] == 1 and out["mask"].sum() <= 2
            continue
        ys, xs = torch.nonzero(out["mask"], as_tuple=True)
        got = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert (got - out["boxes"][0]).abs().max() <= 1.5
    assert n_drop < 20


def test_normalize():
    s = dict(image=torch.full((3, 2, 2), 255, dtype=torch.uint8))
    out = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(s)
    assert torch.allclose(out["image"], torch.full((3, 2, 2), 2.0))


def test_resize_exact_and_long_side_cap():
    r = Resize(100, max_size=150)
    assert r.output_size(100, 400) == (37, 150)
    assert Resize((20, 30)).output_size(7, 9) == (20, 30)
    s = Resize(8)(_sample(4, 4, [[1, 1, 3, 2]]))
    assert torch.equal(s["boxes"], torch.tensor([[2.0, 2.0, 6.0, 4.0]]))


# ---------------------------------------------------------------------------------------------- evaluation policy
def _tiny(img_size=32, head="linear"):
    from lastvit import create_model

    return create_model(None, img_size=img_size, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3,
                        head=head)


def test_default_normalisation_order(tmp_path):
    from lastvit.data import default_normalisation
    from lastvit.data.transforms import CLIP_MEAN, IMAGENET_MEAN

    vit, proj = _tiny(), _tiny(head="proj")
    assert default_normalisation(vit).mean == IMAGENET_MEAN
    assert default_normalisation(proj).mean == CLIP_MEAN
    syn = tmp_path / "syn"
    (syn / "Masks").mkdir(parents=True)
    (syn / "metrics.json").write_text('{"config": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.4, 0.4]}}')
    n = default_normalisation(proj, syn)  # a synthetic tree's own statistics beat the model family
    assert n.mean == (0.1, 0.2, 0.3) and n.std == (0.4, 0.4, 0.4) and n.source == "synthetic tree"
    rec = {"data": {"mean": [0.7, 0.7, 0.7], "std": [0.2, 0.2, 0.2]}}
    n = default_normalisation(proj, syn, extra=rec)  # what the checkpoint records beats both
    assert n.mean == (0.7, 0.7, 0.7) and n.source == "checkpoint"


def test_eval_settings_from_model_checkpoint_and_user():
    from lastvit.data import eval_settings

    m = _tiny(img_size=64)
    ev = eval_settings(m, "imagenet")
    assert (ev.image_size, ev.resize) == (64, 73)  # floor(64 / 0.875), timm's rule
    assert ev.sources["image_size"] == "model img_size"
    assert (eval_settings(_tiny(img_size=224), "imagenet").image_size,
            eval_settings(_tiny(img_size=224), "imagenet").resize) == (224, 256)
    assert (eval_settings(m, "synthetic").image_size, eval_settings(m, "synthetic").resize) == (64, 64)
    rec = {"data": {"image_size": 48, "crop_pct": 0.75}}
    ev = eval_settings(m, "imagenet", extra=rec)
    assert (ev.image_size, ev.resize) == (48, 64) and ev.sources["image_size"] == "checkpoint"
    ev = eval_settings(m, "imagenet", extra=rec, image_size=40, resize=50, mean=(0.5, 0.5, 0.5))
    assert (ev.image_size, ev.resize, ev.mean) == (40, 50, (0.5, 0.5, 0.5))
    assert ev.sources["image_size"] == ev.sources["resize"] == ev.sources["mean"] == "user"
    d = ev.to_dict()
    assert d["image_size"] == 40 and d["sources"]["std"].startswith("ImageNet")
    x = {"image": torch.zeros(3, 60, 80, dtype=torch.uint8)}
    assert tuple(ev.transform()(x)["image"].shape) == (3, 40, 40)
