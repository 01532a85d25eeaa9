"""open_clip / OpenAI CLIP files.

The image tower as a LastViT (pre-norm, eps 1e-5, proj head) vs open_clip; then whole CLIPs: open_clip /
OpenAI files load into lastvit's CLIP and match open_clip's own towers, lastvit's own CLIP file round-trips,
LazyStrike pools the ln_post patch tokens before the projection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP as OpenClipCLIP
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

import lastvit
from lastvit.aggregate import LazyStrike
from lastvit.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
from lastvit.checkpoints.clip import ClipLoadError, load_clip, save_clip
from lastvit.evaluate.zeroshot import dense_text_similarity
from lastvit.models.clip import CLIP

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _reference(clip):
    """open_clip's own tokens after ln_post (patches) and projected image features."""
    clip.visual.output_tokens = True
    with torch.no_grad():
        pooled, tokens = clip.visual(X)
    clip.visual.output_tokens = False
    return pooled, tokens


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_open_clip_visual_tower_matches(ckpt_builders, tmp_path, quick_gelu):
    clip = ckpt_builders.open_clip_model(seed=int(quick_gelu), quick_gelu=quick_gelu)
    path = tmp_path / "oc.pt"
    torch.save(clip.state_dict(), path)
    conv = read_checkpoint(path, quick_gelu=quick_gelu if quick_gelu else None)
    assert conv.format == "open_clip" and conv.head == ("proj", 16)
    assert conv.arch["pre_norm"] and conv.arch["norm_eps"] == 1e-5
    assert conv.arch["act"] == ("quick_gelu" if quick_gelu else "gelu")
    assert "patch_embed.proj.bias" not in {k[len("encoder."):] for k in conv.state_dict}
    cfg = conv.clip["config"]
    got = (cfg["context_length"], cfg["vocab_size"], cfg["width"], cfg["layers"], cfg["embed_dim"])
    assert got == (8, 50, 32, 1, 16)
    assert "token_embedding.weight" in conv.clip["state_dict"] and "logit_scale" in conv.clip["state_dict"]
    m = lastvit.create_model(checkpoint=str(path), visual_only=True, aggregator="cls", num_heads=2,
                             quick_gelu=quick_gelu if quick_gelu else None).eval()
    assert "clip text tower" in m.load_report.skipped and m.load_report.ok
    pooled, tokens = _reference(clip)
    with torch.no_grad():
        rec = m.forward_tokens(X)
        assert torch.allclose(rec.patches, tokens, atol=1e-5)
        assert torch.allclose(m(X), pooled, atol=1e-5)
        assert torch.allclose(m(X), clip.encode_image(X), atol=1e-5)


def test_open_clip_training_checkpoint_and_default_gelu_note(ckpt_builders, tmp_path):
    clip = ckpt_builders.open_clip_model(seed=2)
    obj = {"epoch": 3, "name": "run1", "state_dict": {"module." + k: v for k, v in clip.state_dict().items()},
           "optimizer": torch.optim.AdamW(clip.parameters()).state_dict()}
    torch.save(obj, tmp_path / "epoch_3.pt")
    conv = read_checkpoint(tmp_path / "epoch_3.pt")
    assert conv.format == "open_clip" and conv.arch["act"] == "gelu"
    assert any("assumed GELU" in n for n in conv.notes)
    assert sorted(conv.skipped["trainer state"]) == ["epoch", "name", "optimizer"]
    assert not any(k.startswith("module.") for k in conv.clip["state_dict"])
    m = lastvit.create_model(checkpoint=str(tmp_path / "epoch_3.pt"), head="proj", aggregator="cls",
                             num_heads=2).eval()
    with torch.no_grad():
        assert torch.allclose(m(X), clip.encode_image(X), atol=1e-5)


def test_openai_torchscript_and_state_dict_default_quickgelu(ckpt_builders, tmp_path):
    clip = ckpt_builders.open_clip_model(seed=3, quick_gelu=True)
    ckpt_builders.save_openai_torchscript(clip, tmp_path / "ViT-tiny.pt")
    conv = read_checkpoint(tmp_path / "ViT-tiny.pt")
    assert conv.format == "openai" and conv.arch["act"] == "quick_gelu"
    assert any("TorchScript" in n for n in conv.notes) and any("QuickGELU" in n for n in conv.notes)
    assert sorted(conv.skipped["openai metadata"]) == ["context_length", "input_resolution", "vocab_size"]
    pooled, tokens = _reference(clip)
    m = lastvit.create_model(checkpoint=str(tmp_path / "ViT-tiny.pt"), visual_only=True, aggregator="cls",
                             num_heads=2).eval()
    with torch.no_grad():
        assert torch.allclose(m(X), pooled, atol=1e-5)
    # the plain OpenAI state dict (with the metadata entries) is detected as OpenAI too
    sd = dict(clip.state_dict())
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(8), vocab_size=torch.tensor(50))
    torch.save(sd, tmp_path / "openai_sd.pt")
    m2 = lastvit.create_model(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32, pre_norm=True,
                              norm_eps=1e-5, act="quick_gelu", head="proj", head_dim=16, aggregator="lazystrike")
    rep = load_checkpoint(m2.eval(), tmp_path / "openai_sd.pt")
    assert rep.format == "openai" and rep.ok
    with torch.no_grad():
        ref = lastvit.LazyStrike()(tokens) @ clip.visual.proj
        assert torch.allclose(m2(X), ref, atol=1e-5)


def test_whole_clip_file_builds_clip_and_lastvit_roundtrip(ckpt_builders, tmp_path):
    """create_model on a whole-CLIP file returns lastvit.models.clip.CLIP (text heads given: not in the weights)."""
    clip = ckpt_builders.open_clip_model(seed=4)
    torch.save(clip.state_dict(), tmp_path / "oc.pt")
    m = lastvit.create_model(checkpoint=str(tmp_path / "oc.pt"), aggregator="cls", num_heads=2, text_heads=2).eval()
    assert isinstance(m, CLIP)
    t = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(m.encode_image(X), clip.encode_image(X), atol=1e-5)
        assert torch.allclose(m.encode_text(t), clip.encode_text(t), atol=1e-5)
    save_checkpoint(m, tmp_path / "lv.pt")
    m2 = lastvit.create_model(checkpoint=str(tmp_path / "lv.pt")).eval()
    assert isinstance(m2, CLIP)
    with torch.no_grad():
        assert torch.equal(m2.encode_image(X), m.encode_image(X))


# -- whole CLIPs (both towers) --------------------------------------------------------------------------------

CTX = 12
ARCH_KW = dict(num_heads=2, text_heads=2)  # head counts are not stored in CLIP weights


def _open_clip(quick_gelu: bool, seed: int = 0) -> OpenClipCLIP:
    torch.manual_seed(seed)
    m = OpenClipCLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=CTX, vocab_size=49408, width=32, heads=2, layers=2),
        quick_gelu=quick_gelu,
    ).eval()
    with torch.no_grad():
        m.logit_scale.fill_(3.0)
        for p in m.parameters():  # open_clip zero-inits some biases; make every weight matter
            p.add_(0.02 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=g)
    return images


def _compare(ours: CLIP, ref: OpenClipCLIP, images: torch.Tensor) -> None:
    text = ours.tokenize(["a photo of a cat", "a diagram", "two red squares on a table"])
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), ref.encode_image(images), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encode_text(text), ref.encode_text(text), atol=1e-5, rtol=0)
        assert ours.logit_scale.item() == ref.logit_scale.item()


def test_open_clip_state_dict_and_training_checkpoint(tmp_path, inputs):
    ref = _open_clip(quick_gelu=False)
    plain = tmp_path / "open_clip.pt"
    torch.save(ref.state_dict(), plain)
    train = tmp_path / "epoch_3.pt"  # open_clip's training checkpoint layout (DDP-wrapped keys)
    torch.save({"epoch": 3, "name": "tiny", "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": []}}, train)
    for path in (plain, train):
        ours = lastvit.create_model(checkpoint=str(path), aggregator="cls", **ARCH_KW).eval()
        assert isinstance(ours, CLIP) and not ours.quick_gelu
        rep = ours.load_report  # the one LoadReport of every format
        assert (rep.missing, rep.unexpected, rep.mismatched) == ([], [], []) and rep.ok
        _compare(ours, ref, inputs)


def test_openai_files_quickgelu_plain_and_torchscript(tmp_path, inputs):
    ref = _open_clip(quick_gelu=True, seed=1)
    # OpenAI state dicts carry these three metadata entries
    for k, v in (("input_resolution", 32), ("context_length", CTX), ("vocab_size", 49408)):
        ref.__dict__.pop(k, None)
        ref.register_buffer(k, torch.tensor(v))
    plain = tmp_path / "openai_plain.pt"
    torch.save(ref.state_dict(), plain)
    jit = tmp_path / "openai_jit.pt"
    text = torch.zeros(1, CTX, dtype=torch.long)
    text[0, :2] = torch.tensor([49406, 49407])
    torch.jit.save(torch.jit.trace(ref, (inputs[:1], text), check_trace=False), str(jit))
    for path in (plain, jit):
        ours = lastvit.create_model(checkpoint=str(path), aggregator="cls", **ARCH_KW).eval()
        assert isinstance(ours, CLIP) and ours.quick_gelu  # OpenAI files: QuickGELU in both towers
        assert ours.visual.arch["act"] == "quick_gelu"
        _compare(ours, ref, inputs)
    # the wrong activation is measurably different (the test above would catch a GELU tower)
    gelu = lastvit.create_model(checkpoint=str(plain), aggregator="cls", quick_gelu=False, **ARCH_KW).eval()
    with torch.no_grad():
        assert (gelu.encode_image(inputs) - ref.encode_image(inputs)).abs().max() > 1e-4


def test_lazystrike_pools_ln_post_patch_tokens_then_projects(tmp_path, inputs):
    ref = _open_clip(quick_gelu=False, seed=2)
    path = tmp_path / "oc.pt"
    torch.save(ref.state_dict(), path)
    ours = lastvit.create_model(checkpoint=str(path), aggregator="lazystrike", aggregator_kwargs={"k": 3},
                                **ARCH_KW).eval()
    ref.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = ref.visual(inputs)  # ln_post-normed patch tokens (B, 16, 32), before the projection
        expected = LazyStrike(k=3)(tokens) @ ref.visual.proj
        torch.testing.assert_close(ours.encode_image(inputs), expected, atol=1e-5, rtol=0)
        # dense similarity maps: projected patch tokens vs text embeddings, cosine, on the 4x4 grid
        txt = ref.encode_text(ours.tokenize(["cat", "dog"]))
        sim = dense_text_similarity(ours, inputs, txt)
        want = F.normalize(tokens @ ref.visual.proj, dim=-1) @ F.normalize(txt, dim=-1).t()
        torch.testing.assert_close(sim, want.transpose(1, 2).reshape(3, 2, 4, 4), atol=1e-5, rtol=0)


def test_lastvit_clip_file_round_trip(tmp_path, inputs):
    model = CLIP.from_config(vision=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
                             text=dict(context_length=CTX, width=32, heads=2, layers=1), embed_dim=16,
                             aggregator="lazystrike", aggregator_kwargs={"k": 2}, quick_gelu=True).eval()
    with torch.no_grad():
        model.logit_scale.fill_(1.234)
    path = tmp_path / "clip_lastvit.pt"
    save_clip(model, path, extra={"step": 7})
    assert not [p for p in tmp_path.iterdir() if p.name != "clip_lastvit.pt"]  # no temp files left behind
    text = model.tokenize(["a blue square", "a green circle"])
    with torch.no_grad():
        want_i, want_t = model.encode_image(inputs), model.encode_text(text)
    for loaded in (load_clip(path), lastvit.create_model(checkpoint=str(path))):
        loaded.eval()
        assert isinstance(loaded, CLIP)
        assert loaded.config() == model.config()
        with torch.no_grad():
            assert torch.equal(loaded.encode_image(inputs), want_i)
            assert torch.equal(loaded.encode_text(text), want_t)
            assert loaded.logit_scale.item() == pytest.approx(1.234)


def test_strict_report_names_file(tmp_path):
    ref = _open_clip(quick_gelu=False)
    sd = ref.state_dict()
    sd.pop("ln_final.weight")
    path = tmp_path / "broken_clip.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="broken_clip.pt"):
        lastvit.create_model(checkpoint=str(path), aggregator="cls", **ARCH_KW)
    partial = lastvit.create_model(checkpoint=str(path), aggregator="cls", strict=False, **ARCH_KW)
    assert partial.load_report.missing == ["text.ln_final.weight"]
    with pytest.raises(ClipLoadError, match="not a lastvit CLIP"):
        torch.save({"a": torch.zeros(1)}, tmp_path / "junk.pt")
        load_clip(tmp_path / "junk.pt")


def test_load_checkpoint_into_an_existing_clip(tmp_path, inputs):
    ref = _open_clip(quick_gelu=False, seed=3)
    path = tmp_path / "oc.pt"
    torch.save(ref.state_dict(), path)
    target = CLIP(dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
                  dict(context_length=CTX, vocab_size=49408, width=32, heads=2, layers=2), 16,
                  aggregator="cls").eval()
    rep = lastvit.load_checkpoint(target, path)
    assert rep.ok and rep.format == "open_clip" and target.load_report is rep
    assert "clip text tower" not in rep.skipped  # the text tower is loaded, not skipped
    _compare(target, ref, inputs)
    # lastvit's own CLIP file into a fresh CLIP of the same config
    save_clip(target, tmp_path / "lv.pt")
    fresh = CLIP.from_config(target.config()).eval()
    assert lastvit.load_checkpoint(fresh, tmp_path / "lv.pt").ok
    _compare(fresh, ref, inputs)
    # a CLIP of another shape: one line naming the file and the keys
    small = CLIP(dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2),
                 dict(context_length=CTX, vocab_size=49408, width=32, heads=2, layers=2), 16)
    with pytest.raises(ClipLoadError, match="oc.pt.*unexpected") as e:
        lastvit.load_checkpoint(small, path)
    assert "\n" not in str(e.value)
