"""LastViT's public token path: embed / attn_mask / forward_blocks / forward_intermediates, and position-embedding
resampling by source family (issue 14.1), each checked against its definition written out here."""

import math

import pytest
import torch
import torch.nn.functional as F

from lastvit.models.vit import POS_INTERP, LastViT, as_vit

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)


def _manual_tokens(m: LastViT, images: torch.Tensor, patch_pe: torch.Tensor) -> torch.Tensor:
    """Tokens entering block 0 written from the definition: conv patches, class token first, + position, norm_pre.

    ``patch_pe`` is the (1, h*w, D) patch part of the position embedding computed by the test's own formula.
    """
    enc = m.encoder
    conv = enc.patch_embed.proj
    x = F.conv2d(images, conv.weight, conv.bias, stride=conv.stride).flatten(2).transpose(1, 2)
    cls = enc.cls_token.expand(x.shape[0], -1, -1)
    pe = torch.cat([enc.pos_embed[:, :1], patch_pe], dim=1)
    x = torch.cat([cls, x], dim=1) + pe
    ln = enc.norm_pre
    if isinstance(ln, torch.nn.LayerNorm):
        x = F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    return x


def _dino_patch_pe(pos_embed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """DINO's interpolate_pos_encoding: bicubic on the sqrt(N) x sqrt(N) grid, scale ((h0 + .1)/sqrt(N), ...)."""
    n = pos_embed.shape[1] - 1
    s = int(math.sqrt(n))
    grid = pos_embed[:, 1:].reshape(1, s, s, -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, scale_factor=((h + 0.1) / math.sqrt(n), (w + 0.1) / math.sqrt(n)), mode="bicubic",
                        align_corners=False)
    assert out.shape[-2:] == (h, w)
    return out.permute(0, 2, 3, 1).reshape(1, h * w, -1)


def _open_clip_patch_pe(pos_embed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bicubic resize of the grid to the new (h, w), align_corners False."""
    s = int(math.sqrt(pos_embed.shape[1] - 1))
    grid = pos_embed[:, 1:].reshape(1, s, s, -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(1, h * w, -1)


@pytest.mark.parametrize("family", ["dino", "open_clip"])
def test_pos_interp_follows_the_family_formula_at_480x352(family):
    torch.manual_seed(0)
    layout = dict(img_size=224, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    if family == "open_clip":  # open_clip / OpenAI tower: ln_pre, LayerNorm eps 1e-5
        layout.update(pre_norm=True, norm_eps=1e-5, act="quick_gelu")
    m = LastViT({**layout, "pos_interp": family}, num_classes=0, head="none").eval()
    with torch.no_grad():
        m.encoder.pos_embed.normal_()  # a rough embedding: resampling rules differ visibly
    x = torch.randn(1, 3, 480, 352)  # grid 30 x 22 from a native 14 x 14
    formula = _dino_patch_pe if family == "dino" else _open_clip_patch_pe
    with torch.no_grad():
        got, grid = m.embed(x)
        ref = _manual_tokens(m, x, formula(m.encoder.pos_embed, 30, 22))
        timm_way = LastViT({**layout, "pos_interp": "timm"}, num_classes=0, head="none").eval()
        timm_way.load_state_dict(m.state_dict())
        old, _ = timm_way.embed(x)
    assert grid == (30, 22) and got.shape == (1, 1 + 30 * 22, 32)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert (old - ref).abs().max() > 1e-3  # timm's resampling (today's behaviour) is not the family's
    # the native square grid is left alone by every family
    with torch.no_grad():
        native, _ = m.embed(torch.randn(1, 3, 224, 224))
    assert native.shape[1] == 197
    assert m.config()["arch"]["pos_interp"] == family
    assert LastViT.from_config(m.config()).arch["pos_interp"] == family


def test_pos_interp_default_and_validation():
    m = LastViT(TINY, num_classes=0)
    assert m.arch["pos_interp"] == "timm" and set(POS_INTERP) == {"timm", "dino", "open_clip"}
    with pytest.raises(ValueError, match="pos_interp"):
        LastViT({**TINY, "pos_interp": "nearest"}, num_classes=0)


def _manual_blocks(m, tokens, mask=None, windowed=None):
    outs = []
    for i, blk in enumerate(m.encoder.blocks):
        tokens = blk(tokens, attn_mask=mask) if (mask is not None and i in windowed) else blk(tokens)
        outs.append(tokens)
    return outs


@pytest.mark.parametrize("kw", [{}, dict(reg_tokens=2), dict(window_size=2, window_layers=[0, 2])])
def test_forward_blocks_and_intermediates(kw):
    torch.manual_seed(0)
    m = LastViT({**TINY, **kw}, num_classes=4).eval()
    x = torch.randn(2, 3, 32, 40)
    p = m.num_prefix_tokens
    with torch.no_grad():
        tokens, grid = m.embed(x)
        mask = m.attn_mask(grid)
        assert (mask is None) == ("window_size" not in kw)
        ref = _manual_blocks(m, tokens, mask, {0, 2})
        torch.testing.assert_close(m.forward_blocks(tokens, grid), ref[-1])
        torch.testing.assert_close(m.forward_blocks(tokens, grid, upto=2), ref[1])
        out, taps = m.forward_blocks(tokens, grid, indices=[0, -1])
        torch.testing.assert_close(taps[0], ref[0])
        torch.testing.assert_close(taps[1], ref[2])
        torch.testing.assert_close(m.encode(x), m.encoder.norm(ref[-1]))
        final, inter = m.forward_intermediates(x, [1], norm=True)
        torch.testing.assert_close(final, m.encode(x))
        exp = m.encoder.norm(ref[1])[:, p:].reshape(2, *grid, 32).permute(0, 3, 1, 2)
        torch.testing.assert_close(inter[0], exp)
        _, last2 = m.forward_intermediates(x, 2, output_fmt="NLC", return_prefix_tokens=True)
        torch.testing.assert_close(last2[0][0], ref[1][:, p:])
        torch.testing.assert_close(last2[1][1], ref[2][:, :p])
        stopped, early = m.forward_intermediates(x, [0], stop_early=True)
        assert stopped is None and len(early) == 1
    with pytest.raises(ValueError, match="out of range"):
        m.forward_blocks(tokens, grid, indices=[3])
    with pytest.raises(ValueError, match="out of range"):
        m.forward_intermediates(x, [-4])


def test_forward_blocks_keep_drops_tokens():
    """keep: only prefix tokens and the kept patches enter the blocks, windows restricted to kept patches."""
    torch.manual_seed(0)
    m = LastViT({**TINY, "window_size": 2}, num_classes=0, aggregator="mean").eval()
    x = torch.randn(1, 3, 32, 32)
    keep = torch.tensor([[0, 1, 5, 10, 15]])
    with torch.no_grad():
        tokens, grid = m.embed(x)
        got = m.forward_blocks(tokens, grid, keep=keep)
        sub = torch.cat([tokens[:, :1], tokens[:, 1:][:, keep[0]]], dim=1)
        # the window cell of each kept patch on the 4 x 4 grid with 2 x 2 windows
        cell = [(i // 4) // 2 * 2 + (i % 4) // 2 for i in keep[0].tolist()]
        mask = torch.ones(6, 6, dtype=torch.bool)
        mask[1:, 1:] = torch.tensor([[a == b for b in cell] for a in cell])
        ref = _manual_blocks(m, sub, mask, {0, 1, 2})[-1]
    torch.testing.assert_close(got, ref)
    assert got.shape == (1, 6, 32)


def test_as_vit():
    from lastvit.models.clip import CLIP

    torch.manual_seed(0)
    clip = CLIP("vit_micro_patch8_64", text=dict(context_length=8, vocab_size=32, width=16, heads=2, layers=1),
                embed_dim=16)
    assert as_vit(clip) is clip.visual
    m = LastViT(TINY, num_classes=0)
    assert as_vit(m) is m
    with pytest.raises(TypeError, match="LastViT"):
        as_vit(torch.nn.Linear(2, 2))


def test_timm_family_is_timms_forward_features():
    """Default resampling: the token path is timm's own forward_features at any size (today's behaviour)."""
    torch.manual_seed(0)
    m = LastViT({**TINY, "reg_tokens": 1}, num_classes=0).eval()
    x = torch.randn(2, 3, 48, 24)
    with torch.no_grad():
        torch.testing.assert_close(m.encode(x), m.encoder.forward_features(x), rtol=0, atol=0)
