"""Attention maps of the class token, recomputed so that they work with timm's fused attention.

timm's fused path (``F.scaled_dot_product_attention``) never materialises the attention matrix, so the tokens
entering the chosen block come from the model's own token path (``LastViT.embed`` + ``forward_blocks(upto=layer)``)
and ``softmax(q k^T / sqrt(d))`` is recomputed from that block's ``norm1``, ``qkv`` and q/k norms (with the
model's window mask, ``LastViT.attn_mask``, on window-attention layers). The class-token map is the CLS row
restricted to the patch columns (registers and the class token itself are left out), per head and averaged over heads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lastvit.models.vit import as_vit

__all__ = ["block_attention", "cls_attention_maps"]


@torch.no_grad()
def block_attention(model: nn.Module, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Full attention matrix (B, heads, L, L) of block ``layer`` (rows sum to 1), L = prefix + patches.

    ``layer`` counts from 0 (negative from the end); an index outside the model's blocks is an error."""
    model = as_vit(model)
    n_blocks = model.depth
    if not -n_blocks <= int(layer) < n_blocks:
        raise ValueError(f"layer {layer} is out of range for a {n_blocks}-block model "
                         f"(valid: {-n_blocks}..{n_blocks - 1})")
    li = int(layer) % n_blocks
    blk = model.encoder.blocks[li]
    attn = blk.attn
    if not hasattr(attn, "qkv"):
        raise ValueError(f"block {li} has no fused qkv projection; cannot recompute its attention")
    tokens, grid = model.embed(images)
    x = model.forward_blocks(tokens, grid, upto=li)
    qkv = attn.qkv(blk.norm1(x))
    b, n_tok, _ = qkv.shape
    heads, hd = attn.num_heads, attn.head_dim
    q, k, _ = qkv.reshape(b, n_tok, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    rotate = getattr(attn, "rotate_qk", None)  # EVA blocks: their rotary position embedding (lastvit.models.eva)
    if rotate is not None:
        q, k = rotate(q, k, grid)
    logits = (q.float() * attn.scale) @ k.float().transpose(-2, -1)
    mask = model.attn_mask(grid, device=images.device)
    if mask is not None and li in model.windowed_blocks:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1)


@torch.no_grad()
def cls_attention_maps(model: nn.Module, images: torch.Tensor, layer: int = -1) -> dict[str, Any]:
    """Class-token attention over patches: ``heads`` (B, H, h, w), ``mean`` (B, h, w) (mean over heads), and
    ``prefix_mass`` (B, H): the attention the class token spends on prefix tokens (itself and registers)."""
    model = as_vit(model)
    if not model.encoder.has_class_token:
        raise ValueError("CLS attention maps need a class token, but this model has none")
    a = block_attention(model, images, layer)
    p = model.num_prefix_tokens
    h, w = model.grid_size(images)
    row = a[:, :, 0]
    heads = row[:, :, p:].reshape(a.shape[0], a.shape[1], h, w).cpu()
    return {"heads": heads, "mean": heads.mean(dim=1), "prefix_mass": row[:, :, :p].sum(-1).cpu()}
