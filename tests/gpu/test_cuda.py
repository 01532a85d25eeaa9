"""Device checks (``pytest -m gpu tests/gpu``): LazyStrike and the token path on the device equal the CPU result;
bf16 / fp16 autocast gives finite scores and the float32 selections on well-separated inputs; fused attention."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import lastvit
from lastvit import LazyStrike
from lastvit.analysis.scores import patch_scores
from lastvit.evaluate.discovery import LastKeys, discover, last_block_keys

pytestmark = pytest.mark.gpu

AUTOCAST = [torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _exact_float32():
    """No TF32 in the float32 comparisons (cuDNN convolutions default to it)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _model(name: str | None = None, **kw) -> lastvit.LastViT:
    """A random-weight ViT-S/16 (``LASTVIT_GPU_MODEL`` picks another timm name, e.g. for the CPU smoke run)."""
    name = name or os.environ.get("LASTVIT_GPU_MODEL", "vit_small_patch16_224")
    torch.manual_seed(0)
    return lastvit.create_model(name, aggregator="lazystrike", num_classes=10, **kw).eval()


def _separated_tokens(b: int = 4, n: int = 196, d: int = 384, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Well-separated LazyStrike inputs: high-frequency patches (channel signs alternate, so their low-pass is ~0 and
    their score ``x / |lowpass(x) - x|`` is ~ +-1) plus, per image, one patch constant over the channels (its
    low-pass is 0.9987 x: score ~ 770 in every channel; an integer, exact in bf16 and fp16): the planted winner of
    every channel. Returns tokens (B, N, D) and the winners as LazyStrike.select gives them, (B, 1, D)."""
    g = torch.Generator().manual_seed(seed)
    alt = 1.0 - 2.0 * (torch.arange(d) % 2)
    x = alt * (1.0 + 0.3 * torch.randn(b, n, d, generator=g))
    win = torch.randint(0, n, (b,), generator=g)
    x[torch.arange(b), win] = 2.0 + torch.arange(b, dtype=torch.float32)[:, None]
    return x, win[:, None, None].expand(b, 1, d)


@pytest.mark.parametrize("method", ["rfft", "matmul"])
def test_lazystrike_on_device_equals_cpu(device, method):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 196, 384, generator=g)
    ls = LazyStrike(method=method)
    s_cpu = ls.scores(x)
    s_dev = ls.scores(x.to(device)).cpu()
    torch.testing.assert_close(s_dev, s_cpu, rtol=1e-4, atol=1e-4)
    i_cpu, i_dev = ls.select(x), ls.select(x.to(device)).cpu()
    top2 = s_cpu.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3 * top2[:, 0].abs().clamp_min(1.0)  # (B, D) channels with a margin
    assert clear.float().mean() > 0.95
    assert torch.equal(i_dev[:, 0][clear], i_cpu[:, 0][clear])
    torch.testing.assert_close(ls(x.to(device)).cpu(), ls(x), rtol=1e-4, atol=1e-5)


def test_token_path_and_discovery_on_device_equal_cpu(device):
    m = _model()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        r_cpu, k_cpu = m.forward_tokens(x), last_block_keys(m, x)
        m.to(device)
        r_dev, k_dev = m.forward_tokens(x.to(device)), last_block_keys(m, x.to(device))
    torch.testing.assert_close(r_dev.patches.cpu(), r_cpu.patches, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(r_dev.pooled.cpu(), r_cpu.pooled, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(k_dev.cpu(), k_cpu, rtol=1e-3, atol=1e-3)
    samples = [{"image": x[i], "boxes": torch.tensor([[0.0, 0, 112, 112]]), "id": str(i)} for i in range(2)]
    on_dev = discover(m, samples, methods=["lost"], device=device)["lost"]
    on_cpu = discover(m.cpu(), samples, methods=["lost"])["lost"]
    assert len(on_dev.boxes) == 2 and all(len(b) == 4 for b in on_dev.boxes)
    # LOST reads only the sign pattern of A = K K^T: where it is the same on both devices the boxes must agree
    p = m.num_prefix_tokens
    for i in range(2):
        a_cpu, a_dev = k_cpu[i, p:] @ k_cpu[i, p:].T, (k_dev[i, p:] @ k_dev[i, p:].T).cpu()
        flips = int(((a_cpu > 0) != (a_dev > 0)).sum())
        assert flips <= 1e-3 * a_cpu.numel()
        if flips == 0:
            assert on_dev.boxes[i] == on_cpu.boxes[i]


@pytest.mark.parametrize("dtype", AUTOCAST, ids=["bf16", "fp16"])
def test_autocast_same_selection_on_separated_tokens(device, dtype):
    x, win = _separated_tokens()
    ls = LazyStrike()
    ref = ls.select(x.to(device)).cpu()
    assert torch.equal(ref, win)
    with torch.autocast(device.type, dtype=dtype):
        xh = x.to(device).to(dtype)  # what a half-precision encoder hands the readout
        s = ls.scores(xh)
        sel = ls.select(xh).cpu()
    assert s.dtype == torch.float32 and bool(torch.isfinite(s).all())
    assert torch.equal(sel, ref)


@pytest.mark.parametrize("dtype", AUTOCAST, ids=["bf16", "fp16"])
def test_autocast_model_scores_finite_and_close(device, dtype):
    m = _model().to(device)
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        s32, rec32 = patch_scores(m, x)
        with torch.autocast(device.type, dtype=dtype):
            s16, rec16 = patch_scores(m, x)
    assert bool(torch.isfinite(s16).all()) and bool(torch.isfinite(rec16.pooled.float()).all())
    assert (s16.float() - s32).abs().max() < 0.1
    # the argmax patch of each map survives when it is well ahead of the runner-up
    top2 = s32.flatten(1).topk(2, dim=1)
    clear = (top2.values[:, 0] - top2.values[:, 1]) > 0.05
    assert torch.equal(s16.flatten(1).argmax(1)[clear], top2.indices[:, 0][clear])


def test_fused_attention_is_used_and_matches_math(device):
    m = _model().to(device)
    attn = m.encoder.blocks[0].attn
    assert getattr(attn, "fused_attn", False), "timm attention does not use F.scaled_dot_product_attention"
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4)).to(device)
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION] if device.type == "cuda" \
        else [SDPBackend.FLASH_ATTENTION]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.no_grad():
        with sdpa_kernel([SDPBackend.MATH]):
            ref = m.forward_tokens(x).patches.float()
        with sdpa_kernel(backends), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            fused = m.forward_tokens(x).patches.float()  # raises if no fused kernel accepts these inputs
    tol = 5e-2 if dtype != torch.float32 else 1e-4
    assert F.cosine_similarity(fused.flatten(1), ref.flatten(1)).min() > 1 - tol


def test_last_keys_hook_on_device(device):
    m = _model("vit_micro_patch8_64").to(device)
    x = torch.randn(2, 3, 64, 64, device=device)
    with torch.no_grad(), LastKeys(m) as hk:
        m.forward_tokens(x)
    assert hk.keys is not None and hk.keys.device.type == device.type
    assert hk.keys.shape == (2, m.num_prefix_tokens + 64, m.encoder.embed_dim)
