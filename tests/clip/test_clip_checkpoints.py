"""Whole-CLIP checkpoints: open_clip / OpenAI files load into lastvit's CLIP and match open_clip's own towers;
lastvit's own CLIP file round-trips; LazyStrike pools the ln_post patch tokens before the projection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP as OpenClipCLIP
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

import lastvit
from lastvit.aggregate import LazyStrike
from lastvit.checkpoints.clip import ClipLoadError, load_clip, save_clip
from lastvit.evaluate.zeroshot import dense_text_similarity
from lastvit.models.clip import CLIP

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
