"""The ovdet task on Lightning: a 2-image training step (finite loss, frozen CLIP bit-identical), checkpoint
contents (trainable parts + the CLIP's path and sha256), resume and reloading the exported detector."""

from __future__ import annotations

import math

import pytest
import torch

from lastvit.checkpoints import save_clip
from lastvit.data.synthetic import SyntheticConfig
from lastvit.detection.synthetic import write_ovdet_synthetic
from lastvit.models.clip import CLIP

torch.set_num_threads(1)

DET = {"fpn_dim": 16, "roi_conv_dim": 16, "roi_fc_dim": 32, "roi_convs": 1, "roi_fcs": 1, "anchor_scale": 4.0,
       "finest_scale": 8.0, "rpn_pre_nms_train": 100, "rpn_post_nms_train": 50, "rpn_pre_nms_test": 100,
       "rpn_post_nms_test": 20, "roi_batch": 32, "masks": True, "mask_roi_size": 7, "mask_convs": 1,
       "norm": "gn", "vlm_temperature": 75.0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ovdet")
    torch.manual_seed(0)
    clip = CLIP({"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2},
                {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}, 16,
                aggregator="cls")
    save_clip(clip, root / "clip.pt")
    cfg = SyntheticConfig(num_classes=4, multi_object=2, min_size=0.3, max_size=0.5)
    counts = write_ovdet_synthetic(root / "data", cfg, ["disk", "square", "triangle"], ["cross"], 6, 2)
    return root, clip, counts


def _recipe(root, out, steps, resume=False):
    d = root / "data"
    return {"task": "ovdet", "out_dir": str(out),
            "model": {"clip": str(root / "clip.pt"), "detector": dict(DET), "templates": ["a {}"]},
            "data": {"kind": "lvis", "train_ann": str(d / "train.json"), "val_ann": str(d / "test.json"),
                     "train_images": str(d), "val_images": str(d), "image_size": 64, "global_batch": 2,
                     "val_batch": 2, "num_workers": 0},
            "optim": {"warmup_steps": 1},
            "trainer": {"accelerator": "cpu", "max_steps": steps, "progress_bar": False, "ckpt_every": 1,
                        "resume": resume, "log_every": 1}}


def test_two_image_step_frozen_clip_bit_identical(setup, tmp_path):
    from lastvit.train import fit

    root, clip, counts = setup
    assert counts["train"]["images"] >= 2 and counts["test"]["annotations"] >= 2
    before = {k: v.clone() for k, v in clip.visual.state_dict().items()}
    res = fit(_recipe(root, tmp_path / "run", 1))
    det = res["model"]
    m = res["metrics"]
    assert math.isfinite(m["train_loss_first"]) and res["step"] == 1
    after = det.backbone.vit.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen: bit-identical after the step
    assert {"val/segm_AP", "val/segm_APr"} <= set(m)
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not any(k.startswith("model.backbone.vit.") for k in ck["state_dict"])
    assert any(k.startswith("model.roi_heads.") for k in ck["state_dict"])
    from lastvit.train.ovdet import file_sha256

    assert ck["frozen_clip"] == {"path": str(root / "clip.pt"), "sha256": file_sha256(root / "clip.pt")}


def test_resume_and_reload(setup, tmp_path):
    from lastvit.train import fit
    from lastvit.train.ovdet import load_detector

    root, _, _ = setup
    out = tmp_path / "run"
    fit(_recipe(root, out, 1))
    res = fit(_recipe(root, out, 2, resume="auto"))
    assert res["step"] == 2
    det, meta = load_detector(out / "model.pt")
    trained = res["model"].trainable_state_dict()
    loaded = det.trainable_state_dict()
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)
    assert meta["novel"] == [False, False, False, True]
    # the frozen CLIP is checked by its hash
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_clip(CLIP({"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2},
                   {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}, 16), other)
    with pytest.raises(ValueError, match="sha256"):
        load_detector(out / "model.pt", clip_path=other)
