import math

import pytest
import torch
import torch.nn.functional as F

from lastvit import create_model
from lastvit.evaluate.dense import VARIANTS, dense_features, fvit_taps, neighbourhood_prior
from lastvit.evaluate.zeroshot_seg import (
    ZeroShotSegConfig,
    evaluate_zeroshot_seg,
    postprocess,
    read_classnames,
    slide_inference,
    window_logits,
)


def _tiny_vit(**kw):
    torch.manual_seed(0)
    return create_model("vit_micro_patch8_64", num_classes=0, head="proj", head_dim=16, **kw).eval()


def _manual_last_block(vit, images, variant, std=5.0):
    """Reference: the definitions written out per head with explicit einsums."""
    enc = vit.encoder
    x, _ = vit.embed(images)  # the token path before the blocks (tested in tests/models/test_token_path.py)
    for blk in enc.blocks[:-1]:
        x = blk(x)
    blk = enc.blocks[-1]
    B, L, D = x.shape
    H = blk.attn.num_heads
    hd = D // H
    y = blk.norm1(x)
    W, b = blk.attn.qkv.weight, blk.attn.qkv.bias
    q = (y @ W[:D].T + b[:D]).reshape(B, L, H, hd)
    k = (y @ W[D : 2 * D].T + b[D : 2 * D]).reshape(B, L, H, hd)
    v = (y @ W[2 * D :].T + b[2 * D :]).reshape(B, L, H, hd)
    s = hd**-0.5
    qq = torch.einsum("blhd,bmhd->bhlm", q, q) * s
    kk = torch.einsum("blhd,bmhd->bhlm", k, k) * s
    qk = torch.einsum("blhd,bmhd->bhlm", q, k) * s
    P = vit.num_prefix_tokens
    h, w = vit.grid_size(images)

    def out(a):
        o = torch.einsum("bhlm,bmhd->blhd", a, v).reshape(B, L, D)
        return blk.attn.proj(o)

    if variant == "vanilla":
        x = x + out(qk.softmax(-1))
        x = x + blk.mlp(blk.norm2(x))
    elif variant in ("maskclip", "fvit"):  # MaskCLIP / F-ViT: attention -> value path; residual and FFN kept
        x = x + blk.attn.proj(v.reshape(B, L, D))
        x = x + blk.mlp(blk.norm2(x))
    elif variant == "sclip":
        x = x + out(qq.softmax(-1) + kk.softmax(-1))
        x = x + blk.mlp(blk.norm2(x))
    elif variant == "clearclip":
        x = out(qq.softmax(-1))
    elif variant == "naclip":
        G = torch.zeros(L, L)
        for i in range(h * w):
            for j in range(h * w):
                di, dj = (i // w - j // w), (i % w - j % w)
                G[P + i, P + j] = math.exp(-(di * di + dj * dj) / (2 * std * std))
        x = out((kk + G).softmax(-1))
    x = enc.norm(x)[:, P:]
    return vit.head(x)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_match_manual_definitions(variant):
    vit = _tiny_vit(reg_tokens=2)
    imgs = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        got, grid = dense_features(vit, imgs, variant, gaussian_std=2.0)
        ref = _manual_last_block(vit, imgs, variant, std=2.0)
    assert grid == (3, 4)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    if variant == "vanilla":
        with torch.no_grad():
            torch.testing.assert_close(got, vit.head(vit.forward_tokens(imgs).patches))


def test_maskclip_keeps_residual_and_ffn():
    """MaskCLIP's definition (issue 14.2): the residual and FFN stay, so the output is not ClearCLIP-like proj(v)."""
    vit = _tiny_vit()
    imgs = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        x, _ = vit.embed(imgs)
        for blk in vit.encoder.blocks[:-1]:
            x = blk(x)
        blk = vit.encoder.blocks[-1]
        d = x.shape[-1]
        v = blk.norm1(x) @ blk.attn.qkv.weight[2 * d :].T + blk.attn.qkv.bias[2 * d :]
        dropped = vit.head(vit.encoder.norm(blk.attn.proj(v))[:, 1:])  # the old reading
        got, _ = dense_features(vit, imgs, "maskclip")
    assert (got - dropped).abs().max() > 1e-3


def test_fvit_taps_by_hand():
    """Taps after the chosen blocks (raw, CLS dropped, (D, h, w)) and the dense map of the F-ViT last block."""
    torch.manual_seed(0)
    vit = create_model("vit_micro_patch8_64", num_classes=0, head="proj", head_dim=16, reg_tokens=1).eval()
    imgs = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        x, _ = vit.embed(imgs)
        outs = []
        for blk in vit.encoder.blocks[:-1]:
            x = blk(x)
            outs.append(x)
        blk = vit.encoder.blocks[-1]
        d = x.shape[-1]
        v = blk.norm1(x) @ blk.attn.qkv.weight[2 * d :].T + blk.attn.qkv.bias[2 * d :]
        y = x + blk.attn.proj(v)
        y = y + blk.mlp(blk.norm2(y))
        outs.append(y)
        taps, dense = fvit_taps(vit, imgs, [1, -1, 0])
        no_taps, dense_np = fvit_taps(vit, imgs, [], project=False)

    def as_map(t):  # drop class token + register, (B, h*w, C) -> (B, C, 3, 4)
        return t[:, 2:].reshape(2, 3, 4, -1).permute(0, 3, 1, 2)

    assert [tuple(t.shape) for t in taps] == [(2, 96, 3, 4)] * 3
    for t, i in zip(taps, [1, 3, 0]):
        torch.testing.assert_close(t, as_map(outs[i]))
    torch.testing.assert_close(dense, as_map(vit.head(vit.encoder.norm(y))))
    assert no_taps == []
    torch.testing.assert_close(dense_np, as_map(vit.encoder.norm(y)))
    # the dense map is the fvit dense feature
    feats, _ = dense_features(vit, imgs, "fvit")
    torch.testing.assert_close(dense, feats.reshape(2, 3, 4, -1).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="out of range"):
        fvit_taps(vit, imgs, [4])


def test_neighbourhood_prior_values():
    g = neighbourhood_prior(2, 3, std=1.0, num_prefix=1)
    assert g.shape == (7, 7) and g[0].abs().sum() == 0 and g[:, 0].abs().sum() == 0
    # patch (0,0) vs patch (1,2): squared distance 5
    assert abs(float(g[1, 6]) - math.exp(-2.5)) < 1e-6 and float(g[3, 3]) == 1.0


def test_slide_equals_whole_image_when_window_covers_it():
    vit = _tiny_vit()
    text = F.normalize(torch.randn(5, 16), dim=-1)
    fn = window_logits(vit, text)
    img = torch.randn(1, 3, 40, 56)
    whole = fn(img)
    torch.testing.assert_close(slide_inference(fn, img, 5, crop=64, stride=32), whole)
    # windows averaged: a constant per-window function returns the constant
    ones = slide_inference(lambda w: torch.ones(w.shape[0], 2, *w.shape[-2:]), img, 2, crop=16, stride=12)
    torch.testing.assert_close(ones, torch.ones(1, 2, 40, 56))
    # window layout by hand: rows at 0, 8 (clamped), cols at 0, 16, 24 (clamped), sent 4 at a time
    calls = []
    slide_inference(lambda w: calls.append(tuple(w.shape)) or torch.zeros(w.shape[0], 1, *w.shape[-2:]), img, 1,
                    32, 16, window_batch=4)
    assert calls == [(4, 3, 32, 32), (2, 3, 32, 32)]
    # per-pixel window counts: the average of a function returning each window's index equals the hand count
    idx = iter(range(100))
    avg = slide_inference(lambda w: torch.stack([torch.full((1, *w.shape[-2:]), float(next(idx)))
                                                 for _ in range(w.shape[0])]), img, 1, 32, 16, window_batch=1)
    # pixel (0, 0) is only in window 0; (39, 55) only in window 5; (39, 40) in windows 4 and 5 (cols 16-47, 24-55)
    assert [float(avg[0, 0, y, x]) for y, x in ((0, 0), (39, 55), (39, 40))] == [0.0, 5.0, 4.5]
    # batched windows give the same logits as one at a time
    torch.testing.assert_close(slide_inference(fn, img, 5, 32, 16, window_batch=8),
                               slide_inference(fn, img, 5, 32, 16, window_batch=1), rtol=1e-5, atol=1e-6)


def test_postprocess_synonym_max_and_thresholds():
    # 3 queries: class 0 (bg) has 1 name, class 1 has 2 names
    logits = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]]).reshape(3, 1, 2)
    qidx = torch.tensor([0, 1, 1])
    probs, pred = postprocess(logits, qidx, 2, logit_scale=1.0, background=True)
    p = torch.tensor([0.0, 1.0, 0.5]).softmax(0)
    torch.testing.assert_close(probs[:, 0, 0], torch.stack([p[0], p[1]]))
    assert pred.tolist() == [[1, 0]]  # pixel 2: all equal -> probs 1/3 each, class 0 wins ties (first index)
    _, pred2 = postprocess(logits, qidx, 2, logit_scale=1.0, prob_thd=0.6, background=True)
    assert pred2.tolist() == [[0, 0]]  # top prob 0.506 < 0.6 -> background
    with pytest.raises(ValueError):
        postprocess(logits, qidx, 2, prob_thd=0.5, background=False)
    # area threshold without a background class: class 1 wins 1 of 4 pixels (< 30% of the image), suppressed
    lg = torch.tensor([[0.0, 0, 0, 0], [1.0, -1, -1, -1]]).reshape(2, 2, 2)
    _, pa = postprocess(lg, torch.tensor([0, 1]), 2, logit_scale=5.0, area_thd=0.3, background=False)
    assert pa.sum() == 0
    # with a background class (SCLIP's rule) the area counts against the non-background pixels only: class 1 is
    # then all of them and stays
    _, pb = postprocess(lg, torch.tensor([0, 1]), 2, logit_scale=5.0, area_thd=0.3, background=True)
    assert pb.tolist() == [[1, 0], [0, 0]]


def test_area_rule_is_sclips():
    """SCLIP: keep class c >= 1 iff area(c) > area_thd * (pixels predicted non-background); class 0 never dropped.

    10 pixels: background 6, class 1 wins 3, class 2 wins 1. Against the 4 non-background pixels, class 2 has 25%
    (> 20%: kept); against the whole image it would have 10% (dropped, the old rule)."""
    c = torch.full((3, 1, 10), -5.0)
    c[0, 0, :6] = 5.0
    c[1, 0, 6:9] = 5.0
    c[2, 0, 9] = 5.0
    c[1, 0, 9] = 4.0  # class 2's pixel has class 1 as runner-up
    _, pred = postprocess(c, torch.arange(3), 3, logit_scale=1.0, area_thd=0.2, background=True)
    assert pred.tolist() == [[0] * 6 + [1, 1, 1, 2]]
    _, pred = postprocess(c, torch.arange(3), 3, logit_scale=1.0, area_thd=0.3, background=True)
    assert pred.tolist() == [[0] * 6 + [1, 1, 1, 1]]  # 25% <= 30%: class 2 dropped, its pixel goes to class 1


def test_shipped_classnames():
    sizes = {"voc20": 20, "voc21": 21, "context59": 59, "context60": 60, "coco_stuff171": 171, "coco_object": 81,
             "cityscapes": 19, "ade20k": 150}
    for name, n in sizes.items():
        assert len(read_classnames(name)) == n
    assert read_classnames("voc21")[15][0] == "person" and len(read_classnames("voc21")[15]) == 7


def test_zeroshot_pipeline_on_tiny_clip(tmp_path):
    """End to end on a tiny CLIP: class file with synonyms, ignore pixels, per-image and dataset metrics agree."""
    from lastvit.models.clip import CLIP

    torch.manual_seed(0)
    clip = CLIP("vit_micro_patch8_64", text=dict(context_length=16, vocab_size=64, width=32, heads=2, layers=1),
                embed_dim=16).eval()
    f = tmp_path / "cls.txt"
    f.write_text("cat, kitty\ndog\n")
    cfg = ZeroShotSegConfig(classnames=str(f), short_side=None, crop=32, stride=16, background=False)
    img = torch.randn(3, 32, 48)
    seg = torch.zeros(32, 48, dtype=torch.long)
    seg[:, 24:] = 1
    seg[0, 0] = 255
    res = evaluate_zeroshot_seg(clip, [{"image": img, "seg": seg, "id": "x"}], cfg)
    assert res["images"] == 1 and len(res["per_class"]) == 2 and res["pixels"] == 32 * 48 - 1
    assert res["per_class"][0]["class"] == "cat"
    assert res["per_image"][0]["id"] == "x"
    # one image: the image's own mIoU is the dataset mIoU
    assert math.isclose(res["per_image"][0]["mIoU"], res["mIoU"], rel_tol=1e-9)


def _pamr_by_hand(img, m, num_iter, dilations):
    """PAMR from its definition, pixel by pixel: affinities over dilated 3x3 neighbourhoods (borders replicated)."""
    _, h, w = img.shape
    clamp = lambda y, x: (min(max(y, 0), h - 1), min(max(x, 0), w - 1))  # noqa: E731
    offs = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    alpha = torch.zeros(len(offs), h, w)
    for y in range(h):
        for x in range(w):
            vals = [img[:, y, x]] * len(dilations) + [img[:, clamp(y + a, x + b)[0], clamp(y + a, x + b)[1]]
                                                      for a, b in offs]
            sigma = torch.stack(vals).std(0)  # per channel, unbiased
            k = torch.stack([-((img[:, y, x] - v).abs() / (1e-8 + 0.1 * sigma)).mean() for v in vals[len(dilations):]])
            alpha[:, y, x] = k.softmax(0)
    for _ in range(num_iter):
        new = torch.zeros_like(m)
        for y in range(h):
            for x in range(w):
                for j, (a, b) in enumerate(offs):
                    yy, xx = clamp(y + a, x + b)
                    new[:, y, x] += alpha[j, y, x] * m[:, yy, xx]
        m = new
    return m


def test_pamr_matches_its_definition_and_respects_edges():
    from lastvit.evaluate.zeroshot_seg import pamr

    torch.manual_seed(0)
    img, m = torch.randn(3, 5, 6), torch.randn(2, 5, 6)
    torch.testing.assert_close(pamr(img, m, 3, (1, 2)), _pamr_by_hand(img, m, 3, (1, 2)), rtol=1e-4, atol=1e-5)
    # a colour edge stops the propagation: left half dark, right half bright, labels start on the left only
    img = torch.zeros(3, 8, 8)
    img[:, :, 4:] = 1.0
    img += 0.01 * torch.randn(3, 8, 8)
    lab = torch.zeros(1, 8, 8)
    lab[:, :, :2] = 1.0
    out = pamr(img, lab, 10, (1,))
    assert out[0, :, :4].mean() > 0.3 and out[0, :, 4:].max() < 1e-3


def test_presets_are_sclips_released_configs():
    from lastvit.evaluate.presets import SEG_PRESETS

    p = SEG_PRESETS
    assert (p["voc21"]["logit_scale"], p["voc21"]["prob_thd"], p["voc21"]["area_thd"]) == (65.0, 0.1, 0.1)
    for name in ("context60", "coco_object"):  # cfg_context60.py / cfg_coco_object.py
        assert (p[name]["logit_scale"], p[name]["prob_thd"], p[name].get("area_thd")) == (50.0, 0.1, None)
        assert p[name]["background"] is True
    assert p["ade20k"]["short_side"] == 336  # Resize(scale=(2048, 336), keep_ratio=True)
    assert {n: p[n]["short_side"] for n in ("voc20", "context59", "coco_stuff171", "cityscapes")} == {
        "voc20": 336, "context59": 336, "coco_stuff171": 448, "cityscapes": 560}
    for name in ("voc20", "context59", "ade20k", "coco_stuff171", "cityscapes"):  # base config: 40, no thresholds
        assert "logit_scale" not in p[name] and "prob_thd" not in p[name] and "area_thd" not in p[name]


def test_background_class_is_reported_as_background(tmp_path):
    from lastvit.models.clip import CLIP

    torch.manual_seed(0)
    clip = CLIP("vit_micro_patch8_64", text=dict(context_length=16, vocab_size=64, width=32, heads=2, layers=1),
                embed_dim=16).eval()
    cfg = ZeroShotSegConfig(classnames="voc21", short_side=None, crop=32, stride=16, logit_scale=65.0,
                            prob_thd=0.1, area_thd=0.1, pamr_steps=2)
    res = evaluate_zeroshot_seg(clip, [{"image": torch.randn(3, 32, 40), "seg": torch.zeros(32, 40, dtype=torch.long),
                                        "id": "a"}], cfg)
    assert read_classnames("voc21")[0][0] == "sky"  # SCLIP's queries for the background class stay
    assert res["per_class"][0]["class"] == "background" and res["per_class"][1]["class"] == "aeroplane"


def test_synthetic_preset_reads_a_synth_tree(tmp_path):
    """`--dataset synthetic`: the preset alone (plus root) reads a `lastvit data synth` tree's class maps."""
    from lastvit.data import SyntheticConfig, SyntheticDataset, build_eval_dataset, write_imagefolder
    from lastvit.evaluate.presets import remap_labels, seg_preset

    root = tmp_path / "synth"
    write_imagefolder(SyntheticDataset(SyntheticConfig(), split="test", size=3, seed=0), root)
    pre = seg_preset("synthetic", root)
    assert pre["opts"] == {"img_dir": "test", "ann_dir": "Segmentation/test", "img_suffix": ".png"}
    assert pre["classnames"] == f"{root}/classes.txt" and pre["background"] is False and pre["short_side"] is None
    assert seg_preset("synthetic", root, "val")["opts"]["ann_dir"] == "Segmentation/val"
    ds = build_eval_dataset(pre["reader"], root, split=pre["split"], image_size=None, resize=None, **pre["opts"])
    s = ds[0]
    seg = remap_labels(torch.as_tensor(s["seg"]), pre["label"])
    classes = read_classnames(pre["classnames"])
    assert len(ds) == 3 and s["image"].shape[-2:] == seg.shape
    # background pixels are ignored; object pixels hold a class of classes.txt
    vals = set(seg.unique().tolist())
    assert 255 in vals and vals - {255} and max(vals - {255}) < len(classes)
    with pytest.raises(ValueError, match="unknown zero-shot segmentation preset"):
        seg_preset("nope")
