"""DINO's knobs: every multi-crop augmentation is a key with the official default; off leaves the crop unchanged;
object-keeping crops overlap the box; the head, temperature, momentum and lr-scaling keys reach the module."""

from __future__ import annotations

import pytest
import torch

from lastvit.data.multicrop import AUG_DEFAULTS, BatchMultiCrop, MultiCropTransform
from lastvit.train.dino import DEFAULTS, DINODataModule, DINOModule, resolve_config

OFF = {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": [0.0, 0.0, 0.0], "solarize_p": 0.0}
TINY = {
    "model": {"name": "vit_micro_patch8_64", "arch": {"depth": 1, "embed_dim": 48, "num_heads": 3},
              "drop_path_rate": 0.0},
    "dino": {"out_dim": 32, "hidden_dim": 64, "bottleneck_dim": 16},
    "crops": {"n_local": 2},
    "data": {"global_batch": 8, "train_size": 16, "synthetic": {"num_classes": 2}},
    "trainer": {"max_epochs": 2},
}


def _images(b: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _norm(aug: BatchMultiCrop, x: torch.Tensor) -> torch.Tensor:
    return (x - aug.mean) / aug.std


def test_defaults_are_the_official_dino_recipe():
    # facebookresearch/dino main_dino.py DataAugmentationDINO: ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, greyscale
    # p 0.2, GaussianBlur p 1.0 / 0.1 / 0.5 with sigma (0.1, 2.0), solarisation p 0.2 on the second global crop,
    # flip p 0.5; crops (0.4, 1) / (0.05, 0.4); lr 5e-4 scaled by batch / 256; teacher momentum 0.996
    assert AUG_DEFAULTS == {"flip": True, "jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2,
                            "hue": 0.1, "gray_p": 0.2, "blur_p": [1.0, 0.1, 0.5], "blur_sigma": [0.1, 2.0],
                            "solarize_p": 0.2, "keep_object": False}
    cr, o, d = DEFAULTS["crops"], DEFAULTS["optim"], DEFAULTS["dino"]
    assert (cr["global_scale"], cr["local_scale"]) == ([0.4, 1.0], [0.05, 0.4])
    assert {k: cr[k] for k in AUG_DEFAULTS} == AUG_DEFAULTS
    assert (o["lr"], o["lr_scaling"], d["momentum_teacher"], d["use_bn_in_head"]) == (0.0005, "linear", 0.996, False)


def test_photometric_off_leaves_the_crop_unchanged():
    x = _images()
    aug = BatchMultiCrop(**OFF)
    out = aug.photometric(x, blur_p=0.0, solarize_p=0.0, g=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, _norm(aug, x), rtol=0, atol=0)


@pytest.mark.parametrize("knob", ["jitter_p", "gray_p", "blur", "solarize"])
def test_each_augmentation_changes_the_crop_only_when_on(knob):
    x = _images(size=224 if knob == "blur" else 32)  # blur sigmas are DINO's px at 224 px, scaled by size / 224
    on = dict(OFF)
    if knob in ("jitter_p", "gray_p"):
        on[knob] = 1.0
    aug_on, aug_off = BatchMultiCrop(**on), BatchMultiCrop(**OFF)
    blur_p = 1.0 if knob == "blur" else 0.0
    sol_p = 1.0 if knob == "solarize" else 0.0
    g = torch.Generator().manual_seed(2)
    changed = aug_on.photometric(x, blur_p=blur_p, solarize_p=sol_p, g=g)
    plain = aug_off.photometric(x, blur_p=0.0, solarize_p=0.0, g=torch.Generator().manual_seed(2))
    torch.testing.assert_close(plain, _norm(aug_off, x), rtol=0, atol=0)
    assert (changed - plain).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every image changed


def test_turning_one_augmentation_off_changes_nothing_else():
    x = _images()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    with_gray = BatchMultiCrop(**{**OFF, "gray_p": 1.0}).photometric(x, 0.0, 0.0, g1)
    gray_then_jitter = BatchMultiCrop(**{**OFF, "gray_p": 1.0, "jitter_p": 0.0}).photometric(x, 0.0, 0.0, g2)
    torch.testing.assert_close(with_gray, gray_then_jitter, rtol=0, atol=0)


def test_flip_off_keeps_orientation():
    x = torch.zeros(64, 3, 32, 32)
    x[..., :16] = 1.0  # bright left half
    for flip, expect_flipped in ((False, False), (True, True)):
        aug = BatchMultiCrop(global_scale=(1.0, 1.0), flip=flip, **OFF)
        crops = aug.resized_crop(x, 32, (1.0, 1.0), torch.Generator().manual_seed(0))
        left_brighter = crops[..., :16].mean(dim=(1, 2, 3)) > crops[..., 16:].mean(dim=(1, 2, 3))
        assert bool((~left_brighter).any()) == expect_flipped
        if not flip:
            assert bool(left_brighter.all())


def test_object_keeping_crops_overlap_the_box():
    b, size = 256, 64
    x = torch.zeros(b, 3, size, size)
    boxes = torch.tensor([[2.0, 3.0, 14.0, 12.0]]).repeat(b, 1)  # a small box in a corner
    x[:, :, 3:12, 2:14] = 1.0
    g = torch.Generator().manual_seed(0)
    aug = BatchMultiCrop(keep_object=True, **OFF)
    kept = aug.resized_crop(x, 16, (0.05, 0.2), g, boxes=boxes)
    assert bool((kept.amax(dim=(1, 2, 3)) > 0.99).all())  # every crop holds object pixels
    free = aug.resized_crop(x, 16, (0.05, 0.2), torch.Generator().manual_seed(0))
    assert bool((free.amax(dim=(1, 2, 3)) < 0.01).any())  # without the knob many crops miss it
    with pytest.raises(ValueError, match="keep_object needs the object boxes"):
        aug(x)


def test_datamodule_feeds_boxes_to_object_keeping_crops():
    cfg = resolve_config({**TINY, "crops": {"n_local": 2, "keep_object": True}})
    dm = DINODataModule(cfg)
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["crops"]) == 4 and batch["crops"][0].shape == (8, 3, 64, 64)


def test_bad_knobs_are_config_errors():
    with pytest.raises(ValueError, match="crops: multi-crop: hue must be in"):
        resolve_config({**TINY, "crops": {"hue": 0.7}})
    with pytest.raises(ValueError, match="blur_p must be 3 probabilities"):
        resolve_config({**TINY, "crops": {"blur_p": [1.0]}})
    with pytest.raises(ValueError, match="keep_object needs object boxes"):
        resolve_config({**TINY, "crops": {"keep_object": True}, "data": {"kind": "imagefolder", "root": "/x"}})
    with pytest.raises(ValueError, match="lr_scaling must be"):
        resolve_config({**TINY, "optim": {"lr_scaling": "sqrt"}})
    with pytest.raises(ValueError, match="keep_object needs object boxes"):
        MultiCropTransform(keep_object=True)


def test_head_temperature_momentum_and_lr_scaling_reach_the_module():
    m = DINOModule({**TINY, "dino": {**TINY["dino"], "use_bn_in_head": True, "out_dim": 24, "teacher_temp": 0.06,
                                     "warmup_teacher_temp": 0.03, "warmup_teacher_temp_epochs": 1,
                                     "momentum_teacher": 0.9},
                    "optim": {"lr": 0.001, "warmup_epochs": 0}, "data": {**TINY["data"], "global_batch": 512}})
    assert any(isinstance(x, torch.nn.BatchNorm1d) for x in m.student.head.modules())
    assert m.student.head(torch.randn(2, 48)).shape == (2, 24) and m.dino_loss.center.shape[-1] == 24
    assert m.dino_loss.teacher_temp(0) == pytest.approx(0.03) and m.dino_loss.teacher_temp(1) == pytest.approx(0.06)
    s = m.make_schedules(4)
    assert s["lr"][0] == pytest.approx(0.001 * 512 / 256) and s["momentum"][0] == pytest.approx(0.9)
    flat = DINOModule({**TINY, "optim": {"lr": 0.001, "warmup_epochs": 0, "lr_scaling": "none"},
                       "data": {**TINY["data"], "global_batch": 512}})
    assert flat.make_schedules(4)["lr"][0] == pytest.approx(0.001)


def test_multicrop_transform_takes_the_knobs():
    from PIL import Image

    t = MultiCropTransform(global_size=32, local_size=16, n_local=1, flip=False, **OFF)
    img = Image.new("RGB", (40, 40), (200, 10, 10))
    crops = t(img)
    assert [c.shape[-1] for c in crops] == [32, 32, 16]
    # a flat image with every photometric augmentation off: each crop is the normalised colour
    ref = torch.tensor([200, 10, 10]) / 255.0
    mean, std = torch.tensor(t.global1.transforms[-1].transforms[-1].mean), \
        torch.tensor(t.global1.transforms[-1].transforms[-1].std)
    for c in crops:
        torch.testing.assert_close(c[:, 0, 0], (ref - mean) / std, rtol=0, atol=1e-5)
