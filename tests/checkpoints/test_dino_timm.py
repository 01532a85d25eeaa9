"""DINO training checkpoints (teacher / student, DINO head skipped) and timm / DINOv2-style state dicts."""

from __future__ import annotations

import argparse
import functools

import pytest
import torch
from torch import nn

import lastvit
from lastvit.checkpoints import CheckpointError, read_checkpoint, safe_torch_load

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _dino_head_sd(prefix: str) -> dict[str, torch.Tensor]:
    """A DINO projection head (MLP + weight-normed last layer, torch parametrizations) under ``prefix``."""
    head = nn.Module()
    head.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16))
    head.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(16, 50, bias=False))
    return {prefix + k: v for k, v in head.state_dict().items()}


def _dino_ckpt(path, teacher, student):
    obj = {
        "student": {**{"module.backbone." + k: v for k, v in student.state_dict().items()},
                    **_dino_head_sd("module.head.")},
        "teacher": {**{"backbone." + k: v for k, v in teacher.state_dict().items()}, **_dino_head_sd("head.")},
        "optimizer": torch.optim.AdamW(student.parameters()).state_dict(),
        "epoch": 80,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536),
        "dino_loss": {"center": torch.zeros(1, 50)},
    }
    torch.save(obj, path)


def test_dino_teacher_default_student_on_request(ckpt_builders, tmp_path):
    teacher, student = ckpt_builders.timm_vit(seed=0), ckpt_builders.timm_vit(seed=1)
    path = tmp_path / "dino0080.pth"
    _dino_ckpt(path, teacher, student)
    conv = read_checkpoint(path)
    assert conv.format == "dino" and conv.head == ("none", 0)
    assert len(conv.skipped["dino head"]) == 6 and "dino student branch" in conv.skipped
    assert sorted(conv.skipped["trainer state"]) == ["args", "dino_loss", "epoch", "optimizer"]
    # DINO's argparse.Namespace is on the allow-list: read with weights_only=True, no opt-in needed
    assert not any("weights_only=False" in n for n in conv.notes)
    assert any("allow-listed" in n and "argparse.Namespace" in n for n in conv.notes)
    assert read_checkpoint(path, allow_pickle=False).format == "dino"
    # an object off the allow-list in the same layout: refused by default, naming it; read only on request
    obj, _ = safe_torch_load(path)
    obj["args"] = functools.partial(int, "1")
    torch.save(obj, tmp_path / "dino_partial.pth")
    with pytest.raises(CheckpointError, match="functools.partial"):
        read_checkpoint(tmp_path / "dino_partial.pth")
    conv_p = read_checkpoint(tmp_path / "dino_partial.pth", allow_pickle=True)
    assert any("weights_only=False" in n for n in conv_p.notes)
    with torch.no_grad():
        ref_t, ref_s = teacher.forward_features(X), student.forward_features(X)
        mt = lastvit.create_model(checkpoint=str(path), aggregator="cls", num_heads=2).eval()
        assert torch.allclose(mt.encode(X), ref_t, atol=1e-5)
        assert not torch.allclose(mt.encode(X), ref_s, atol=1e-3)
        ms = lastvit.create_model(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32, num_classes=0,
                                  mlp_ratio=4.0).eval()
        rep = lastvit.load_checkpoint(ms, path, dino_branch="student")
        assert rep.ok and "dino head" in rep.skipped
        assert torch.allclose(ms.encode(X), ref_s, atol=1e-5)
        ms2 = lastvit.create_model(checkpoint=str(path), num_heads=2, dino_branch="student").eval()
        assert torch.allclose(ms2.encode(X), ref_s, atol=1e-5)


def test_dino_backbone_only_and_timm_head(ckpt_builders, tmp_path):
    m = ckpt_builders.timm_vit(seed=2, num_classes=4, global_pool="token")
    torch.save(m.state_dict(), tmp_path / "timm.pth")
    conv = read_checkpoint(tmp_path / "timm.pth")
    assert conv.format == "timm" and conv.head == ("linear", 4)
    lv = lastvit.create_model(checkpoint=str(tmp_path / "timm.pth"), aggregator="cls", num_heads=2).eval()
    with torch.no_grad():
        assert torch.allclose(lv(X), m(X), atol=1e-5)
    # a whole pickled module (torch.save(model)) is read through its state_dict
    torch.save(m, tmp_path / "module.pth")
    with pytest.raises(CheckpointError, match="timm.models.vision_transformer.VisionTransformer"):
        read_checkpoint(tmp_path / "module.pth")  # a pickled module needs its classes: only with the opt-in
    conv2 = read_checkpoint(tmp_path / "module.pth", allow_pickle=True)
    assert conv2.format == "timm" and any("pickled VisionTransformer" in n for n in conv2.notes)
    assert all(torch.equal(conv2.state_dict[k], v) for k, v in conv.state_dict.items())
    # backbone-only (DINO release style) -> no head, pooled token
    bb = {k: v for k, v in m.state_dict().items() if not k.startswith("head.")}
    torch.save(bb, tmp_path / "bb.pth")
    lv2 = lastvit.create_model(checkpoint=str(tmp_path / "bb.pth"), aggregator="cls", num_heads=2).eval()
    with torch.no_grad():
        assert torch.allclose(lv2(X), m.forward_features(X)[:, 0], atol=1e-5)


def test_registers_layerscale_no_embed_class(ckpt_builders, tmp_path):
    m = ckpt_builders.timm_vit(seed=4, reg_tokens=2, no_embed_class=True, init_values=0.5)
    torch.save(m.state_dict(), tmp_path / "reg.pth")
    conv = read_checkpoint(tmp_path / "reg.pth")
    a = conv.arch
    assert a["reg_tokens"] == 2 and a["no_embed_class"] and a["init_values"] is not None and a["img_size"] == 32
    lv = lastvit.create_model(checkpoint=str(tmp_path / "reg.pth"), num_heads=2).eval()
    with torch.no_grad():
        assert torch.allclose(lv.encode(X), m.forward_features(X), atol=1e-5)


def test_dinov2_original_register_layout(ckpt_builders, tmp_path):
    """DINOv2's own names: register_tokens inserted after the position embedding, which covers [cls] + patches."""
    m = ckpt_builders.timm_vit(seed=5, reg_tokens=2, no_embed_class=True)
    sd = dict(m.state_dict())
    cls_pos = torch.randn(1, 1, 32)
    sd["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)  # DINOv2: (1, 1 + N, D)
    sd["cls_token"] = sd["cls_token"] - cls_pos
    sd["register_tokens"] = sd.pop("reg_token")
    sd["mask_token"] = torch.zeros(1, 32)
    torch.save(sd, tmp_path / "dinov2.pth")
    lv = lastvit.create_model(checkpoint=str(tmp_path / "dinov2.pth"), num_heads=2).eval()
    assert "dinov2 mask_token" in lv.load_report.skipped
    with torch.no_grad():
        assert torch.allclose(lv.encode(X), m.forward_features(X), atol=1e-5)
    # block_chunks layout (chunk size 1): blocks.<chunk>.<global index>.*
    sd_chunk = {(f"blocks.{k.split('.')[1]}.{k[len('blocks.'):]}" if k.startswith("blocks.") else k): v
                for k, v in sd.items()}
    assert "blocks.1.1.attn.qkv.weight" in sd_chunk
    torch.save(sd_chunk, tmp_path / "dinov2_chunked.pth")
    lv2 = lastvit.create_model(checkpoint=str(tmp_path / "dinov2_chunked.pth"), num_heads=2).eval()
    with torch.no_grad():
        assert torch.allclose(lv2.encode(X), m.forward_features(X), atol=1e-5)


def test_fc_norm_reported(ckpt_builders, tmp_path):
    m = ckpt_builders.timm_vit(seed=6, global_pool="avg", num_classes=3)
    torch.save(m.state_dict(), tmp_path / "avg.pth")
    with pytest.raises(CheckpointError, match="fc_norm"):
        lastvit.create_model(checkpoint=str(tmp_path / "avg.pth"), num_heads=2)
    lv = lastvit.create_model(checkpoint=str(tmp_path / "avg.pth"), num_heads=2, strict=False)
    assert any("fc_norm" in n for n in lv.load_report.notes)
