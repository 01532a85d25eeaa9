"""Dense (per-patch) features of a LastViT image tower, with training-free last-block variants.

Every variant runs the encoder unchanged up to the last block and recomputes only the LAST block of the timm
encoder from its own weights; the output tokens then go through the final norm and, for a CLIP tower
(``head="proj"``), the projection head. Notation for the last block: ``y = norm1(x)``, per head
``q, k, v = qkv(y)`` (after timm's ``q_norm`` / ``k_norm``), ``s = head_dim ** -0.5``,
``O(A) = proj(concat_heads(A v))`` and ``ls1`` / ``ls2`` the block's LayerScales (identity when absent).

=============  =========================================================================================  =========
variant        last block                                                                                 source
=============  =========================================================================================  =========
``vanilla``    the block as trained: ``x + ls1(O(softmax(s q k^T)))``, then ``+ ls2(mlp(norm2(.)))``      --
``maskclip``   value path for attention: ``x + ls1(proj(v))``, then ``+ ls2(mlp(norm2(.)))``             MaskCLIP
``sclip``      ``x + ls1(O(softmax(s q q^T) + softmax(s k k^T)))``, then ``+ ls2(mlp(norm2(.)))``          SCLIP
``clearclip``  ``ls1(O(softmax(s q q^T)))``; no residual, no FFN                                          ClearCLIP
``naclip``     ``ls1(O(softmax(s k k^T + G)))``; no residual, no FFN ("reduced" block)                    NACLIP
``fvit``       the ``maskclip`` block (value path, residual and FFN kept), see :func:`fvit_taps`           F-ViT
=============  =========================================================================================  =========

``G`` is NACLIP's neighbourhood prior: for patches ``i = (r, c)`` and ``j = (r', c')`` on the grid,
``G_ij = exp(-((r - r')^2 + (c - c')^2) / (2 * std^2))`` (peak 1, ``std = 5`` by default), and ``0`` on every row
or column of a prefix token (class token, registers). The definitions follow the authors' repositories
(SCLIP ``custom_attn(csa=True)`` keeps the residual and FFN; ClearCLIP and NACLIP's ``reduced`` architecture drop
both; MaskCLIP takes the value embedding through the output projection and keeps the residual and FFN, and so does
F-ViT's ``forward_without_attn`` last block (CLIPSelf). ClearCLIP's own "MaskCLIP" baseline drops the residual and
FFN: that reading is not a variant here). LazyStrike models use ``vanilla``. With window attention
(``arch["window_size"] > 0``) the earlier blocks keep their windows; a recomputed last block attends globally.
Every variant reaches the blocks through the model's public token path (``embed`` / ``forward_blocks``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lastvit.models.vit import LastViT, as_vit

__all__ = ["VARIANTS", "dense_features", "fvit_taps", "neighbourhood_prior", "last_block_variant"]

VARIANTS = ("vanilla", "maskclip", "sclip", "clearclip", "naclip", "fvit")


def neighbourhood_prior(h: int, w: int, std: float = 5.0, num_prefix: int = 0, device=None) -> torch.Tensor:
    """NACLIP's additive attention prior (P + h*w, P + h*w): Gaussian of the grid distance, zero for prefix."""
    r = torch.arange(h, device=device, dtype=torch.float32).repeat_interleave(w)
    c = torch.arange(w, device=device, dtype=torch.float32).repeat(h)
    d2 = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
    g = torch.exp(-d2 / (2.0 * std**2))
    if num_prefix:
        g = F.pad(g, (num_prefix, 0, num_prefix, 0))
    return g


def _until_last(vit: LastViT, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Token sequence entering the last block (window attention included) and the grid."""
    tokens, grid = vit.embed(images)
    return vit.forward_blocks(tokens, grid, upto=vit.depth - 1), grid


def last_block_variant(
    blk: nn.Module, x: torch.Tensor, variant: str, grid: tuple[int, int], num_prefix: int, gaussian_std: float = 5.0
) -> torch.Tensor:
    """Apply the last timm ``Block`` to ``x`` (B, L, D) under one of :data:`VARIANTS`."""
    if variant == "vanilla":
        return blk(x)
    attn = blk.attn
    b, n, d = x.shape
    nh = attn.num_heads
    hd = d // nh
    qkv = attn.qkv(blk.norm1(x)).reshape(b, n, 3, nh, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, H, L, hd)
    q, k = attn.q_norm(q), attn.k_norm(k)
    rotate = getattr(attn, "rotate_qk", None)  # EVA blocks: their rotary position embedding (lastvit.models.eva)
    if rotate is not None:
        q, k = rotate(q, k, grid)
    s = hd**-0.5
    if variant in ("maskclip", "fvit"):
        out = v
    elif variant == "sclip":
        a = (q @ q.transpose(-2, -1) * s).softmax(-1) + (k @ k.transpose(-2, -1) * s).softmax(-1)
        out = a @ v
    elif variant == "clearclip":
        out = (q @ q.transpose(-2, -1) * s).softmax(-1) @ v
    elif variant == "naclip":
        g = neighbourhood_prior(*grid, std=gaussian_std, num_prefix=num_prefix, device=x.device).to(q.dtype)
        out = (k @ k.transpose(-2, -1) * s + g).softmax(-1) @ v
    else:
        raise ValueError(f"unknown dense variant {variant!r}; choose from {VARIANTS}")
    out = out.transpose(1, 2).reshape(b, n, d)
    norm = getattr(attn, "norm", None)
    if norm is not None:
        out = norm(out)
    out = blk.ls1(attn.proj(out))
    if variant in ("sclip", "maskclip", "fvit"):
        x = x + out
        return x + blk.ls2(blk.mlp(blk.norm2(x)))
    return out


def _project(vit: LastViT, patches: torch.Tensor, project: bool) -> torch.Tensor:
    return vit.head(patches) if project and vit.head_type == "proj" else patches


@torch.no_grad()
def dense_features(
    vit: nn.Module, images: torch.Tensor, variant: str = "vanilla", gaussian_std: float = 5.0, project: bool = True
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Per-patch features (B, N, E) and the grid (h, w) of a LastViT (or a CLIP's image tower) under ``variant``.

    Tokens are final-normed; with ``project`` and a projection head (``head="proj"``) they are projected into
    the joint embedding space. Not normalised.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown dense variant {variant!r}; choose from {VARIANTS}")
    vit = as_vit(vit)
    p = vit.num_prefix_tokens
    if variant == "vanilla":
        tokens, grid = vit.encode(images), vit.grid_size(images)
    else:
        x, grid = _until_last(vit, images)
        tokens = vit.encoder.norm(last_block_variant(vit.encoder.blocks[-1], x, variant, grid, p, gaussian_std))
    return _project(vit, tokens[:, p:], project), grid


@torch.no_grad()
def fvit_taps(
    vit: nn.Module, images: torch.Tensor, indices: Sequence[int], *, project: bool = True
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """F-ViT's backbone pass (CLIPSelf ``forward_without_attn``): block taps and the dense CLIP map in ONE pass.

    ``fvit_taps(vit, images, indices, *, project=True) -> (taps, dense_map)``

    Args:
        vit: a LastViT or a CLIP (its image tower is used); run frozen (no gradients are recorded).
        images: (B, 3, H, W), H and W multiples of the patch size.
        indices: block indices to tap (negative allowed), e.g. ``(3, 5, 7, 11)`` for B/16, ``(6, 10, 14, 23)`` for
            L/14. The LAST block is always run the F-ViT way -- attention replaced by the value path, residual and
            FFN kept (variant ``"fvit"`` of :func:`last_block_variant`) -- so a tap at the last block is its output.
        project: project the dense map with the CLIP head (``head="proj"``); otherwise it stays in the width D.

    Returns:
        ``taps``: one (B, D, h, w) map per index, in the order given: raw block outputs (no final norm), prefix
        tokens dropped, row-major grid; ``dense_map``: (B, E, h, w) = ``head(norm(last block output))`` over the
        patches, NOT L2-normalised (F-ViT normalises it before its region scores).
    """
    vit = as_vit(vit)
    n = vit.depth
    take = []
    for i in indices:
        if not -n <= int(i) < n:
            raise ValueError(f"tap index {i} is out of range for a {n}-block model (valid: {-n}..{n - 1})")
        take.append(int(i) % n)
    last = n - 1
    inner = sorted({i for i in take if i != last})
    tokens, grid = vit.embed(images)
    x, outs = vit.forward_blocks(tokens, grid, upto=last, indices=inner)
    p = vit.num_prefix_tokens
    y = last_block_variant(vit.encoder.blocks[-1], x, "fvit", grid, p)
    by_index = dict(zip(inner, outs))
    by_index[last] = y
    b = y.shape[0]

    def to_map(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) patches -> (B, C, h, w)
        return t.reshape(b, *grid, t.shape[-1]).permute(0, 3, 1, 2).contiguous()

    taps = [to_map(by_index[i][:, p:]) for i in take]
    dense = _project(vit, vit.encoder.norm(y)[:, p:], project)
    return taps, to_map(dense)
