"""The synthetic benchmark: determinism, geometry of boxes/masks, captions, batch path == item path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lastvit.data import COLOURS, SHAPES, SyntheticConfig, SyntheticDataset, collate, generate_batch

CFG = SyntheticConfig(train_size=64, val_size=32, test_size=32)


def test_same_seed_same_tensors_and_splits_differ():
    a = generate_batch(CFG, range(8), "train")
    b = generate_batch(SyntheticConfig(train_size=64), range(8), "train")
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["masks"], b["masks"])
    assert a["captions"] == b["captions"]
    v = generate_batch(CFG, range(8), "val")
    assert not torch.equal(a["images"], v["images"])
    # every image differs between splits (no index collision between train and val)
    assert all(not torch.equal(a["images"][i], v["images"][i]) for i in range(8))
    c = generate_batch(CFG, range(8), "train", seed=1)
    assert not torch.equal(a["images"], c["images"])


def test_any_index_regenerates_alone():
    full = generate_batch(CFG, [0, 5, 9, 13], "test")
    alone = generate_batch(CFG, [9], "test")
    assert torch.equal(full["images"][2], alone["images"][0])
    assert torch.equal(full["boxes"][2], alone["boxes"][0])


def test_geometry_box_tight_mask_and_area_bound():
    cfg = SyntheticConfig(train_size=120)
    g = generate_batch(cfg, range(120), "train")
    H = cfg.image_size
    assert g["images"].shape == (120, 3, H, H) and g["images"].min() >= 0 and g["images"].max() <= 1
    for m, b in zip(g["masks"], g["boxes"]):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert len(ys) > 0
        # box == bounding box of the mask (pixel-edge xyxy)
        tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.equal(b, tight)
        area = float((b[2] - b[0]) * (b[3] - b[1])) / (H * H)
        assert area <= cfg.max_size**2 + 1e-6 < 0.25
        side = max(float(b[2] - b[0]), float(b[3] - b[1]))
        assert side >= 0.5 * cfg.min_size * H  # never degenerate
    assert set(g["labels"].tolist()) == set(range(cfg.num_classes))  # all classes occur in 120 draws


def test_captions_match_attributes():
    g = generate_batch(CFG, range(48), "val")
    H = CFG.image_size
    palette = torch.tensor(list(COLOURS.values()))
    for j, (cap, att) in enumerate(zip(g["captions"], g["attributes"])):
        assert cap == f"a {att['size']} {att['colour']} {att['shape']} {att['position']}"
        assert att["shape"] == SHAPES[int(g["labels"][j])]
        b = g["boxes"][j]
        cx, cy = float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2
        if cx < H / 3:
            assert "left" in att["position"]
        elif cx >= 2 * H / 3:
            assert "right" in att["position"]
        if cy < H / 3:
            assert "top" in att["position"]
        elif cy >= 2 * H / 3:
            assert "bottom" in att["position"]
        if H / 3 <= cx < 2 * H / 3 and H / 3 <= cy < 2 * H / 3:
            assert att["position"] == "in the centre"
        # the colour word is the nearest named colour to the mean object pixel (texture shading is zero-mean)
        mean_rgb = g["images"][j][:, g["masks"][j]].mean(1)
        d = (palette - mean_rgb).norm(dim=1)
        assert list(COLOURS)[int(d.argmin())] == att["colour"] or float(d.sort().values[1] - d.min()) < 0.1


def test_colour_does_not_determine_class():
    g = generate_batch(SyntheticConfig(train_size=240), range(240), "train")
    pairs = {(a["shape"], a["colour"]) for a in g["attributes"]}
    for shape in SHAPES[:10]:
        assert len({c for s, c in pairs if s == shape}) >= 4


def test_batch_path_equals_item_path_and_normalisation():
    ds = SyntheticDataset(CFG, "val")
    idx = [3, 0, 17, 31]
    b = ds.batch(idx)
    c = collate([ds[i] for i in idx])
    assert torch.equal(b["image"], c["image"]) and torch.equal(b["mask"], c["mask"])
    assert torch.equal(b["label"], c["label"]) and b["caption"] == c["caption"] and b["id"] == c["id"]
    assert all(torch.equal(x, y) for x, y in zip(b["boxes"], c["boxes"]))
    raw = ds.generate_batch(idx)["images"]
    assert torch.allclose(b["image"], (raw - 0.5) / 0.25)
    assert torch.allclose(ds.denormalize(b["image"]), raw, atol=1e-6)
    s = ds[5]
    assert s["image"].dtype == torch.float32 and s["boxes"].shape == (1, 4) and s["mask"].dtype == torch.bool
    assert isinstance(s["label"], int) and s["id"] == "val_000005" and s["box_labels"] == [s["label"]]
    assert torch.equal(ds[[1, 2]]["image"], ds.batch([1, 2])["image"])
    with pytest.raises(IndexError):
        ds[32]


def test_multi_object_labelled_by_largest_and_disjoint():
    cfg = SyntheticConfig(multi_object=2, train_size=60)
    g = generate_batch(cfg, range(60), "train")
    n_multi = 0
    for j in range(60):
        boxes, labels = g["all_boxes"][j], g["all_labels"][j]
        assert torch.equal(boxes[0], g["boxes"][j]) and int(labels[0]) == int(g["labels"][j])
        if len(boxes) > 1:
            n_multi += 1
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            assert float(areas[0]) >= float(areas[1:].max())
            assert all(int(lb) != int(labels[0]) for lb in labels[1:])
            for k in range(1, len(boxes)):  # extra objects never overlap the labelled one
                a, b = boxes[0], boxes[k]
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    assert n_multi > 20  # of 60


def test_config_validation_and_image_size_not_hard_coded():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticConfig(num_classes=40)
    cfg = SyntheticConfig(image_size=96, clutter=0, gradient=False, texture=0.0, colour_jitter=0.0)
    g = generate_batch(cfg, range(4), "train")
    assert g["images"].shape == (4, 3, 96, 96)
    # no texture, no gradient, no clutter: background is one flat colour per image
    for j in range(4):
        bg = g["images"][j][:, ~g["masks"][j]]
        assert float((bg - bg[:, :1]).abs().max()) < 1e-6
        obj = g["images"][j][:, g["masks"][j]]
        assert np.isclose(float((obj - obj[:, :1]).abs().max()), 0.0, atol=1e-6)


def test_distractors_never_cover_the_object():
    cfg = SyntheticConfig(clutter=40, texture=0.0, colour_jitter=0.0, gradient=False, train_size=16)
    g = generate_batch(cfg, range(16), "train")
    n_clutter = 0
    for j in range(16):
        img, m = g["images"][j], g["masks"][j]
        obj = img[:, m]
        assert float((obj - obj[:, :1]).abs().max()) < 1e-6  # every object pixel has the object's colour
        # no distractor pixel within 2 px of the object: the dilated ring is pure background colour
        ring = torch.nn.functional.max_pool2d(m[None, None].float(), 5, 1, 2)[0, 0].bool() & ~m
        bg_val = img[:, ~torch.nn.functional.max_pool2d(m[None, None].float(), 31, 1, 15)[0, 0].bool()]
        bg_mode = bg_val.mode(dim=1).values
        assert float((img[:, ring] - bg_mode[:, None]).abs().max()) < 1e-6
        n_clutter += int(((bg_val - bg_mode[:, None]).abs().sum(0) > 1e-6).sum())
    assert n_clutter > 100  # the clutter is really there


def test_chunked_rendering_is_identical(monkeypatch):
    from lastvit.data import synthetic

    cfg = SyntheticConfig(multi_object=2)
    ref = generate_batch(cfg, range(20), "train")
    monkeypatch.setattr(synthetic, "_CHUNK", 7)
    got = generate_batch(cfg, range(20), "train")
    assert torch.equal(ref["images"], got["images"]) and torch.equal(ref["masks"], got["masks"])
    assert all(torch.equal(a, b) for a, b in zip(ref["all_boxes"], got["all_boxes"]))
    assert ref["captions"] == got["captions"]


def test_all_instance_masks_exact_disjoint_and_match_boxes():
    from lastvit.data.synthetic import SyntheticConfig, generate_batch

    for cfg in (SyntheticConfig(num_classes=6, multi_object=2, clutter=6, pattern=0.6),
                SyntheticConfig(num_classes=6)):
        g = generate_batch(cfg, range(40), "train")
        n_multi = 0
        for b in range(40):
            m = g["all_masks"][b]
            assert m.dtype == torch.bool and m.shape == (len(g["all_boxes"][b]), 64, 64)
            assert torch.equal(m[0], g["masks"][b])  # the labelled object first, identical to ``masks``
            assert int(m.sum(0).max()) <= 1  # disjoint
            n_multi += len(m) > 1
            for mk, box in zip(m, g["all_boxes"][b]):
                ys, xs = torch.nonzero(mk, as_tuple=True)
                assert [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] == box.int().tolist()
        assert (n_multi > 0) == (cfg.multi_object > 0)
