"""torchvision ViT state dicts and the detectron2-wrapped LaSt-ViT release, against torchvision's own forward."""

from __future__ import annotations

import pytest
import torch

import lastvit
from lastvit.checkpoints import CheckpointError, load_checkpoint, read_checkpoint


@pytest.fixture(scope="module")
def tv(ckpt_builders):
    return ckpt_builders.torchvision_vit()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(3, 3, 32, 32)


def test_cls_readout_matches_torchvision_logits_and_tokens(ckpt_builders, tv, x, tmp_path):
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    conv = read_checkpoint(path)
    assert conv.format == "torchvision" and conv.head == ("linear", 5)
    assert conv.arch["embed_dim"] == 32 and conv.arch["depth"] == 2 and conv.arch["patch_size"] == 8
    assert conv.arch["img_size"] == 32 and conv.arch["mlp_ratio"] == 2.0 and conv.arch["num_heads"] == 1
    m = lastvit.create_model(checkpoint=str(path), aggregator="cls", num_heads=2).eval()
    with torch.no_grad():
        ref_logits = tv(x)
        ref_tokens = ckpt_builders.torchvision_encoder_out(tv, x)
        rec = m.forward_tokens(x)
        logits = m(x)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert torch.allclose(rec.patches, ref_tokens[:, 1:], atol=1e-5)
    assert torch.allclose(rec.prefix[:, 0], ref_tokens[:, 0], atol=1e-5)
    assert m.load_report.ok


def test_lazystrike_readout_and_old_mlp_names(ckpt_builders, tv, x, tmp_path):
    sd = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
          for k, v in tv.state_dict().items()}
    assert any("linear_1" in k for k in sd)
    path = tmp_path / "tv_old.pth"
    torch.save(sd, path)
    m = lastvit.create_model(checkpoint=str(path), aggregator="lazystrike", num_heads=2).eval()
    with torch.no_grad():
        patches = ckpt_builders.torchvision_encoder_out(tv, x)[:, 1:]
        ref = tv.heads(lastvit.LazyStrike()(patches))
        out = m(x)
    assert torch.allclose(out, ref, atol=1e-5)


def test_detectron2_release_layout(ckpt_builders, tv, x, tmp_path):
    sd = {"model." + k: v for k, v in tv.state_dict().items()}
    opt = torch.optim.SGD(tv.parameters(), lr=0.1, momentum=0.9)
    obj = {"model": sd, "iteration": 10, "optimizer": opt.state_dict(), "scheduler": {"last_epoch": 10}}
    path = tmp_path / "ViT_tiny.pth"
    torch.save(obj, path)
    conv = read_checkpoint(path)
    assert conv.format == "detectron2" and conv.readout == ("lazystrike", {"k": 1})
    assert sorted(conv.skipped["trainer state"]) == ["iteration", "optimizer", "scheduler"]
    m = lastvit.create_model(checkpoint=str(path), num_heads=2).eval()
    assert m.aggregator_name == "lazystrike" and m.aggregator.k == 1
    with torch.no_grad():
        ref = tv.heads(lastvit.LazyStrike(k=1)(ckpt_builders.torchvision_encoder_out(tv, x)[:, 1:]))
        assert torch.allclose(m(x), ref, atol=1e-5)
    # a detectron2 pickle holding numpy arrays (model-zoo style) reads the same after full unpickling
    obj_np = {"model": {k: v.numpy() for k, v in sd.items()}, "iteration": 10, "__author__": "someone"}
    torch.save(obj_np, tmp_path / "np.pkl")
    conv_np = read_checkpoint(tmp_path / "np.pkl")
    assert conv_np.format == "detectron2" and not any("weights_only=False" in n for n in conv_np.notes)
    assert any("allow-listed" in n and "numpy" in n for n in conv_np.notes)  # numpy is on the allow-list
    assert all(torch.equal(conv_np.state_dict[k], v) for k, v in conv.state_dict.items())
    # load into an existing model; the report names the skipped trainer state
    m2 = lastvit.create_model(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32, mlp_ratio=2.0,
                              num_classes=5, aggregator="lazystrike").eval()
    rep = load_checkpoint(m2, path)
    assert rep.format == "detectron2" and rep.ok and "trainer state" in str(rep)
    with torch.no_grad():
        assert torch.allclose(m2(x), m(x), atol=1e-6)


def test_pre_logits_unsupported_and_strict_mismatch(tv, tmp_path):
    sd = dict(tv.state_dict())
    sd["heads.pre_logits.weight"] = torch.zeros(16, 32)
    sd["heads.pre_logits.bias"] = torch.zeros(16)
    sd["heads.head.weight"] = torch.zeros(5, 16)
    path = tmp_path / "rep.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="pre_logits"):
        lastvit.create_model(checkpoint=str(path), num_heads=2)
    m = lastvit.create_model(checkpoint=str(path), num_heads=2, strict=False)
    assert isinstance(m.head, torch.nn.Identity)
    # a model of another depth / MLP width under strict: one line naming the file and the keys
    m3 = lastvit.create_model(embed_dim=32, depth=3, num_heads=2, patch_size=8, img_size=32, num_classes=5)
    torch.save(tv.state_dict(), tmp_path / "ok.pth")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(m3, tmp_path / "ok.pth")
    msg = str(e.value)
    assert str(tmp_path / "ok.pth") in msg and "missing" in msg and "blocks.2" in msg and "\n" not in msg
    rep = load_checkpoint(m3, tmp_path / "ok.pth", strict=False)
    assert rep.mismatched and any(k.startswith("encoder.blocks.2") for k in rep.missing)
