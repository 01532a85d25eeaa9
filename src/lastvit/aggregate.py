"""Readouts over ViT tokens: LazyStrike (paper Eqs. 4-8) and the baselines it is compared with.

Every readout is an ``nn.Module`` called as ``readout(patches, prefix)`` with patch tokens ``(B, N, D)`` and
prefix tokens ``(B, P, D)`` (class token first, then registers) and returns the pooled token ``(B, D)``.

LazyStrike, in words (what the released LaSt-ViT code computes):

1. low-pass filter every token along its *channel* axis: FFT, multiply by a Gaussian window of length ``D``
   (sigma ``sqrt(D)`` by default, peak 1) laid out as the release lays it out after ``fftshift`` (window
   index ``-D//2+1 .. D//2``, so for even ``D`` the peak sits one bin off DC), inverse FFT, real part;
2. score each (patch, channel): ``"code"`` = ``x / |x_lp - x|`` (the release) or ``"paper"`` =
   ``x_lp / (|x_lp - x| + eps)`` (Eq. 5);
3. for each channel pick the top-K patches by score and average the *original* features there.

Implementation notes.

* Taking the real part of ``ifft(fft(x) * w)`` for real ``x`` equals filtering with the symmetrised window
  ``(w[f] + w[-f]) / 2``; so the exact operator is a real FFT (``rfft`` / ``irfft``) with that window, or,
  equivalently, a fixed circulant ``D x D`` matrix applied to the channels. Both are offered (``method``);
  the default is chosen in ``benchmarks/bench_lazystrike.py`` (see docs/RESULTS.md).
* Both scores are computed in float32; inputs whose magnitude could overflow the FFT are first rescaled by a
  power of two (exact in floating point; both scores are invariant to it, the paper score's ``eps`` is rescaled
  with it), so huge inputs and fp16/bf16 inputs give finite scores.
* 0/0 and x/0: a ratio that is not finite is replaced by: ``0`` for 0/0 (NaN), ``+max`` for ``+inf`` and
  ``-max`` for ``-inf`` of float32. A perfectly stable positive entry therefore wins its channel.
* Ties: with K = 1 the lowest patch index among equal maximal scores is taken (``argmax``); with K > 1 the
  order among exactly equal scores is ``torch.topk``'s (implementation-defined; continuous features rarely tie).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LazyStrike",
    "ClsToken",
    "MeanPool",
    "MaxPool",
    "AttentionPool",
    "AGGREGATORS",
    "build_aggregator",
    "release_window",
    "resolve_k",
]


_BIG = 2.0**64  # above this max |x|, tokens are rescaled before the FFT
_SMALL = 2.0**-64


def release_window(dim: int, sigma: float | None = None) -> torch.Tensor:
    """The Gaussian window exactly as the release lays it out after ``fftshift`` (length ``dim``, peak 1)."""
    sigma = math.sqrt(dim) if sigma is None else float(sigma)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    t = torch.arange(-dim // 2 + 1, dim // 2 + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2.0 * sigma**2))
    return g / g.max()


def _rfft_weights(dim: int, sigma: float | None) -> torch.Tensor:
    """Real filter weights on ``rfft`` bins that reproduce ``Re(ifft(ifftshift(g) * fft(x)))`` exactly."""
    w = torch.fft.ifftshift(release_window(dim, sigma))  # weight of natural-order bin f
    w_sym = 0.5 * (w + torch.roll(torch.flip(w, [0]), 1))  # (w[f] + w[-f]) / 2
    return w_sym[: dim // 2 + 1]


def _circulant(dim: int, sigma: float | None) -> torch.Tensor:
    """The same filter as a ``D x D`` matrix ``M`` with ``x_lp = x @ M``."""
    w = _rfft_weights(dim, sigma)
    eye = torch.eye(dim, dtype=torch.float64)
    return torch.fft.irfft(torch.fft.rfft(eye, dim=-1) * w, n=dim, dim=-1)


def resolve_k(k: int | float, n: int) -> int:
    """K as a patch count: an int is clamped to ``[1, n]``; a float in (0, 1] is a fraction of ``n``."""
    if isinstance(k, bool):
        raise TypeError("k must be an int or a float fraction, not bool")
    if isinstance(k, float):
        if not 0.0 < k <= 1.0:
            raise ValueError(f"a float k is a fraction of the patch count and must lie in (0, 1], got {k}")
        return max(1, min(n, round(k * n)))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return min(int(k), n)


class LazyStrike(nn.Module):
    """Parameter-free channel-wise top-K readout of patch tokens (LaSt-ViT).

    Args:
        k: patches averaged per channel; an int, or a float fraction of the patch count.
        sigma: std of the Gaussian window in frequency bins; ``None`` means ``sqrt(D)``.
        score: ``"code"`` (released models) or ``"paper"`` (Eq. 5).
        eps: the epsilon of the ``"paper"`` score.
        method: ``"rfft"`` (real FFT) or ``"matmul"`` (the equivalent circulant matrix); same operator.
    """

    def __init__(
        self,
        k: int | float = 1,
        sigma: float | None = None,
        score: str = "code",
        eps: float = 1e-6,
        method: str = "rfft",
    ) -> None:
        super().__init__()
        if score not in ("code", "paper"):
            raise ValueError(f"score must be 'code' or 'paper', got {score!r}")
        if method not in ("rfft", "matmul"):
            raise ValueError(f"method must be 'rfft' or 'matmul', got {method!r}")
        resolve_k(k, 1_000_000)  # validates the type and range of k
        if sigma is not None and sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.k, self.sigma, self.score, self.eps, self.method = k, sigma, score, float(eps), method
        self._cache: dict[tuple, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return f"k={self.k}, sigma={self.sigma}, score={self.score!r}, eps={self.eps}, method={self.method!r}"

    def _operator(self, dim: int, device: torch.device) -> torch.Tensor:
        key = (self.method, dim, device)
        op = self._cache.get(key)
        if op is None:
            op = _rfft_weights(dim, self.sigma) if self.method == "rfft" else _circulant(dim, self.sigma)
            op = op.to(device=device, dtype=torch.float32)
            self._cache[key] = op
        return op

    def lowpass(self, x: torch.Tensor) -> torch.Tensor:
        """Low-pass filter along the last (channel) axis, in float32 (Eq. 4)."""
        x = x.float()
        op = self._operator(x.shape[-1], x.device)
        if self.method == "rfft":
            return torch.fft.irfft(torch.fft.rfft(x, dim=-1) * op, n=x.shape[-1], dim=-1)
        return x @ op

    @torch.no_grad()
    def scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """Stability score of every (patch, channel): (B, N, D) float32, always finite."""
        if tokens.ndim != 3:
            raise ValueError(f"LazyStrike expects patch tokens (B, N, D), got shape {tuple(tokens.shape)}")
        x = tokens.detach().float()
        # Both scores are invariant to a power-of-two rescaling (exact in floating point; the paper score's eps is
        # rescaled with it). Rescale only when the magnitudes could overflow (or underflow) the FFT.
        eps = self.eps
        amax = x.abs().amax()
        if amax > _BIG or (0 < amax < _SMALL):
            _, e = torch.frexp(amax)
            x = torch.ldexp(x, -e)
            eps = eps * 2.0 ** (-int(e))
        lp = self.lowpass(x)
        dev = (lp - x).abs()
        s = x / dev if self.score == "code" else lp / (dev + eps)
        big = torch.finfo(torch.float32).max
        return torch.nan_to_num(s, nan=0.0, posinf=big, neginf=-big)

    @torch.no_grad()
    def select(self, tokens: torch.Tensor) -> torch.Tensor:
        """Indices of the top-K patches per channel: (B, K, D), best first."""
        s = self.scores(tokens)
        k = resolve_k(self.k, s.shape[1])
        if k == 1:
            return s.argmax(dim=1, keepdim=True)  # the first maximal index
        return s.topk(k, dim=1).indices

    def forward(
        self, patches: torch.Tensor, prefix: torch.Tensor | None = None, return_indices: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pooled token (B, D): per channel, the mean of the original features at the selected patches."""
        idx = self.select(patches)
        pooled = torch.gather(patches, 1, idx).mean(dim=1)
        return (pooled, idx) if return_indices else pooled

    @torch.no_grad()
    def votes(
        self, tokens: torch.Tensor, return_indices: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Vote count per patch (Eq. 8): (B, N) int64, how many channels selected each patch; sums to K*D."""
        idx = self.select(tokens)
        b, n = tokens.shape[:2]
        v = torch.zeros(b, n, dtype=torch.int64, device=tokens.device)
        v.scatter_add_(1, idx.flatten(1), torch.ones_like(idx.flatten(1)))
        return (v, idx) if return_indices else v


class ClsToken(nn.Module):
    """The class-token output (Eq. 2): the first prefix token."""

    def forward(self, patches: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        if prefix is None or prefix.shape[1] == 0:
            raise ValueError("the 'cls' readout needs a class token, but the model has none (class_token=False)")
        return prefix[:, 0]


class MeanPool(nn.Module):
    """Global average of patch tokens (Eq. 1); registers and the class token are excluded."""

    def forward(self, patches: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        return patches.mean(dim=1)


class MaxPool(nn.Module):
    """Channel-wise max over patch tokens."""

    def forward(self, patches: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        return patches.amax(dim=1)


class AttentionPool(nn.Module):
    """A learned query attends over the patch tokens (multi-head), the paper's "Attention-Pool" style readout."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            num_heads = math.gcd(dim, num_heads) or 1
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, patches: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = patches.shape
        h = self.num_heads
        k, v = self.kv(patches).reshape(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        q = self.query.expand(b, -1, -1).reshape(b, 1, h, d // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, h, 1, d/h)
        return self.proj(out.transpose(1, 2).reshape(b, d))


AGGREGATORS = {
    "lazystrike": LazyStrike,
    "cls": ClsToken,
    "mean": MeanPool,
    "max": MaxPool,
    "attn": AttentionPool,
}


def build_aggregator(name: str, dim: int, **kwargs) -> nn.Module:
    """Build a readout by name (``lazystrike``, ``cls``, ``mean``, ``max``, ``attn``)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}")
    if key == "attn":
        return AttentionPool(dim, **kwargs)
    if key != "lazystrike" and kwargs:
        raise ValueError(f"aggregator {name!r} takes no options, got {sorted(kwargs)}")
    known = [p for p in inspect.signature(AGGREGATORS[key]).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ValueError(f"aggregator {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(known)}")
    return AGGREGATORS[key](**kwargs)
