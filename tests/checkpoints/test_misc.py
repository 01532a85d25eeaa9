"""Lightning-wrapped LastViT state dicts, lastvit DINO exports with an attn readout, safetensors, model names
supplying num_heads, and pos-embed resampling to another image size."""

from __future__ import annotations

import pytest
import torch

import lastvit
from lastvit.checkpoints import CheckpointError, read_checkpoint

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))


def test_lightning_wrapped_lastvit_state_dict_and_model_name(micro_vit, tmp_path):
    m = micro_vit("cls", num_classes=4)
    obj = {"state_dict": {"model." + k: v for k, v in m.state_dict().items()}, "epoch": 2, "global_step": 10,
           "pytorch-lightning_version": "2.6.6", "optimizer_states": [], "lr_schedulers": []}
    path = tmp_path / "last.ckpt"
    torch.save(obj, path)
    conv = read_checkpoint(path)
    assert conv.format == "timm" and conv.head == ("linear", 4) and not conv.unmapped
    assert conv.arch["num_heads"] == 1  # width 96 / 64: heads are not in the weights
    # the preset name supplies num_heads=3
    m2 = lastvit.create_model("vit_micro_patch8_64", checkpoint=str(path), aggregator="cls").eval()
    assert m2.arch["num_heads"] == 3
    with torch.no_grad():
        assert torch.equal(m2(X), m(X))
    with pytest.raises(CheckpointError, match="embed_dim=192 but the checkpoint has embed_dim=96"):
        lastvit.create_model("vit_mini_patch8_64", checkpoint=str(path))


def test_attn_readout_in_dino_export_and_args(micro_vit, tmp_path):
    m = micro_vit("attn", num_classes=0, aggregator_kwargs={"num_heads": 3})
    head = {"head.mlp.0.weight": torch.randn(8, 96), "head.last_layer.weight_g": torch.ones(5, 1),
            "head.last_layer.weight_v": torch.randn(5, 8)}
    teacher = {**{"backbone." + k: v for k, v in m.encoder.state_dict().items()},
               **{"backbone.aggregator." + k: v for k, v in m.aggregator.state_dict().items()}, **head}
    args = {"arch": "vit_micro_patch8_64", "aggregator": "attn", "aggregator_kwargs": {"num_heads": 3}}
    torch.save({"teacher": teacher, "student": {"module." + k: v for k, v in teacher.items()}, "epoch": 3,
                "args": args}, tmp_path / "dino.pth")
    conv = read_checkpoint(tmp_path / "dino.pth")
    assert conv.readout == ("attn", {"num_heads": 3}) and conv.arch["num_heads"] == 3
    m2 = lastvit.create_model(checkpoint=str(tmp_path / "dino.pth")).eval()
    assert m2.aggregator_name == "attn" and m2.load_report.ok
    with torch.no_grad():
        assert torch.equal(m2(X), m(X))


def test_safetensors_and_pos_embed_resampling(micro_vit, tmp_path):
    from safetensors.torch import save_file
    from timm.layers import resample_abs_pos_embed

    m = micro_vit("mean", num_classes=0)
    save_file({k: v.contiguous() for k, v in m.encoder.state_dict().items()}, str(tmp_path / "model.safetensors"))
    conv = read_checkpoint(tmp_path / "model.safetensors")
    assert conv.format == "timm" and conv.arch["img_size"] == 64
    # a model for 96 px: the 8x8 grid of position embeddings is resampled to 12x12 (bicubic, class slot kept)
    m96 = lastvit.create_model(checkpoint=str(tmp_path / "model.safetensors"), aggregator="mean", num_heads=3,
                               img_size=96).eval()
    assert any("pos_embed resampled" in n for n in m96.load_report.notes)
    ref = resample_abs_pos_embed(m.encoder.pos_embed.detach(), [12, 12], [8, 8], num_prefix_tokens=1)
    assert torch.allclose(m96.encoder.pos_embed.detach(), ref)
    assert torch.equal(m96.encoder.blocks[0].attn.qkv.weight, m.encoder.blocks[0].attn.qkv.weight)
