"""CLIP training: steps reduce the loss on a fixed batch; fit() writes a loadable model; frozen text tower;
fine-tuning starts from a local open_clip checkpoint with the readout switched to LazyStrike."""

from __future__ import annotations

import json

import pytest
import torch
from open_clip.model import CLIP as OpenClipCLIP
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from lastvit.checkpoints.clip import load_clip
from lastvit.data import SHAPES
from lastvit.models.clip import CLIP
from lastvit.train import fit
from lastvit.train.clip import ClipModule, build, resolve_config

TINY = {
    "model": {"vision": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
              "text": {"context_length": 12, "width": 32, "heads": 2, "layers": 1}, "embed_dim": 16,
              "aggregator_kwargs": {"k": 2}},
    "data": {"synthetic": {"image_size": 32, "num_classes": 4}, "train_size": 16, "val_size": 8, "global_batch": 8},
    "optim": {"lr": 2e-3, "warmup_steps": 1},
    "trainer": {"max_steps": 3, "progress_bar": False, "log_every": 1},
}


def _batch(module: ClipModule):
    from lastvit.data import SyntheticConfig, SyntheticDataset

    ds = SyntheticDataset(SyntheticConfig(image_size=32, num_classes=4), split="train", size=8)
    b = ds.batch(list(range(8)))
    return {"image": b["image"], "text": module.model.tokenize(b["caption"])}


def _steps(module: ClipModule, batch, n: int) -> list[float]:
    opt = module.configure_optimizers()["optimizer"]
    for g in opt.param_groups:
        g["lr"] = 2e-3  # no warm-up here: plain AdamW steps on one batch
    losses = []
    for _ in range(n):
        loss = module.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_steps_reduce_loss_on_fixed_batch():
    torch.manual_seed(0)
    module = ClipModule(TINY)
    losses = _steps(module, _batch(module), 8)
    assert losses[-1] < 0.8 * losses[0], losses


def test_frozen_text_tower_does_not_move():
    torch.manual_seed(0)
    module = ClipModule({**TINY, "model": {**TINY["model"], "freeze_text": True}})
    text0 = {k: v.clone() for k, v in module.model.text.state_dict().items()}
    vis0 = module.model.visual.head.weight.clone()
    _steps(module, _batch(module), 2)
    assert all(torch.equal(v, module.model.text.state_dict()[k]) for k, v in text0.items())
    assert not torch.equal(vis0, module.model.visual.head.weight)


def test_fit_writes_loadable_model(tmp_path):
    res = fit({**TINY, "task": "clip", "out_dir": str(tmp_path)})
    m = res["metrics"]
    assert m["steps"] == 3 and (tmp_path / "model.pt").is_file() and res["model_path"] == tmp_path / "model.pt"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["task"] == "clip" and saved["files"]["model"] == "model.pt"
    saved = saved["metrics"]
    assert saved["steps"] == 3 and "zero_shot" in saved["after"] and saved["after"]["chance_top1"] == 25.0
    assert "zero_shot" in saved["before"]  # the untrained model, measured before the first step
    loaded = load_clip(tmp_path / "model.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), res["model"].encode_image(x))


def test_finetune_from_open_clip_checkpoint_with_lazystrike(tmp_path):
    torch.manual_seed(0)
    oc = OpenClipCLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8,
                                                             image_size=32),
                      text_cfg=CLIPTextCfg(context_length=12, vocab_size=49408, width=32, heads=2, layers=1))
    path = tmp_path / "oc.pt"
    torch.save(oc.state_dict(), path)
    cfg = {**TINY, "model": {"checkpoint": str(path), "aggregator": "lazystrike", "aggregator_kwargs": {"k": 4},
                             "arch_overrides": {"num_heads": 2, "text_heads": 2}}}
    module, data = build(cfg)
    assert isinstance(module.model, CLIP)
    assert module.model.visual.aggregator_name == "lazystrike" and module.model.visual.aggregator.k == 4
    torch.testing.assert_close(module.model.text.token_embedding.weight, oc.token_embedding.weight)
    data.setup()
    assert data.classnames == list(SHAPES[:4])
    # every synthetic caption names its class: the zero-shot prompts "a {}" ask the right question
    tr = data.train_set
    assert all(data.classnames[int(y)] in c for y, c in zip(tr.labels, tr.captions))
    assert tr.text.shape == (16, 12)
    assert resolve_config(cfg)["data"]["global_batch"] == 8


def test_old_batch_spelling_is_read_with_a_note(capsys):
    old = {**TINY, "data": {k: v for k, v in TINY["data"].items() if k != "global_batch"},
           "optim": {**TINY["optim"], "batch_size": 8}}
    cfg = resolve_config(old, src="old.yaml")
    assert cfg["data"]["global_batch"] == 8 and "batch_size" not in cfg["optim"]
    assert "old.yaml: optim.batch_size is deprecated, use data.global_batch" in capsys.readouterr().err
    resolve_config(old, src="old.yaml")
    assert "deprecated" not in capsys.readouterr().err  # said once
    both = {**TINY, "optim": {**TINY["optim"], "batch_size": 8}}
    with pytest.raises(ValueError, match="both optim.batch_size"):
        resolve_config(both)
