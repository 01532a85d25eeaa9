"""Safe loading (no code runs from a checkpoint), non-finite weights refused, architecture guesses never silent,
the position-embedding family recorded per format, and the official 1-layer DINO head."""

from __future__ import annotations

import builtins
import json
import math
import pathlib
import warnings

import pytest
import torch
import torch.nn.functional as F

import lastvit
from lastvit.checkpoints import ArchitectureGuessWarning, CheckpointError, LoadOptions, arch_config, read_checkpoint
from lastvit.cli import main


class _Exec:
    """Pickles as a call to builtins.exec that writes a marker file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.code = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self):
        return (builtins.exec, (self.code,))


@pytest.mark.parametrize("zip_format", [True, False])
def test_exec_payload_is_refused_and_never_runs(ckpt_builders, tmp_path, capsys, zip_format):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    sd = dict(ckpt_builders.timm_vit().state_dict())
    sd["payload"] = _Exec(marker)
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    # the command line: non-zero exit, one line naming the file, the global and the opt-in
    rc = main(["inspect", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err and "builtins.exec" in err and "--allow-pickle" in err
    rc = main(["convert", str(path), "--out", str(tmp_path / "out.pt")])
    assert rc != 0 and not (tmp_path / "out.pt").exists()
    capsys.readouterr()
    # the API
    with pytest.raises(CheckpointError, match="builtins.exec") as e:
        lastvit.create_model(checkpoint=str(path), num_heads=2)
    assert str(path) in str(e.value) and "allow_pickle=True" in str(e.value)
    with pytest.raises(CheckpointError, match="builtins.exec"):
        lastvit.load_checkpoint(lastvit.create_model(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32),
                                path)
    assert not marker.exists()


def test_supported_files_load_without_weights_only_warnings(ckpt_builders, tmp_path):
    tv = ckpt_builders.torchvision_vit()
    obj = {"model": {"model." + k: v.numpy() for k, v in tv.state_dict().items()}, "iteration": 3,
           "__author__": "model zoo"}
    torch.save(obj, tmp_path / "d2.pkl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "weights_only was not set" FutureWarning
        conv = read_checkpoint(tmp_path / "d2.pkl")
    assert conv.format == "detectron2" and not any("weights_only=False" in n for n in conv.notes)


def test_nonfinite_weights_refused_naming_the_key(ckpt_builders, tmp_path, capsys):
    m = ckpt_builders.timm_vit()
    sd = dict(m.state_dict())
    sd["blocks.1.mlp.fc2.weight"] = sd["blocks.1.mlp.fc2.weight"].clone()
    sd["blocks.1.mlp.fc2.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="non-finite") as e:
        lastvit.create_model(checkpoint=str(path), num_heads=2)
    assert str(path) in str(e.value) and "encoder.blocks.1.mlp.fc2.weight" in str(e.value)
    assert main(["inspect", str(path)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "non-finite" in err and "blocks.1.mlp.fc2.weight" in err
    lv = lastvit.create_model(checkpoint=str(path), num_heads=2, allow_nonfinite=True)
    assert torch.isnan(lv.encoder.blocks[1].mlp.fc2.weight).any()
    assert any("non-finite" in n for n in lv.load_report.notes)


def _three_head_model(ckpt_builders, tmp_path):
    """A 96-wide, 3-head ViT saved as a plain state dict: nothing in the file says 3."""
    m = ckpt_builders.timm_vit(seed=8, embed_dim=96, num_heads=3, img_size=32, patch_size=8, depth=2)
    path = tmp_path / "w96h3.pth"
    torch.save(m.state_dict(), path)
    return m, path


def test_head_count_guess_is_loud_and_can_be_fixed(ckpt_builders, tmp_path, capsys):
    m, path = _three_head_model(ckpt_builders, tmp_path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m.forward_features(x)
    with pytest.warns(ArchitectureGuessWarning, match=r"w96h3.pth: num_heads is not stored.*assumed 1"):
        guessed = lastvit.create_model(checkpoint=str(path), aggregator="cls").eval()
    assert guessed.arch["num_heads"] == 1 and any("assumed 1" in n for n in guessed.load_report.notes)
    with torch.no_grad():
        assert (guessed.encode(x) - ref).abs().max() > 1e-3  # the guess is wrong for this model
    with warnings.catch_warnings():
        warnings.simplefilter("error", ArchitectureGuessWarning)  # nothing is guessed any more
        exact = lastvit.create_model(checkpoint=str(path), aggregator="cls", num_heads=3).eval()
        cfg = tmp_path / "tiny-clip.json"  # an open_clip model config: heads = width / head_width
        cfg.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"width": 96, "head_width": 32, "layers": 2},
                                   "text_cfg": {"width": 32, "heads": 2, "layers": 1}}))
        by_cfg = lastvit.create_model(checkpoint=str(path), aggregator="cls", arch=str(cfg)).eval()
        by_opts = lastvit.create_model(checkpoint=str(path), options=LoadOptions(num_heads=3, aggregator="cls"))
    for model in (exact, by_cfg, by_opts.eval()):
        assert model.arch["num_heads"] == 3
        with torch.no_grad():
            assert torch.allclose(model.encode(x), ref, atol=1e-5)
    # inspect prints the guess, and not once it is given
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "guess:      num_heads is not stored in the weights: assumed 1" in out
    assert main(["inspect", str(path), "--num-heads", "3"]) == 0
    out = capsys.readouterr().out
    assert "guess:" not in out and "num_heads=3" in out
    assert main(["inspect", str(path), "--arch", str(cfg), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["arch"]["num_heads"] == 3 and js["guesses"] == []


def test_arch_from_open_clip_names_and_whole_clip_heads(ckpt_builders, tmp_path):
    b16 = arch_config("ViT-B-16")  # open_clip's bundled model_configs: nothing downloaded
    assert b16["num_heads"] == 12 and b16["text_heads"] == 8
    assert arch_config("ViT-B-16-quickgelu")["quick_gelu"] is True
    with pytest.raises(CheckpointError, match="neither a config file nor an open_clip model name"):
        arch_config("ViT-nonexistent-99")
    clip = ckpt_builders.open_clip_model(seed=5)
    torch.save(clip.state_dict(), tmp_path / "oc.pt")
    cfg = tmp_path / "oc.json"
    cfg.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"width": 32, "head_width": 16, "layers": 2},
                               "text_cfg": {"width": 32, "heads": 2, "layers": 1}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ArchitectureGuessWarning)
        m = lastvit.create_model(checkpoint=str(tmp_path / "oc.pt"), aggregator="cls", arch=str(cfg)).eval()
    t = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.encode_text(t), clip.encode_text(t), atol=1e-5)
        assert torch.allclose(m.encode_image(x), clip.encode_image(x), atol=1e-5)
    with pytest.warns(ArchitectureGuessWarning, match="CLIP text heads are not stored"):
        lastvit.create_model(checkpoint=str(tmp_path / "oc.pt"), num_heads=2)


def test_pos_interp_recorded_per_family_and_overridable(ckpt_builders, tmp_path, capsys):
    timm = ckpt_builders.timm_vit()
    torch.save(timm.state_dict(), tmp_path / "timm.pth")
    torch.save({"teacher": {"backbone." + k: v for k, v in timm.state_dict().items()}, "epoch": 1},
               tmp_path / "dino.pth")
    torch.save(ckpt_builders.open_clip_model().state_dict(), tmp_path / "oc.pt")
    fam = {"timm.pth": "timm", "dino.pth": "dino", "oc.pt": "open_clip"}
    for name, want in fam.items():
        assert read_checkpoint(tmp_path / name).arch["pos_interp"] == want
        m = lastvit.create_model(checkpoint=str(tmp_path / name), num_heads=2, text_heads=2)
        vit = getattr(m, "visual", m)
        assert vit.arch["pos_interp"] == want
        assert main(["inspect", str(tmp_path / name)]) == 0
        assert f"pos_interp: {want}" in capsys.readouterr().out
    m = lastvit.create_model(checkpoint=str(tmp_path / "dino.pth"), num_heads=2, pos_interp="timm")
    assert m.arch["pos_interp"] == "timm" and any("pos_interp='timm' set by the caller" in n
                                                  for n in m.load_report.notes)
    # lastvit's own file records the family (part of model.config()); the CLI option overrides it
    out = tmp_path / "dino_lv.pt"
    assert main(["convert", str(tmp_path / "dino.pth"), "--out", str(out), "--num-heads", "2"]) == 0
    assert read_checkpoint(out).config["arch"]["pos_interp"] == "dino"
    assert lastvit.create_model(checkpoint=str(out)).arch["pos_interp"] == "dino"
    out2 = tmp_path / "dino_lv_oc.pt"
    assert main(["convert", str(tmp_path / "dino.pth"), "--out", str(out2), "--num-heads", "2",
                 "--pos-interp", "open_clip"]) == 0
    assert lastvit.create_model(checkpoint=str(out2)).arch["pos_interp"] == "open_clip"
    capsys.readouterr()


def test_official_one_layer_dino_head_loads():
    from lastvit.models.dino import DINOHead

    g = torch.Generator().manual_seed(0)
    sd = {"mlp.weight": torch.randn(8, 32, generator=g), "mlp.bias": torch.randn(8, generator=g),
          "last_layer.weight_g": torch.rand(5, 1, generator=g) + 0.5,
          "last_layer.weight_v": torch.randn(5, 8, generator=g)}
    head = DINOHead(32, 5, bottleneck_dim=8, nlayers=1)
    head.load_state_dict(sd)  # strict: exactly the official keys
    assert set(head.state_dict()) == set(sd)
    assert not head.last_layer.weight_g.requires_grad  # norm_last_layer=True, the official default
    x = torch.randn(3, 32, generator=g)
    z = F.normalize(x @ sd["mlp.weight"].t() + sd["mlp.bias"], dim=-1)
    w = sd["last_layer.weight_g"] * sd["last_layer.weight_v"] / sd["last_layer.weight_v"].norm(dim=1, keepdim=True)
    with torch.no_grad():
        assert torch.allclose(head(x), z @ w.t(), atol=1e-6)
    # files written with the earlier lastvit name (mlp.0.*) still load
    old = {("mlp.0." + k[4:] if k.startswith("mlp.") else k): v for k, v in sd.items()}
    head2 = DINOHead(32, 5, bottleneck_dim=8, nlayers=1)
    head2.load_state_dict(old)
    with torch.no_grad():
        assert torch.allclose(head2(x), head(x))


def _dino_interpolate(pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """DINO's interpolate_pos_encoding, from its definition: bicubic with scale factor (h0 + 0.1) / sqrt(N)."""
    cls, patch = pos[:, :1], pos[:, 1:]
    n = int(math.isqrt(patch.shape[1]))
    grid = patch.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h + 0.1) / n, (w + 0.1) / n), mode="bicubic")
    assert grid.shape[-2:] == (h, w)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)


def _resize(pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """open_clip-based segmenters: bicubic resize of the grid to the new size."""
    cls, patch = pos[:, :1], pos[:, 1:]
    n = int(math.isqrt(patch.shape[1]))
    grid = F.interpolate(patch.reshape(1, n, n, -1).permute(0, 3, 1, 2), size=(h, w), mode="bicubic",
                         align_corners=False)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)


def test_files_resample_their_familys_way_at_a_non_native_size(ckpt_builders, tmp_path):
    """A DINO-layout and an open_clip file at 48 x 40 px (native 32 x 32, patch 8: grid 6 x 5) give the tokens of the
    family's own formula."""
    x = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    h, w = 6, 5
    timm = ckpt_builders.timm_vit(seed=9)
    torch.save({"teacher": {"backbone." + k: v for k, v in timm.state_dict().items()}, "epoch": 1},
               tmp_path / "dino.pth")
    with torch.no_grad():  # DINO's forward: conv patches, [cls], + interpolated pos, blocks, norm
        t = F.conv2d(x, timm.patch_embed.proj.weight, timm.patch_embed.proj.bias, stride=8).flatten(2).transpose(1, 2)
        t = torch.cat([timm.cls_token.expand(2, -1, -1), t], dim=1) + _dino_interpolate(timm.pos_embed, h, w)
        for blk in timm.blocks:
            t = blk(t)
        want = timm.norm(t)
        m = lastvit.create_model(checkpoint=str(tmp_path / "dino.pth"), num_heads=2).eval()
        rec = m.forward_tokens(x)
        assert rec.grid == (h, w)
        assert torch.allclose(rec.patches, want[:, 1:], atol=1e-5)
        assert torch.allclose(rec.prefix, want[:, :1], atol=1e-5)
        # the timm family would differ: the default matters
        m_timm = lastvit.create_model(checkpoint=str(tmp_path / "dino.pth"), num_heads=2, pos_interp="timm").eval()
        assert (m_timm.forward_tokens(x).patches - want[:, 1:]).abs().max() > 1e-4

    clip = ckpt_builders.open_clip_model(seed=6)
    torch.save(clip.state_dict(), tmp_path / "oc.pt")
    v = clip.visual
    with torch.no_grad():  # open_clip's visual forward with the resized grid
        t = F.conv2d(x, v.conv1.weight, stride=8).flatten(2).transpose(1, 2)
        cls = v.class_embedding.reshape(1, 1, -1).expand(2, -1, -1)
        t = torch.cat([cls, t], dim=1) + _resize(v.positional_embedding[None], h, w)
        t = v.transformer(v.ln_pre(t))
        want = v.ln_post(t)
        m = lastvit.create_model(checkpoint=str(tmp_path / "oc.pt"), num_heads=2, visual_only=True).eval()
        rec = m.forward_tokens(x)
        assert torch.allclose(rec.patches, want[:, 1:], atol=1e-5)
        assert torch.allclose(rec.prefix, want[:, :1], atol=1e-5)
