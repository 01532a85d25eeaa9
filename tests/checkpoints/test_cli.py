"""`lastvit inspect` / `lastvit convert` on every format and on broken files (one line, exit code != 0)."""

from __future__ import annotations

import json
import os
import pathlib

import pytest
import torch

import lastvit
from lastvit.cli import main


@pytest.fixture(scope="module")
def files(ckpt_builders, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    tv = ckpt_builders.torchvision_vit()
    torch.save(tv.state_dict(), d / "tv.pth")
    torch.save({"model": {"model." + k: v for k, v in tv.state_dict().items()}, "iteration": 5}, d / "release.pth")
    timm = ckpt_builders.timm_vit(reg_tokens=1)
    torch.save(timm.state_dict(), d / "timm.pth")
    torch.save({"teacher": {"backbone." + k: v for k, v in timm.state_dict().items()},
                "student": {"module.backbone." + k: v for k, v in timm.state_dict().items()}, "epoch": 1},
               d / "dino.pth")
    clip = ckpt_builders.open_clip_model()
    torch.save(clip.state_dict(), d / "oc.pt")
    ckpt_builders.save_openai_torchscript(clip, d / "openai.pt")
    lastvit.checkpoints.save_checkpoint(lastvit.create_model("vit_micro_patch8_64", depth=1, num_classes=3),
                                        d / "lv.pt")
    return d, tv


@pytest.mark.parametrize("name,fmt", [("tv.pth", "torchvision"), ("release.pth", "detectron2"),
                                      ("timm.pth", "timm"), ("dino.pth", "dino"), ("oc.pt", "open_clip"),
                                      ("openai.pt", "openai"), ("lv.pt", "lastvit")])
def test_inspect_every_format(files, name, fmt, capsys):
    d, _ = files
    assert main(["inspect", str(d / name), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == fmt and out["load"]["missing"] == [] and out["load"]["unexpected"] == []
    assert out["model_params"] > 0
    assert main(["inspect", str(d / name)]) == 0
    text = capsys.readouterr().out
    assert f"format:     {fmt}" in text and "params:" in text


def _broken(d: pathlib.Path, tv) -> dict[str, pathlib.Path]:
    out = {}
    out["random"] = d / "random.pt"
    out["random"].write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                                  dtype=torch.uint8).tolist()))
    good = d / "good.pth"
    torch.save(tv.state_dict(), good)
    out["truncated"] = d / "truncated.pth"
    out["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["json"] = d / "config.json"
    out["json"].write_text(json.dumps({"model": "vit", "layers": 2}))
    out["empty_dict"] = d / "empty.pt"
    torch.save({}, out["empty_dict"])
    sd = dict(tv.state_dict())
    sd["encoder.layers.encoder_layer_1.self_attention.in_proj_weight"] = torch.zeros(90, 32)
    out["wrong_shape"] = d / "wrong.pth"
    torch.save(sd, out["wrong_shape"])
    out["empty_file"] = d / "zero.pt"
    out["empty_file"].write_bytes(b"")
    out["missing"] = d / "nope.pt"
    return out


def test_broken_files_one_clear_line(files, tmp_path, capsys):
    d, tv = files
    for kind, path in _broken(tmp_path, tv).items():
        rc = main(["inspect", str(path)])
        err = capsys.readouterr().err.strip()
        assert rc != 0, kind
        assert len(err.splitlines()) == 1 and str(path) in err and "Traceback" not in err, (kind, err)
        expected = {"wrong_shape": "attn.qkv.weight: file (90, 32) vs model (96, 32)", "truncated": "truncated",
                    "json": "text file", "empty_dict": "empty dictionary", "empty_file": "empty file",
                    "missing": "no such", "random": "not a PyTorch checkpoint"}[kind]
        assert expected in err, (kind, err)
    # a partial load is possible on request
    assert main(["inspect", str(tmp_path / "wrong.pth"), "--no-strict"]) == 0
    assert "mismatched: 1" in capsys.readouterr().out


def test_convert_roundtrip_and_no_partial_file(ckpt_builders, files, tmp_path, capsys):
    d, tv = files
    out = tmp_path / "out" / "tv_lastvit.pt"
    rc = main(["convert", str(d / "release.pth"), "--out", str(out), "--num-heads", "2"])
    assert rc == 0 and out.exists() and "wrote" in capsys.readouterr().out
    m = lastvit.create_model(checkpoint=str(out)).eval()
    assert m.aggregator_name == "lazystrike" and m.aggregator.k == 1 and m.arch["num_heads"] == 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = tv.heads(lastvit.LazyStrike(k=1)(ckpt_builders.torchvision_encoder_out(tv, x)[:, 1:]))
        assert torch.allclose(m(x), ref, atol=1e-5)
    # errors leave nothing behind, and an existing output is not touched
    broken = _broken(tmp_path, tv)
    bad_out = tmp_path / "bad" / "x.pt"
    assert main(["convert", str(broken["truncated"]), "--out", str(bad_out)]) != 0
    assert not bad_out.exists()
    before = out.read_bytes()
    assert main(["convert", str(broken["wrong_shape"]), "--out", str(out)]) != 0
    assert out.read_bytes() == before
    assert [p for p in os.listdir(out.parent) if p != out.name] == []
    capsys.readouterr()


def test_convert_whole_clip_then_inspect(ckpt_builders, files, tmp_path, capsys):
    d, _ = files
    out = tmp_path / "clip_lv.pt"
    assert main(["convert", str(d / "oc.pt"), "--out", str(out), "--num-heads", "2", "--text-heads", "2",
                 "--aggregator", "cls"]) == 0
    assert "CLIP" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model:      CLIP" in text and "head:       proj (16)" in text and "missing:    0" in text
    clip = ckpt_builders.open_clip_model()
    m = lastvit.create_model(checkpoint=str(out)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.encode_image(x), clip.encode_image(x), atol=1e-5)
