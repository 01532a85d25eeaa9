"""MetaCLIP files: open_clip's ``ViT-B-16-quickgelu`` / ``ViT-L-14-quickgelu`` layout (an OpenAI-style ViT with
QuickGELU). The weights cannot say which activation they were trained with: it comes from ``--arch NAME`` / a
config JSON / an ``open_clip_config.json`` beside the file / ``--quick-gelu``; otherwise GELU is guessed loudly.

Tiny random models are built with open_clip itself from a ``-quickgelu`` model config (nothing downloaded).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import warnings

import pytest
import torch

import lastvit
from lastvit.checkpoints import ArchitectureGuessWarning, CheckpointError, read_checkpoint
from lastvit.cli import main
from lastvit.models.clip import CLIP

NAME = "MetaCLIP-lastvit-test-quickgelu"
CFG = {"embed_dim": 16, "quick_gelu": True,
       "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
       "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}}
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
X_ODD = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(2))
TEXT = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(3))

_spec = importlib.util.spec_from_file_location("_eva_tests", pathlib.Path(__file__).with_name("test_eva.py"))
_eva = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_eva)


def _open_clip(size=None, seed: int = 0):
    import open_clip

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = open_clip.create_model(NAME, pretrained=None, force_image_size=size).eval()
    return m


@pytest.fixture()
def metaclip(tmp_path):
    """(open_clip QuickGELU CLIP, its config JSON, a MetaCLIP-style training checkpoint of it)."""
    import open_clip

    cfg = tmp_path / f"{NAME}.json"
    cfg.write_text(json.dumps(CFG))
    open_clip.add_model_config(str(cfg))
    m = _open_clip()
    assert m.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        m.logit_scale.fill_(2.5)
    path = tmp_path / "metaclip_tiny.pt"  # MetaCLIP releases open_clip training checkpoints
    torch.save({"epoch": 32, "name": "metaclip_tiny", "state_dict": {f"module.{k}": v for k, v in
                                                                     m.state_dict().items()}}, path)
    return m, str(cfg), path


def _at_size(ref, size, antialias: bool):
    """open_clip's way to another size: a model built at ``size`` loading the weights via ``resize_pos_embed``."""
    from open_clip.model import resize_pos_embed

    other = _open_clip(size)
    sd = dict(ref.state_dict())
    resize_pos_embed(sd, other, antialias=antialias)
    other.load_state_dict(sd)
    return other.eval()


def _check_against(ours: CLIP, ref, x: torch.Tensor) -> None:
    ref.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = ref.visual(x)  # ln_post patch tokens
    ref.visual.output_tokens = False
    with torch.no_grad():
        torch.testing.assert_close(ours.visual.forward_tokens(x).patches, tokens, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.encode_image(x), ref.encode_image(x), atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.encode_text(TEXT), ref.encode_text(TEXT), atol=1e-4, rtol=0)


def test_metaclip_file_with_its_config_matches_open_clip(metaclip):
    ref, cfg, path = metaclip
    for arch in (cfg, NAME):  # a config JSON, or the open_clip name it is registered under
        with warnings.catch_warnings():
            warnings.simplefilter("error", ArchitectureGuessWarning)  # heads and activation come from the config
            ours = lastvit.create_model(checkpoint=str(path), aggregator="cls", arch=arch).eval()
        assert isinstance(ours, CLIP) and ours.quick_gelu and ours.visual.arch["act"] == "quick_gelu"
        assert ours.load_report.ok and sorted(ours.load_report.skipped["trainer state"]) == ["epoch", "name"]
        assert not ours.load_report.notes or not any(n.startswith("the activation is not") for n in
                                                      ours.load_report.notes)
        _check_against(ours, ref, X)
    # another size: lastvit's open_clip rule (bicubic resize, no antialiasing) = open_clip's resize_pos_embed with
    # antialias=False; open_clip 3.3's default (antialias=True) is timm's rule: pos_interp="timm"
    _check_against(ours, _at_size(ref, (48, 40), antialias=False), X_ODD)
    timm_rule = lastvit.create_model(checkpoint=str(path), aggregator="cls", arch=cfg, pos_interp="timm").eval()
    _check_against(timm_rule, _at_size(ref, (48, 40), antialias=True), X_ODD)
    ls = lastvit.create_model(checkpoint=str(path), arch=cfg).eval()
    with torch.no_grad():
        f_ls, f_cls = ls.encode_image(X), ours.encode_image(X)
    assert torch.isfinite(f_ls).all() and (f_ls - f_cls).abs().max() > 1e-3


def test_activation_guess_is_loud_and_inspect_reports_it(metaclip, capsys):
    ref, cfg, path = metaclip
    conv = read_checkpoint(path)
    assert conv.arch["act"] == "gelu" and any(g.startswith("the activation is not recorded") for g in conv.guesses())
    with pytest.warns(ArchitectureGuessWarning, match="activation is not recorded.*assumed GELU"):
        guessed = lastvit.create_model(checkpoint=str(path), aggregator="cls", num_heads=2, text_heads=2).eval()
    assert not guessed.quick_gelu
    with torch.no_grad():  # the guess is wrong for a MetaCLIP file
        assert (guessed.encode_image(X) - ref.encode_image(X)).abs().max() > 1e-3
    assert main(["inspect", str(path), "--num-heads", "2"]) == 0
    out = capsys.readouterr().out
    assert "act=gelu" in out and "guess:      the activation is not recorded in CLIP files: assumed GELU" in out
    for flags in (["--arch", cfg], ["--arch", NAME], ["--quick-gelu", "--num-heads", "2", "--text-heads", "2"]):
        assert main(["inspect", str(path), *flags]) == 0
        out = capsys.readouterr().out
        assert "act=quick_gelu" in out and "guess:" not in out, flags
    fixed = lastvit.create_model(checkpoint=str(path), aggregator="cls", quick_gelu=True, num_heads=2,
                                 text_heads=2).eval()
    _check_against(fixed, ref, X)


def test_recorded_open_clip_config_beside_the_file(metaclip, tmp_path):
    ref, _, path = metaclip
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": CFG, "preprocess_cfg": {}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ArchitectureGuessWarning)
        ours = lastvit.create_model(checkpoint=str(path), aggregator="cls", num_heads=2, text_heads=2).eval()
    assert ours.quick_gelu and any("open_clip_config.json" in n for n in ours.load_report.notes)
    _check_against(ours, ref, X)
    (tmp_path / "open_clip_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="open_clip_config.json: not a readable"):
        read_checkpoint(path)


def test_zeroshot_seg_cli_every_variant_on_a_metaclip(metaclip, tmp_path):
    _, cfg, path = metaclip
    _eva._zeroshot_cli_all_variants(tmp_path, path, ["--arch", cfg])
