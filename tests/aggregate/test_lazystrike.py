"""LazyStrike against a plain transcription of the paper's Eqs. 4-8 and the released code's centring."""

import math

import pytest
import torch

from lastvit import LazyStrike, build_aggregator
from lastvit.aggregate import release_window, resolve_k


def reference_lowpass(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Eq. 4 as the release writes it: fft, fftshift, Gaussian window, ifftshift, ifft, real part (float64)."""
    d = x.shape[-1]
    sigma = math.sqrt(d) if sigma is None else sigma
    t = torch.arange(-d // 2 + 1, d // 2 + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.max()
    spec = torch.fft.fftshift(torch.fft.fft(x.double(), dim=-1), dim=-1) * g
    return torch.fft.ifft(torch.fft.ifftshift(spec, dim=-1), dim=-1).real


def reference_pool(x: torch.Tensor, k: int, score: str, eps: float = 1e-6, sigma=None):
    """Eqs. 5-7 by loops: per channel, top-k patches by score, mean of the original features."""
    lp = reference_lowpass(x, sigma)
    dev = (lp - x.double()).abs()
    s = x.double() / dev if score == "code" else lp / (dev + eps)
    b, n, d = x.shape
    out = torch.empty(b, d, dtype=torch.float64)
    sel = torch.empty(b, k, d, dtype=torch.long)
    for i in range(b):
        for j in range(d):
            order = sorted(range(n), key=lambda p: (-s[i, p, j].item(), p))[:k]
            sel[i, :, j] = torch.tensor(order)
            out[i, j] = x[i, order, j].double().mean()
    return out, sel


@pytest.mark.parametrize("d", [7, 8, 33, 64])
@pytest.mark.parametrize("method", ["rfft", "matmul"])
def test_lowpass_matches_release_centring(d, method):
    x = torch.randn(2, 5, d)
    lp = LazyStrike(method=method).lowpass(x)
    assert torch.allclose(lp.double(), reference_lowpass(x), atol=1e-5)


def test_even_window_peak_is_one_bin_off_dc():
    g = release_window(8)
    # after fftshift DC sits at index d//2; the release's peak (t = 0) sits at index d//2 - 1
    assert g.argmax().item() == 8 // 2 - 1
    assert g[8 // 2] < 1.0
    g_odd = release_window(7)
    assert g_odd.argmax().item() == 7 // 2  # odd D: centred exactly on DC


@pytest.mark.parametrize("d", [7, 16, 33])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("score", ["code", "paper"])
def test_pool_matches_transcription(d, k, score):
    torch.manual_seed(d * 10 + k)
    x = torch.randn(2, 9, d)
    pooled, idx = LazyStrike(k=k, score=score)(x, return_indices=True)
    ref, ref_idx = reference_pool(x, k, score)
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(pooled.double(), ref, atol=1e-6)


def test_sigma_changes_the_filter():
    x = torch.randn(1, 6, 32)
    a = LazyStrike(sigma=2.0).lowpass(x)
    assert torch.allclose(a.double(), reference_lowpass(x, 2.0), atol=1e-5)
    assert not torch.allclose(a, LazyStrike().lowpass(x), atol=1e-3)


def test_k_equal_n_is_mean_pooling():
    x = torch.randn(3, 10, 24)
    assert torch.allclose(LazyStrike(k=10)(x), x.mean(1), atol=1e-6)
    assert torch.allclose(LazyStrike(k=1.0)(x), x.mean(1), atol=1e-6)
    assert torch.allclose(LazyStrike(k=10)(x), build_aggregator("mean", 24)(x, None), atol=1e-6)


def test_float_k_is_fraction_of_patches():
    assert resolve_k(0.25, 196) == 49
    assert resolve_k(0.5, 196) == 98
    assert resolve_k(0.001, 196) == 1
    assert resolve_k(500, 196) == 196
    idx = LazyStrike(k=0.5).select(torch.randn(1, 10, 8))
    assert idx.shape == (1, 5, 8)
    with pytest.raises(ValueError):
        LazyStrike(k=1.5)
    with pytest.raises(ValueError):
        LazyStrike(k=0)


@pytest.mark.parametrize("k", [1, 4])
def test_votes_sum_to_k_times_d(k):
    x = torch.randn(2, 12, 20)
    v, idx = LazyStrike(k=k).votes(x, return_indices=True)
    assert v.shape == (2, 12)
    assert torch.all(v.sum(1) == k * 20)
    assert torch.all(v >= 0)
    # votes count exactly the selected indices
    manual = torch.zeros(2, 12, dtype=torch.long)
    for b in range(2):
        for i in idx[b].flatten().tolist():
            manual[b, i] += 1
    assert torch.equal(v, manual)


@pytest.mark.parametrize("score", ["code", "paper"])
def test_scores_finite_on_degenerate_tokens(score):
    ls = LazyStrike(k=2, score=score)
    flat = torch.full((1, 5, 16), 3.0)  # constant tokens: x_lp == x (0 deviation)
    zeros = torch.zeros(1, 5, 16)
    huge = (torch.rand(1, 5, 16) * 2 - 1) * 3e38  # finite, near float32 max
    tiny = torch.randn(1, 5, 16) * 1e-30
    mixed = torch.cat([zeros[:, :2], torch.randn(1, 3, 16)], 1)
    for x in (flat, zeros, huge, tiny, mixed):
        s = ls.scores(x)
        assert torch.isfinite(s).all()
        assert torch.isfinite(LazyStrike(k=1, score=score)(x)).all()
    # 0/0 resolves to 0; with K = 1 ties go to the lowest patch index
    assert torch.all(ls.scores(zeros) == 0)
    assert torch.all(LazyStrike(k=1, score=score).select(zeros) == 0)
    # x / 0 with x > 0 is the largest score: a perfectly flat positive token wins every channel
    flat_first = torch.cat([torch.full((1, 1, 16), 2.0), torch.randn(1, 4, 16)], 1)
    assert torch.all(LazyStrike(k=1, score="code").select(flat_first) == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    x = torch.randn(2, 9, 32)
    ls = LazyStrike(k=2)
    out = ls(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    # selection is made in float32 on the rounded inputs
    assert torch.equal(ls.select(x.to(dtype)), ls.select(x.to(dtype).float()))


def test_scale_invariance_of_code_score():
    x = torch.randn(2, 7, 16)
    ls = LazyStrike(k=2)
    assert torch.equal(ls.select(x), ls.select(x * 1024.0))
    assert torch.equal(ls.select(x), ls.select(x * 3.7))


def test_gradient_reaches_only_gathered_entries():
    x = torch.randn(2, 6, 10, requires_grad=True)
    ls = LazyStrike(k=2)
    ls(x).sum().backward()
    idx = ls.select(x)
    expected = torch.zeros_like(x)
    for b in range(2):
        for kk in range(2):
            for j in range(10):
                expected[b, idx[b, kk, j], j] += 0.5
    assert torch.allclose(x.grad, expected)


def test_bad_input():
    with pytest.raises(ValueError, match="score"):
        LazyStrike(score="nope")
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        LazyStrike()(torch.randn(4, 8))
    with pytest.raises(ValueError, match="unknown aggregator"):
        build_aggregator("gem", 8)


def test_baselines():
    x = torch.randn(2, 5, 8)
    prefix = torch.randn(2, 3, 8)
    assert torch.equal(build_aggregator("cls", 8)(x, prefix), prefix[:, 0])
    assert torch.equal(build_aggregator("max", 8)(x, prefix), x.amax(1))
    attn = build_aggregator("attn", 8, num_heads=2)
    assert attn(x, prefix).shape == (2, 8)
    with pytest.raises(ValueError, match="class token"):
        build_aggregator("cls", 8)(x, prefix[:, :0])


def test_an_unknown_readout_option_is_a_value_error_naming_the_options():
    with pytest.raises(ValueError, match=r"no option 'bogus'; its options: k, sigma, score, eps"):
        build_aggregator("lazystrike", 8, k=2, bogus=1)
    assert build_aggregator("lazystrike", 8, k=2).k == 2
