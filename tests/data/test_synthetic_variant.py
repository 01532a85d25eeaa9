"""The self-supervision variant of the synthetic benchmark (issue 13.3): flip-invariant class cues, an
object-dominant option, a grey background; every knob at its default leaves the original benchmark unchanged.
Also the probe driver of the variant's recipe (scripts/dino_probe.py): its step-0 row is the untrained network."""

import dataclasses
import hashlib
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from lastvit.data.synthetic import PATTERN_STYLES, SyntheticConfig, class_pattern, generate_batch
from lastvit.recipes import load_benchmark, load_recipe

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "dino_probe.py"
DEMO = dict(num_classes=6, min_size=0.3, max_size=0.5, clutter=6, pattern=0.6)


def _fingerprint(g: dict) -> str:
    h = hashlib.sha256()
    for k in ("masks", "boxes", "labels"):
        h.update(g[k].numpy().tobytes())
    h.update("|".join(g["captions"]).encode())
    return h.hexdigest()


# Recorded from lastvit.data.synthetic at commit 17c1495, before the variant knobs existed (64 val images).
@pytest.mark.parametrize("kw, digest, s1, s2", [
    ({}, "946f4378a6873a9005eb559d4319750bd03d61f7aa54fab098d0da9ad65daec3", 393630.65666825476, 219462.0304001571),
    (DEMO, "0f77c10bcb84f85931ec622b4d1083a4e49bbb5ec9da371132b2ba3ec825a52b", 391085.51431949995,
     218576.23378912517),
])
def test_defaults_reproduce_the_original_benchmark(kw, digest, s1, s2):
    g = generate_batch(SyntheticConfig(**kw), range(64), "val")
    assert _fingerprint(g) == digest
    x = g["images"].double()
    assert x.sum().item() == pytest.approx(s1, rel=1e-9) and (x * x).sum().item() == pytest.approx(s2, rel=1e-9)
    explicit = SyntheticConfig(**kw, pattern_style="stripes", min_object_area=0.0, background_chroma=1.0)
    assert torch.equal(generate_batch(explicit, range(64), "val")["images"], g["images"])


def _centred(H: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.arange(H, dtype=torch.float32) + 0.5 - H / 2
    return c[None, :].expand(H, H), c[:, None].expand(H, H)  # x (columns), y (rows)


def test_stripes_style_is_the_original_definition():
    # orientation (c % 4) * 45 degrees, period 3 / 5 / 7 px by c // 4, phase from the pixel centres (i + 0.5)
    cfg = SyntheticConfig(num_classes=12, image_size=32)
    x, y = _centred(32)
    x, y = x + 16, y + 16
    f = class_pattern(cfg, torch.arange(12))
    for c in range(12):
        th = (c % 4) * math.pi / 4
        want = torch.cos(2 * math.pi * (x * math.cos(th) + y * math.sin(th)) / (3 + 2 * (c // 4)))
        assert torch.allclose(f[c], want, atol=1e-4)


def test_flip_invariant_style_from_its_definition():
    cfg = SyntheticConfig(num_classes=12, image_size=64, pattern_style="flip_invariant")
    x, y = _centred(64)
    f = class_pattern(cfg, torch.arange(12))
    for c in range(12):
        u = y if c % 2 else x  # 0 degrees (varies along x) for even classes, 90 degrees for odd
        assert torch.allclose(f[c], torch.cos(2 * math.pi * u / (3 + 2 * (c // 2))), atol=1e-4)


def test_flip_invariant_cue_survives_a_flip():
    inv = SyntheticConfig(num_classes=12, pattern_style="flip_invariant")
    f = class_pattern(inv, torch.arange(12))
    assert torch.equal(f.flip(-1), f)  # every class's field maps onto itself, pixel for pixel
    for a in range(12):
        for b in range(a + 1, 12):
            assert (f[a].flip(-1) - f[b]).abs().max() > 0.5  # ... and onto no other class's
    # the original stripes are not flip-invariant: 45 degrees flips onto 135 degrees (class 1 onto class 3)
    old = class_pattern(SyntheticConfig(num_classes=12), torch.arange(12))
    assert (old[1].flip(-1) - old[1]).abs().max() > 1.0


def test_flipped_image_carries_its_class_pattern():
    """End to end: the renderer's stripe contribution in a horizontally flipped image is the pattern of the same
    class (measured where neither image is clipped)."""
    kw = dict(num_classes=6, min_size=0.5, max_size=0.8, clutter=0, texture=0.0, pattern_style="flip_invariant")
    plain = generate_batch(SyntheticConfig(**kw, pattern=0.0), range(24), "val")
    pat = generate_batch(SyntheticConfig(**kw, pattern=0.4), range(24), "val")
    assert torch.equal(plain["masks"], pat["masks"]) and torch.equal(plain["labels"], pat["labels"])
    a, b = plain["images"].flip(-1), pat["images"].flip(-1)
    m = plain["masks"].flip(-1)
    want = 0.5 * 0.4 * class_pattern(SyntheticConfig(**kw), plain["labels"])
    checked = 0
    for i in range(24):
        ok = m[i][None] & (b[i] > 1e-4) & (b[i] < 1 - 1e-4) & (a[i] > 1e-4) & (a[i] < 1 - 1e-4)  # (3, H, W)
        if ok.sum() < 50:  # a near-black or near-white object is clipped almost everywhere
            continue
        checked += 1
        assert torch.allclose((b[i] - a[i])[ok], want[i].expand(3, -1, -1)[ok], atol=1e-5)
    assert checked >= 12


@pytest.mark.parametrize("split", ["train", "val"])
def test_object_dominant_option_covers_a_fifth_of_the_pixels(split):
    base = dict(num_classes=6, min_size=0.3, max_size=0.5, clutter=6, pattern=0.6)
    area = generate_batch(SyntheticConfig(**base, min_object_area=0.2), range(600), split)["masks"].float()
    assert area.mean((1, 2)).min() >= 0.2
    default = generate_batch(SyntheticConfig(**base), range(600), split)["masks"].float()
    assert default.mean((1, 2)).max() < 0.2  # the knob is what makes the object dominant


def test_packaged_ssl_benchmark_is_object_dominant_grey_and_flip_invariant():
    cfg = SyntheticConfig(**load_benchmark("synthetic_ssl"))
    assert cfg.pattern_style == "flip_invariant" and cfg.background_chroma == 0.0 and not cfg.gradient
    g = generate_batch(cfg, range(300), "train")
    assert g["masks"].float().mean((1, 2)).min() >= 0.2
    assert sorted(set(g["labels"].tolist())) == list(range(6))


def test_background_chroma_greys_only_the_background():
    kw = dict(num_classes=6, clutter=0, texture=0.0, pattern=0.0)
    colour = generate_batch(SyntheticConfig(**kw), range(32), "val")
    grey = generate_batch(SyntheticConfig(**kw, background_chroma=0.0), range(32), "val")
    for k in ("masks", "boxes", "labels"):
        assert torch.equal(colour[k], grey[k])  # same draws: nothing but the background colour moves
    bg = ~grey["masks"][:, None].expand_as(grey["images"])
    x = grey["images"].permute(1, 0, 2, 3)[bg.permute(1, 0, 2, 3)].reshape(3, -1)
    assert (x - x.mean(0)).abs().max() < 1e-5  # R = G = B on the background
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    lc, lg = (colour["images"] * luma).sum(1), (grey["images"] * luma).sum(1)
    assert torch.allclose(lc[~grey["masks"]], lg[~grey["masks"]], atol=1e-5)  # luminance kept
    y = colour["images"].permute(1, 0, 2, 3)[bg.permute(1, 0, 2, 3)].reshape(3, -1)
    assert (y - y.mean(0)).abs().max() > 0.1


def test_variant_knobs_checked():
    assert PATTERN_STYLES == ("stripes", "flip_invariant")
    with pytest.raises(ValueError, match="pattern_style"):
        SyntheticConfig(pattern_style="rings")
    with pytest.raises(ValueError, match="min_object_area"):
        SyntheticConfig(min_object_area=0.7)
    with pytest.raises(ValueError, match="background_chroma"):
        SyntheticConfig(background_chroma=1.5)
    assert dataclasses.asdict(SyntheticConfig())["pattern_style"] == "stripes"


def _probe_module():
    spec = importlib.util.spec_from_file_location("dino_probe", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_probe_driver_step0_is_the_untrained_network(tmp_path):
    from lastvit.paradigms import untrained_model
    from lastvit.train.dino import DINODataModule, evaluate_backbone

    over = ["data.train_size=64", "data.val_size=32", "data.global_batch=16", "crops.n_local=1",
            "eval.linear_epochs=5", "model.aggregator=cls"]
    cfg = load_recipe("self_synthetic_ssl", over)
    s = _probe_module().run_probe(cfg, tmp_path, every=2, max_minutes=5, max_steps=3)
    rows = [json.loads(line) for line in (tmp_path / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 3] and s["steps"] == 3
    assert s["recipe"]["model"]["aggregator"] == "cls"
    dm = DINODataModule(cfg)
    ref = evaluate_backbone(untrained_model(cfg), *dm.eval_loaders(), s["recipe"])
    assert rows[0]["knn_top1"] == ref["knn_top1"] and s["untrained"]["knn_top1"] == ref["knn_top1"]
    assert rows[0]["linear_top1"] == pytest.approx(ref["linear_top1"])
    assert s["gain"]["knn_top1"] == rows[-1]["knn_top1"] - rows[0]["knn_top1"]
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 3
