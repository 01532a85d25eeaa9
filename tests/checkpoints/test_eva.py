"""EVA-02 CLIP towers as LastViT encoders (family "eva": timm's Eva) vs open_clip's own EVA02 CLIP.

Tiny random models are built with open_clip itself: a tiny timm Eva with EVA-02 CLIP's options (separate q/k/v,
SwiGLU, sub-LN, rotary embedding with a reference grid) is registered with timm and named by an open_clip model
config, exactly like ``EVA02-B-16`` names ``eva02_base_patch16_clip_224``. Nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F

import lastvit
from lastvit.checkpoints import ArchitectureGuessWarning, read_checkpoint
from lastvit.cli import main
from lastvit.evaluate.dense import VARIANTS, dense_features, fvit_taps
from lastvit.models.clip import CLIP

TIMM_NAME = "eva02_lastvit_test_patch8_clip_32"
OC_NAME = "EVA02-lastvit-test"
REF = (5, 5)  # rotary reference grid != the native 4x4 grid: the coordinates are rescaled (as 16 vs 14 for B/16)


def _register() -> None:
    import timm
    from timm.models import register_model
    from timm.models.eva import Eva

    if TIMM_NAME in timm.list_models(TIMM_NAME):
        return

    def eva02_lastvit_test_patch8_clip_32(pretrained: bool = False, **kw):
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kw.pop(k, None)
        args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, qkv_fused=False,
                    mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True,
                    use_rot_pos_emb=True, ref_feat_shape=REF, global_pool=kw.pop("global_pool", "token"))
        args.update(kw)
        return Eva(**args)

    eva02_lastvit_test_patch8_clip_32.__module__ = "timm.models.eva"
    register_model(eva02_lastvit_test_patch8_clip_32)


def _oc_config(tmp_path) -> str:
    path = tmp_path / f"{OC_NAME}.json"
    path.write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "timm_model_name": TIMM_NAME, "timm_model_pretrained": False,
                       "timm_pool": "token", "timm_proj": None},
        "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1},
        "custom_text": True,
    }))
    return str(path)


@pytest.fixture()
def eva_clip(tmp_path):
    """(open_clip EVA02 CustomTextCLIP, its config JSON) with every weight informative."""
    import open_clip

    _register()
    cfg = _oc_config(tmp_path)
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = open_clip.create_model(OC_NAME, pretrained=None).eval()
    with torch.no_grad():
        for p in m.parameters():  # open_clip / timm zero-init biases and small heads: make every weight matter
            p.add_(0.05 * torch.randn_like(p))
        m.logit_scale.fill_(2.5)
    return m, cfg


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
X_ODD = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(2))  # 6 x 5 grid: non-native, non-square
TEXT = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(3))


def _at_size(ref, size):
    """open_clip's EVA at another input size: TimmModel.set_input_size (timm resamples pos_embed, rebuilds rope)."""
    r = copy.deepcopy(ref)
    r.visual.set_input_size(size)
    return r


def _check_against(ours: CLIP, ref, x: torch.Tensor) -> None:
    trunk = ref.visual.trunk
    with torch.no_grad():
        tokens = trunk.forward_features(x)  # final-normed (B, 1 + N, D)
        rec = ours.visual.forward_tokens(x)
        torch.testing.assert_close(rec.prefix[:, 0], tokens[:, 0], atol=1e-4, rtol=0)
        torch.testing.assert_close(rec.patches, tokens[:, 1:], atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.encode_image(x), ref.encode_image(x), atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.encode_text(TEXT), ref.encode_text(TEXT), atol=1e-4, rtol=0)


def test_open_clip_eva02_file_gives_open_clip_features_native_and_other_size(tmp_path, eva_clip):
    ref, cfg = eva_clip
    path = tmp_path / "eva02.pt"
    torch.save(ref.state_dict(), path)
    conv = read_checkpoint(path)
    assert conv.format == "open_clip" and conv.arch["family"] == "eva" and conv.arch["proj_bias"]
    assert conv.arch["eva"]["swiglu_mlp"] and conv.arch["eva"]["scale_attn_inner"] and conv.arch["act"] == "swiglu"
    assert conv.head == ("proj", 16) and conv.arch["mlp_ratio"] * 32 == 85 and conv.arch["pos_interp"] == "timm"
    assert any("rotary position embedding: not stored" in n for n in conv.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ArchitectureGuessWarning)  # the config gives heads and rope: no guess
        ours = lastvit.create_model(checkpoint=str(path), aggregator="cls", arch=cfg).eval()
    assert isinstance(ours, CLIP) and ours.load_report.ok
    assert ours.visual.arch["eva"]["ref_feat_shape"] == list(REF) and ours.visual.arch["num_heads"] == 2
    assert ours.logit_scale.item() == pytest.approx(2.5)
    _check_against(ours, ref, X)
    _check_against(ours, _at_size(ref, (48, 40)), X_ODD)
    # the rotary embedding is in the path: without it (or with EVA's default reference grid) the tokens differ
    no_rope = lastvit.create_model(checkpoint=str(path), aggregator="cls", arch=cfg, visual_only=True,
                                   eva={**ours.visual.arch["eva"], "use_rot_pos_emb": False}).eval()
    with torch.no_grad():
        assert (no_rope.forward_tokens(X).patches - ours.visual.forward_tokens(X).patches).abs().max() > 1e-3
    # LazyStrike on the same tower: finite, and not the CLS feature
    ls = lastvit.create_model(checkpoint=str(path), arch=cfg).eval()
    assert ls.visual.aggregator_name == "lazystrike"
    with torch.no_grad():
        f_ls, f_cls = ls.encode_image(X), ours.encode_image(X)
    assert torch.isfinite(f_ls).all() and (f_ls - f_cls).abs().max() > 1e-3


def test_heads_guess_and_default_rope_are_reported(tmp_path, eva_clip):
    ref, _ = eva_clip
    torch.save(ref.state_dict(), tmp_path / "eva02.pt")
    with pytest.warns(ArchitectureGuessWarning, match="num_heads is not stored"):
        m = lastvit.create_model(checkpoint=str(tmp_path / "eva02.pt"), text_heads=2)
    assert m.visual.arch["eva"]["ref_feat_shape"] == [16, 16]  # EVA-02 CLIP's convention, reported in the notes
    assert any("reference grid 16x16" in n for n in m.load_report.notes)


def _baai_state_dict(ref) -> dict[str, torch.Tensor]:
    """The tiny open_clip EVA02 CLIP under BAAI EVA-CLIP's names (the inverse of timm's checkpoint_filter_fn map),
    with the rotary sin/cos tables BAAI files carry. The text tower keeps open_clip's names: BAAI's CustomCLIP holds
    it as ``text.`` (TextTransformer: token_embedding, positional_embedding, transformer.resblocks.N.{ln_1, attn.
    in_proj_weight/in_proj_bias/out_proj, ln_2, mlp.c_fc/c_proj}, ln_final, text_projection; its attn_mask buffer is
    not saved), read in baaivision/EVA, EVA-CLIP/rei/eva_clip/transformer.py."""
    inverse = (("attn.norm.", "attn.inner_attn_ln."), ("mlp.norm.", "mlp.ffn_ln."), ("mlp.fc1_g.", "mlp.w1."),
               ("mlp.fc1_x.", "mlp.w2."), ("mlp.fc2.", "mlp.w3."), ("attn.q_proj.bias", "attn.q_bias"),
               ("attn.v_proj.bias", "attn.v_bias"))
    out = {}
    for k, v in ref.state_dict().items():
        if k.startswith("visual.trunk."):
            k = "visual." + k[len("visual.trunk."):]
            for a, b in inverse:
                k = k.replace(a, b)
        out[k] = v
    out["visual.rope.freqs_cos"] = torch.randn(16, 8)
    out["visual.blocks.0.attn.rope.freqs_sin"] = torch.randn(16, 8)
    return out


def test_baai_eva_clip_layout(tmp_path, eva_clip):
    ref, cfg = eva_clip
    torch.save(_baai_state_dict(ref), tmp_path / "EVA02_CLIP_tiny.pt")
    conv = read_checkpoint(tmp_path / "EVA02_CLIP_tiny.pt")
    assert conv.format == "eva_clip" and conv.arch["family"] == "eva" and conv.arch["pos_interp"] == "open_clip"
    assert len(conv.skipped["rotary embedding tables (recomputed for the input grid)"]) == 2
    ours = lastvit.create_model(checkpoint=str(tmp_path / "EVA02_CLIP_tiny.pt"), aggregator="cls", arch=cfg).eval()
    assert ours.load_report.ok
    _check_against(ours, ref, X)
    # another size: EVA-CLIP's interpolate_pos_embed (bicubic resize, align_corners=False, no antialiasing) and
    # the rotary embedding recomputed for the grid -- written from the definition on open_clip's model
    other = _at_size(ref, (48, 40))
    pe = ref.visual.trunk.pos_embed
    grid = pe[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(6, 5), mode="bicubic", align_corners=False)
    with torch.no_grad():
        other.visual.trunk.pos_embed.copy_(torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 30, -1)], 1))
    _check_against(ours, other, X_ODD)


def test_timm_eva_file_and_fused_qkv(tmp_path):
    """A timm Eva state dict (classifier head) and one with fused qkv + q/v biases (EVA-01 / timm qkv_fused)."""
    from timm.models.eva import Eva

    torch.manual_seed(4)
    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4 * 2 / 3,
              swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(16, 16),
              num_classes=5, global_pool="token")
    split = Eva(qkv_fused=False, **kw).eval()
    with torch.no_grad():
        for p in split.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(split.state_dict(), tmp_path / "eva_timm.pth")
    m = lastvit.create_model(checkpoint=str(tmp_path / "eva_timm.pth"), aggregator="cls", num_heads=2).eval()
    assert m.arch["family"] == "eva" and m.head_type == "linear" and m.num_classes == 5
    with torch.no_grad():
        torch.testing.assert_close(m(X), split(X), atol=1e-4, rtol=0)
    fused = Eva(qkv_fused=True, **kw).eval()
    sd = {}
    for k, v in split.state_dict().items():  # the same weights in the fused layout
        if ".attn.q_proj.weight" in k:
            b = k[: -len("q_proj.weight")]
            w = [split.state_dict()[b + f"{n}_proj.weight"] for n in "qkv"]
            sd[b + "qkv.weight"] = torch.cat(w)
            sd[b + "q_bias"] = split.state_dict()[b + "q_proj.bias"]
            sd[b + "v_bias"] = split.state_dict()[b + "v_proj.bias"]
        elif "_proj." not in k:
            sd[k] = v
    fused.load_state_dict(sd)
    torch.save(sd, tmp_path / "eva_fused.pth")
    conv = read_checkpoint(tmp_path / "eva_fused.pth", format="eva_clip")
    assert any("fused qkv" in n for n in conv.notes)
    m2 = lastvit.create_model(checkpoint=str(tmp_path / "eva_fused.pth"), aggregator="cls", num_heads=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(m2(X), fused(X), atol=1e-4, rtol=0)


def _rope_qkv(trunk, blk, x, grid):
    """q, k, v (B, H, L, hd) of an EVA block from timm's modules, rotary embedding applied to q and k patches."""
    from timm.layers import apply_rot_embed_cat

    a = blk.attn
    b, n, d = x.shape
    y = blk.norm1(x)
    q, k, v = (p(y).reshape(b, n, a.num_heads, -1).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
    rope = trunk.rope.get_embed(shape=list(grid))
    q = torch.cat([q[:, :, :1], apply_rot_embed_cat(q[:, :, 1:], rope)], 2)
    k = torch.cat([k[:, :, :1], apply_rot_embed_cat(k[:, :, 1:], rope)], 2)
    return q, k, v


def test_dense_variants_on_eva_follow_their_definitions(tmp_path, eva_clip):
    """maskclip / sclip / clearclip / naclip / fvit on an EVA tower, written from their definitions on open_clip's
    own modules: value path through the sub-LN (attn.norm) and proj; q / k carry the rotary embedding."""
    ref, cfg = eva_clip
    torch.save(ref.state_dict(), tmp_path / "eva02.pt")
    ours = lastvit.create_model(checkpoint=str(tmp_path / "eva02.pt"), aggregator="cls", arch=cfg).eval()
    other = _at_size(ref, (48, 40))
    trunk, grid = other.visual.trunk, (6, 5)
    with torch.no_grad():
        x = trunk.norm_pre(trunk._pos_embed(trunk.patch_embed(X_ODD))[0])
        rope = trunk.rope.get_embed(shape=list(grid))
        x = trunk.blocks[0](x, rope=rope)
        blk = trunk.blocks[-1]
        q, k, v = _rope_qkv(trunk, blk, x, grid)
        s = q.shape[-1] ** -0.5

        def out(a):
            return blk.attn.proj(blk.attn.norm((a @ v).transpose(1, 2).reshape(*x.shape)))

        def full(y):
            return y + blk.mlp(blk.norm2(y))

        eye = torch.eye(x.shape[1])
        from lastvit.evaluate.dense import neighbourhood_prior

        g = neighbourhood_prior(*grid, num_prefix=1)
        expected = {
            "vanilla": blk(x, rope=rope),
            "maskclip": full(x + out(eye)),
            "fvit": full(x + out(eye)),
            "sclip": full(x + out((q @ q.transpose(-2, -1) * s).softmax(-1)
                                  + (k @ k.transpose(-2, -1) * s).softmax(-1))),
            "clearclip": out((q @ q.transpose(-2, -1) * s).softmax(-1)),
            "naclip": out((k @ k.transpose(-2, -1) * s + g).softmax(-1)),
        }
        for variant in VARIANTS:
            got, gr = dense_features(ours, X_ODD, variant)
            want = trunk.head(trunk.norm(expected[variant]))[:, 1:]
            assert gr == grid
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0, msg=variant)
        taps, dense = fvit_taps(ours, X_ODD, (0, 1))
        torch.testing.assert_close(taps[0], x[:, 1:].reshape(2, 6, 5, -1).permute(0, 3, 1, 2), atol=1e-4, rtol=0)
        assert dense.shape == (2, 16, 6, 5)


def test_token_path_pieces_on_eva(tmp_path, eva_clip):
    """forward_intermediates, token dropping (keep) and a bare block call use the grid's rotary embedding."""
    ref, cfg = eva_clip
    torch.save(ref.state_dict(), tmp_path / "eva02.pt")
    vit = lastvit.create_model(checkpoint=str(tmp_path / "eva02.pt"), aggregator="cls", arch=cfg,
                               visual_only=True).eval()
    trunk = _at_size(ref, (48, 40)).visual.trunk
    with torch.no_grad():
        final, inter = vit.forward_intermediates(X_ODD, indices=[0, 1], output_fmt="NLC", norm=True)
        _, want = trunk.forward_intermediates(X_ODD, indices=[0, 1], output_fmt="NLC", norm=True)
        for a, b in zip(inter, want):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        torch.testing.assert_close(final, trunk.forward_features(X_ODD), atol=1e-4, rtol=0)
        tokens, grid = vit.embed(X_ODD)
        every = torch.arange(30).expand(2, -1)
        torch.testing.assert_close(vit.forward_blocks(tokens, grid, keep=every), vit.forward_blocks(tokens, grid))
        kept = torch.tensor([[0, 7, 29], [3, 4, 5]])
        sub = vit.forward_blocks(tokens, grid, keep=kept)  # rope gathered for the kept patches, per image
        assert sub.shape == (2, 4, 32) and torch.isfinite(sub).all()
        blk = vit.encoder.blocks[0]
        torch.testing.assert_close(blk(tokens), vit.forward_blocks(tokens, grid, upto=1))
        with pytest.raises(ValueError, match="rotary embedding of its grid"):
            blk(tokens[:, :10])


def test_lastvit_clip_file_roundtrip_and_inspect(tmp_path, eva_clip, capsys):
    from lastvit.checkpoints import save_clip

    ref, cfg = eva_clip
    torch.save(ref.state_dict(), tmp_path / "eva02.pt")
    ours = lastvit.create_model(checkpoint=str(tmp_path / "eva02.pt"), arch=cfg).eval()
    save_clip(ours, tmp_path / "lv.pt")
    back = lastvit.create_model(checkpoint=str(tmp_path / "lv.pt")).eval()
    assert isinstance(back, CLIP) and back.visual.arch["family"] == "eva"
    with torch.no_grad():
        assert torch.equal(back.encode_image(X_ODD), ours.encode_image(X_ODD))
    assert main(["inspect", str(tmp_path / "eva02.pt"), "--arch", cfg]) == 0
    out = capsys.readouterr().out
    assert "family=eva" in out and "act=swiglu" in out and "proj_bias=True" in out and "guess:" not in out


def test_zeroshot_seg_cli_every_variant_on_an_eva_clip(tmp_path, eva_clip):
    ref, cfg = eva_clip
    torch.save(ref.state_dict(), tmp_path / "eva02.pt")
    _zeroshot_cli_all_variants(tmp_path, tmp_path / "eva02.pt", ["--arch", cfg])


def _zeroshot_cli_all_variants(tmp_path, ckpt, extra: list[str]) -> None:
    syn = tmp_path / "syn"
    assert main(["data", "synth", "--demo", "--out", str(syn), "--splits", "test", "--size", "2"]) == 0
    for variant in ("vanilla", "maskclip", "sclip", "clearclip", "naclip"):
        out = tmp_path / f"zs_{variant}"
        assert main(["evaluate", "zeroshot-seg", "--checkpoint", str(ckpt), *extra, "--dataset", "seg",
                     "--root", str(syn), "--img-dir", "test", "--ann-dir", "Segmentation/test", "--img-suffix",
                     ".png", "--classnames", str(syn / "seg_classes.txt"), "--background", "--templates", "plain",
                     "--short-side", "0", "--crop", "48", "--stride", "32", "--variant", variant, "--out", str(out),
                     "--no-progress"]) == 0
        m = json.loads((out / "metrics.json").read_text())
        assert m["images"] == 2 and 0.0 <= m["mIoU"] <= 100.0


def test_finetune_from_an_eva_clip_with_lazystrike(tmp_path, eva_clip):
    """The CLIP recipe's model from an EVA-CLIP file (heads and rope from the config): LazyStrike readout, both
    towers loaded, contrastive steps lower the loss on a fixed batch; gradient checkpointing gives the same tokens."""
    from lastvit.data import SyntheticConfig, SyntheticDataset
    from lastvit.train.clip import build

    ref, cfg = eva_clip
    torch.save(ref.state_dict(), tmp_path / "eva02.pt")
    recipe = {
        "model": {"checkpoint": str(tmp_path / "eva02.pt"), "aggregator": "lazystrike", "aggregator_kwargs": {"k": 4},
                  "arch_overrides": {"arch": cfg}},
        "data": {"synthetic": {"image_size": 32, "num_classes": 4}, "train_size": 8, "val_size": 4,
                 "global_batch": 8},
        "optim": {"lr": 2e-3, "warmup_steps": 1},
        "trainer": {"max_steps": 3, "progress_bar": False, "log_every": 1},
    }
    module, _ = build(recipe)
    model = module.model
    assert model.visual.arch["family"] == "eva" and model.visual.aggregator_name == "lazystrike"
    torch.testing.assert_close(model.text.token_embedding.weight, ref.text.token_embedding.weight)
    ds = SyntheticDataset(SyntheticConfig(image_size=32, num_classes=4), split="train", size=8)
    b = ds.batch(list(range(8)))
    batch = {"image": b["image"], "text": model.tokenize(b["caption"])}
    opt = module.configure_optimizers()["optimizer"]
    for g in opt.param_groups:
        g["lr"] = 2e-3
    losses = []
    for _ in range(4):
        loss = module.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    vit = model.visual.eval()
    plain = vit.forward_tokens(X_ODD).patches
    vit.encoder.set_grad_checkpointing(True)
    torch.testing.assert_close(vit.forward_tokens(X_ODD).patches, plain)
    vit.encoder.set_grad_checkpointing(False)


def test_every_diagnostic_runs_on_an_eva_clip(tmp_path, eva_clip):
    ref, cfg = eva_clip
    torch.save(ref.state_dict(), tmp_path / "eva02.pt")
    syn = tmp_path / "syn"
    assert main(["data", "synth", "--demo", "--out", str(syn), "--splits", "test", "--size", "2"]) == 0
    for kind in ("pib", "scores", "masking", "norms", "votes", "pca", "attention"):
        out = tmp_path / kind
        assert main(["analyze", kind, "--checkpoint", str(tmp_path / "eva02.pt"), "--arch", cfg, "--dataset",
                     "synthetic", "--root", str(syn), "--out", str(out), "--no-progress", "--num-figures", "1"]) == 0
        m = json.loads((out / "metrics.json").read_text())
        assert m["kind"] == kind, kind


def test_eva_by_timm_name(eva_clip):
    """create_model / CLIP by a timm Eva name: family "eva" read off the timm model; timm's weights load 1:1."""
    import timm

    vit = lastvit.create_model(TIMM_NAME, num_classes=0, aggregator="cls").eval()
    assert vit.arch["family"] == "eva" and vit.arch["eva"]["ref_feat_shape"] == list(REF)
    torch.manual_seed(5)
    ref = timm.create_model(TIMM_NAME, num_classes=0).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vit.encoder.load_state_dict(ref.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(vit.encode(X), ref.forward_features(X), atol=1e-5, rtol=0)
        torch.testing.assert_close(vit.encoder.forward_features(X), ref.forward_features(X), atol=1e-5, rtol=0)
    clip = CLIP(TIMM_NAME, text=dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1), embed_dim=16)
    assert clip.visual.arch["family"] == "eva" and clip.visual.head.bias is not None


@pytest.mark.parametrize("name", ["EVA02-B-16", "EVA02-L-14", "EVA02-L-14-336", "ViT-B-16-quickgelu",
                                  "ViT-L-14-quickgelu"])
def test_full_size_layouts_map_key_for_key(name):
    """open_clip's real configs, built on the meta device (no weights): every converted key of both towers has the
    shape of lastvit's CLIP built from the inferred architecture + the config's heads / rope / activation; the EVA
    configs also in BAAI's EVA-CLIP names."""
    import open_clip

    from lastvit.checkpoints import arch_config
    from lastvit.checkpoints.clip import _clip_state_dict, _split_clip_part
    from lastvit.checkpoints.formats import convert

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oc = open_clip.create_model(name, pretrained=None, device="meta")
    spec = arch_config(name)
    layouts = {"open_clip": dict(oc.state_dict())}
    if name.startswith("EVA"):
        layouts["eva_clip"] = _baai_state_dict(oc)
    for fmt, sd in layouts.items():
        ckpt = convert(sd, f"{name}.pt")
        assert ckpt.format == fmt and not ckpt.unmapped and not ckpt.unsupported
        arch = dict(ckpt.arch, num_heads=spec["num_heads"])
        if "eva" in spec:
            arch["eva"] = {**arch["eva"], **spec["eva"]}
            assert arch["family"] == "eva" and arch["eva"]["ref_feat_shape"] == [16, 16]
            assert arch["img_size"] == (336 if name.endswith("336") else 224)
        _, text_cfg, embed_dim, _ = _split_clip_part(ckpt.clip, ckpt.path)
        text_cfg["heads"] = spec["text_heads"]
        with torch.device("meta"):
            ours = CLIP(arch, text_cfg, embed_dim, quick_gelu=bool(spec.get("quick_gelu")))
        src, tgt = _clip_state_dict(ckpt), ours.state_dict()
        assert sorted(src) == sorted(tgt)
        assert [k for k in tgt if src[k].shape != tgt[k].shape] == []
        assert ours.quick_gelu == name.endswith("quickgelu")


def test_open_clip_eva_image_tower_saved_alone(tmp_path, eva_clip):
    """``model.visual.state_dict()`` of an open_clip EVA (``trunk.*``): a LastViT with the projection (and bias)."""
    ref, cfg = eva_clip
    torch.save(ref.visual.state_dict(), tmp_path / "visual.pt")
    vit = lastvit.create_model(checkpoint=str(tmp_path / "visual.pt"), arch=cfg, aggregator="cls").eval()
    assert vit.head_type == "proj" and vit.head.bias is not None and vit.load_report.ok
    with torch.no_grad():
        torch.testing.assert_close(vit(X_ODD), _at_size(ref, (48, 40)).encode_image(X_ODD), atol=1e-4, rtol=0)


def test_attention_maps_on_eva_include_the_rotary_embedding(tmp_path, eva_clip):
    # block_attention recomputes softmax(q k^T / sqrt(d)); on EVA, q and k are rotated first. Reference: the matrix
    # timm's own (non-fused) EvaAttention computes, captured where it enters the attention dropout.
    from lastvit.analysis.attention import block_attention

    ref, cfg = eva_clip
    torch.save(ref.state_dict(), tmp_path / "eva02.pt")
    clip = lastvit.create_model(checkpoint=str(tmp_path / "eva02.pt"), arch=cfg).eval()
    vit = clip.visual
    for layer in (0, -1):
        attn = vit.encoder.blocks[layer].attn
        seen: list[torch.Tensor] = []
        hook = attn.attn_drop.register_forward_hook(lambda mod, inp, out, seen=seen: seen.append(inp[0].detach()))
        attn.fused_attn = False
        try:
            with torch.no_grad():
                vit.forward_tokens(X_ODD)
        finally:
            hook.remove()
            attn.fused_attn = True
        ours = block_attention(clip, X_ODD, layer)
        assert len(seen) == 1 and seen[0].shape == ours.shape
        torch.testing.assert_close(ours, seen[0], atol=1e-5, rtol=1e-4)
