import pytest
import torch

from lastvit import LazyStrike
from lastvit.analysis import (
    block_attention,
    cls_attention_maps,
    foreground_pca_rgb,
    outlier_stats,
    outlier_threshold,
    pca_basis,
    pca_rgb,
    threshold_votes,
    token_norms,
    vote_maps,
)


def test_outlier_threshold_and_stats_on_constructed_norms():
    norms = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1000.0])
    # median 5.5, |x - 5.5| = 4.5 3.5 2.5 1.5 .5 .5 1.5 2.5 3.5 994.5 -> MAD 2.5
    assert outlier_threshold(norms, k=5) == pytest.approx(5.5 + 5 * 1.4826 * 2.5)
    assert outlier_threshold(norms, 150) == 150.0
    n = torch.tensor([[[1.0, 1.0], [1.0, 500.0]], [[1.0, 300.0], [1.0, 1.0]]])
    fg = torch.tensor([[[True, True], [True, True]], [[True, False], [True, True]]])
    st = outlier_stats(n, method=150, foreground=fg)
    assert st["num_outliers"] == 2 and st["outlier_fraction"] == 0.25 and st["images_with_outliers"] == 2
    assert st["background_share"] == 0.5 and st["background_fraction"] == 0.125
    with pytest.raises(ValueError):
        outlier_threshold(norms, "iqr")


def test_token_norms_match_manual_blocks(micro_vit):
    m = micro_vit("mean", reg_tokens=2)
    x = torch.randn(2, 3, 64, 64)
    res = token_norms(m, x)
    enc = m.encoder
    with torch.no_grad():
        t = m.embed(x)[0]  # patch + pos embed, prefix tokens, norm_pre: the tokens entering block 0
        outs = []
        for blk in enc.blocks:
            t = blk(t)
            outs.append(t)
    assert res["blocks"].shape == (4, 2, 8, 8) and res["prefix_blocks"].shape == (4, 2, 3)
    for i, o in enumerate(outs):
        torch.testing.assert_close(res["blocks"][i], o[:, 3:].norm(dim=-1).reshape(2, 8, 8))
    torch.testing.assert_close(res["final"], m.encode(x)[:, 3:].norm(dim=-1).reshape(2, 8, 8))


def test_votes_sum_to_k_times_d_and_thresholds(micro_vit):
    m = micro_vit("lazystrike", aggregator_kwargs={"k": 3})
    x = torch.randn(2, 3, 64, 64)
    v = vote_maps(m, x)
    assert v["k"] == 3 and v["votes"].shape == (2, 8, 8)
    assert v["votes"].flatten(1).sum(1).tolist() == [3 * 96, 3 * 96]
    with torch.no_grad():
        ref = LazyStrike(k=3).votes(m.forward_tokens(x).patches).reshape(2, 8, 8)
    assert torch.equal(v["votes"], ref)
    # a CLS model read through a fresh LazyStrike(k=2)
    v2 = vote_maps(micro_vit("cls"), x, k=2)
    assert v2["votes"].flatten(1).sum(1).tolist() == [192, 192]
    maps = threshold_votes(torch.tensor([[[10, 5], [3, 2]]]))
    assert maps[0.5].tolist() == [[[True, False], [False, False]]]  # strictly above 5
    assert maps[0.3].tolist() == [[[True, True], [False, False]]]
    assert maps[0.2].tolist() == [[[True, True], [True, False]]]


def test_pca_rgb_range_and_first_component():
    g = torch.Generator().manual_seed(0)
    # features vary mostly along one direction u: the first PCA channel must order patches by t
    u = torch.zeros(16)
    u[3] = 1.0
    t = torch.linspace(-1, 1, 2 * 9)
    feats = (t[:, None] * 10 * u + 0.01 * torch.randn(18, 16, generator=g)).reshape(2, 9, 16)
    rgb = pca_rgb(feats, (3, 3))
    assert rgb.shape == (2, 3, 3, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert rgb[..., 0].flatten().argsort().tolist() == list(range(18))  # sign fixed: loading on u positive
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == 1
    mean, comps = pca_basis(feats.reshape(-1, 16))
    assert torch.allclose(comps @ comps.T, torch.eye(3, dtype=comps.dtype), atol=1e-6)
    fg_rgb, fg = foreground_pca_rgb(feats, (3, 3))
    assert fg.sum() <= 9 and (fg_rgb[~fg] == 0).all() and fg_rgb.max() <= 1


@pytest.mark.parametrize("regs", [0, 2])
def test_attention_recomputed_matches_unfused(micro_vit, regs):
    m = micro_vit("cls", reg_tokens=regs)
    x = torch.randn(2, 3, 64, 64)
    a = block_attention(m, x, layer=-1)
    n_tok = 1 + regs + 64
    assert a.shape == (2, 3, n_tok, n_tok)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, n_tok))
    # reference: timm's non-fused path materialises softmax(q k^T * scale) before attn_drop
    attn = m.encoder.blocks[-1].attn
    attn.fused_attn = False
    seen = []
    h = attn.attn_drop.register_forward_hook(lambda _m, i, o: seen.append(o))
    with torch.no_grad():
        m.encode(x)
    h.remove()
    torch.testing.assert_close(a, seen[0], atol=1e-5, rtol=1e-5)
    maps = cls_attention_maps(m, x)
    p = 1 + regs
    torch.testing.assert_close(maps["heads"], seen[0][:, :, 0, p:].reshape(2, 3, 8, 8), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(maps["heads"].flatten(2).sum(-1) + maps["prefix_mass"], torch.ones(2, 3))
    torch.testing.assert_close(maps["mean"], maps["heads"].mean(1))


def test_attention_needs_a_class_token(micro_vit):
    with pytest.raises(ValueError, match="class token"):
        cls_attention_maps(micro_vit("mean", class_token=False), torch.randn(1, 3, 64, 64))
