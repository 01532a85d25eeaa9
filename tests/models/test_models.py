"""LastViT: one class for every readout, prefix bookkeeping in one place, any image size."""

import pytest
import torch

import lastvit
from lastvit.models import LastViT
from lastvit.models.arch import arch_from_timm

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize("reg", [0, 4])
@pytest.mark.parametrize("agg", ["lazystrike", "cls", "mean", "max", "attn"])
def test_forward_tokens_record(agg, reg):
    m = lastvit.create_model(aggregator=agg, num_classes=5, reg_tokens=reg, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    rec = m.forward_tokens(x)
    assert rec.prefix.shape == (2, 1 + reg, 32)
    assert rec.patches.shape == (2, 16, 32)
    assert rec.grid == (4, 4)
    assert rec.pooled.shape == (2, 32)
    seq = m.encode(x)
    assert torch.equal(seq[:, 1 + reg:], rec.patches)
    assert torch.allclose(m(x), m.head(rec.pooled))
    if agg == "cls":
        assert torch.equal(rec.pooled, seq[:, 0])
    if agg == "mean":  # registers and the class token are not averaged
        assert torch.allclose(rec.pooled, seq[:, 1 + reg:].mean(1))


def test_lazystrike_reads_patch_tokens_only():
    m = lastvit.create_model(aggregator="lazystrike", aggregator_kwargs={"k": 3}, num_classes=0, reg_tokens=2, **TINY)
    x = torch.randn(1, 3, 32, 32)
    rec = m.forward_tokens(x)
    assert torch.allclose(rec.pooled, lastvit.LazyStrike(k=3)(rec.patches))
    assert torch.allclose(m(x), rec.pooled)  # num_classes=0: no head


def test_other_image_sizes_interpolate_position_embeddings():
    m = lastvit.create_model(num_classes=3, **TINY).eval()
    rec = m.forward_tokens(torch.randn(1, 3, 48, 40))
    assert rec.grid == (6, 5) and rec.patches.shape[1] == 30
    with pytest.raises(ValueError, match="divisible"):
        m(torch.randn(1, 3, 30, 32))


def test_window_attention_equals_global_when_window_covers_grid():
    torch.manual_seed(0)
    g = lastvit.create_model(num_classes=3, **TINY).eval()
    w = lastvit.create_model(num_classes=3, window_size=4, **TINY).eval()
    w.load_state_dict(g.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(g(x), w(x), atol=1e-5)
    w2 = lastvit.create_model(num_classes=3, window_size=2, window_layers=[0], **TINY).eval()
    w2.load_state_dict(g.state_dict())
    assert not torch.allclose(g(x), w2(x), atol=1e-3)


def test_window_attention_restricts_patch_interactions():
    torch.manual_seed(0)
    m = lastvit.create_model(num_classes=0, aggregator="mean", window_size=2, class_token=False, **TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[..., 16:, 16:] = torch.randn(1, 3, 16, 16)  # change only the bottom-right 2x2 window cells
    a, b = m.forward_tokens(x).patches, m.forward_tokens(y).patches
    changed = (a - b).abs().amax(-1).reshape(4, 4) > 1e-5
    assert changed[2:, 2:].all() and not changed[:2, :].any() and not changed[:, :2].any()


def test_config_round_trip():
    m = lastvit.create_model("vit_micro_patch8_64", aggregator="lazystrike", aggregator_kwargs={"k": 0.25},
                             num_classes=7, reg_tokens=1)
    m2 = LastViT.from_config(m.config())
    m2.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(m.eval()(x), m2.eval()(x))
    assert m2.config() == m.config()


def test_timm_names_and_errors():
    arch = arch_from_timm("vit_small_patch14_reg4_dinov2")
    assert arch["reg_tokens"] == 4 and arch["patch_size"] == 14 and arch["init_values"] is not None
    clip = arch_from_timm("vit_base_patch16_clip_224")
    assert clip["pre_norm"] and clip["norm_eps"] == 1e-5
    with pytest.raises(ValueError, match="unknown model name"):
        lastvit.create_model("not_a_model")
    with pytest.raises(TypeError, match="unknown keyword"):
        lastvit.create_model(depth=2, widht=3)


def test_set_aggregator_swaps_readout():
    m = lastvit.create_model(aggregator="cls", num_classes=0, **TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    rec = m.forward_tokens(x)
    m.set_aggregator("lazystrike", k=2)
    assert torch.allclose(m(x), lastvit.LazyStrike(k=2)(rec.patches))
    assert m.config()["aggregator"] == "lazystrike"
