"""Architecture inference from encoder tensors named as timm names them (``patch_embed.proj.weight`` ...)."""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from lastvit.checkpoints.records import CheckpointError
from lastvit.models.vit import ARCH_DEFAULTS

__all__ = ["infer_arch", "default_num_heads"]

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def default_num_heads(width: int) -> int:
    """Heads are not stored in the weights; standard ViTs use 64-wide heads (192->3, 384->6, 768->12, 1024->16)."""
    return max(1, width // 64)


def _is_square(n: int) -> bool:
    r = math.isqrt(n)
    return n > 0 and r * r == n


def infer_arch(enc: dict[str, torch.Tensor], path: str, *, norm_eps: float = 1e-6, act: str = "gelu",
               notes: list[str] | None = None) -> dict[str, Any]:
    """Architecture keys of a timm-named encoder state dict (keys without the ``encoder.`` prefix).

    Read off the weights: width, depth, patch size, image size (pos-embed length minus prefix tokens),
    register tokens, MLP ratio, qkv bias, pre-norm, LayerScale, whether the pos-embed covers the class token.
    Not in the weights: ``num_heads`` (width / 64, recorded in ``notes``), LayerNorm eps and activation
    (given by the format).
    """
    notes = notes if notes is not None else []
    w = enc.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        raise CheckpointError(f"{path}: no patch embedding (patch_embed.proj.weight of shape (D, 3, p, p)) found")
    dim, _, ph, pw = w.shape
    if ph != pw:
        raise CheckpointError(f"{path}: non-square patches {ph}x{pw} are not supported")
    blocks = sorted({int(m.group(1)) for k in enc if (m := _BLOCK.match(k))})
    if not blocks:
        raise CheckpointError(f"{path}: no transformer blocks found")
    depth = blocks[-1] + 1
    if blocks != list(range(depth)):
        raise CheckpointError(f"{path}: transformer block indices are not contiguous ({blocks[:8]}...)")
    eva = "blocks.0.attn.q_proj.weight" in enc  # timm Eva names: separate q / k / v projections
    fc1 = enc.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        fc1 = enc.get("blocks.0.mlp.fc1_g.weight")  # EVA SwiGLU with sub-LN: separate gate and value
    if fc1 is None:
        raise CheckpointError(f"{path}: block 0 has no MLP (mlp.fc1.weight or, EVA, mlp.fc1_g.weight)")
    class_token = "cls_token" in enc
    reg = int(enc["reg_token"].shape[1]) if "reg_token" in enc else 0
    prefix = int(class_token) + reg
    pos = enc.get("pos_embed")
    if pos is None:
        raise CheckpointError(f"{path}: no absolute position embedding (pos_embed); other layouts are not supported")
    length = int(pos.shape[1])
    if _is_square(length - prefix):
        no_embed_class, n = False, length - prefix
        if prefix and _is_square(length):
            notes.append(f"pos_embed length {length} fits both {length - prefix} patches + {prefix} prefix "
                         f"and {length} patches; assumed the first (timm default)")
    elif _is_square(length):
        no_embed_class, n = True, length
    else:
        raise CheckpointError(f"{path}: pos_embed length {length} is not a square patch grid "
                              f"(with or without {prefix} prefix token(s))")
    heads = default_num_heads(int(dim))
    notes.append(f"num_heads is not stored in the weights: assumed {heads} (width {int(dim)} / 64); "
                 "pass num_heads=... (or a model name) to override")
    hidden = float(fc1.shape[0])
    eva_opts = None
    if eva:
        eva_opts, hidden = _eva_options(enc, notes)
    arch = dict(ARCH_DEFAULTS)
    arch.update(
        img_size=math.isqrt(n) * int(ph),
        patch_size=int(ph),
        embed_dim=int(dim),
        depth=depth,
        num_heads=heads,
        mlp_ratio=hidden / float(dim),
        qkv_bias="blocks.0.attn.qkv.bias" in enc or "blocks.0.attn.q_proj.bias" in enc,
        class_token=class_token,
        reg_tokens=reg,
        no_embed_class=no_embed_class,
        pre_norm="norm_pre.weight" in enc,
        act=act,
        norm_eps=norm_eps,
        init_values=1e-5 if ("blocks.0.ls1.gamma" in enc or "blocks.0.gamma_1" in enc) else None,
    )
    if eva:
        arch.update(family="eva", eva=eva_opts, act="swiglu" if eva_opts["swiglu_mlp"] else "gelu")
    return arch


def _eva_options(enc: dict[str, torch.Tensor], notes: list[str]) -> tuple[dict[str, Any], float]:
    """EVA options (timm ``Eva`` names) read off timm-named EVA weights, and the MLP hidden width."""
    from lastvit.models.eva import EVA_DEFAULTS

    separate = "blocks.0.mlp.fc1_g.weight" in enc
    fc1 = enc["blocks.0.mlp.fc1_g.weight" if separate else "blocks.0.mlp.fc1.weight"]
    fc2 = enc.get("blocks.0.mlp.fc2.weight")
    packed = not separate and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]  # GluMlp: gate + value rows
    swiglu = separate or packed
    opts = dict(EVA_DEFAULTS)
    opts.update(swiglu_mlp=swiglu, scale_mlp="blocks.0.mlp.norm.weight" in enc,
                scale_attn_inner="blocks.0.attn.norm.weight" in enc, use_rot_pos_emb=swiglu)
    if swiglu:
        notes.append("rotary position embedding: not stored in the weights (fixed tables); EVA-02 blocks (SwiGLU) "
                     "use it -- assumed EVA-02 CLIP's (reference grid 16x16, temperature 10000, as timm's "
                     "eva02_*_clip and BAAI's pt_hw_seq_len=16); arch='EVA02-B-16' (or a config) reads it from a "
                     "model config")
    else:
        opts["ref_feat_shape"] = None
        notes.append("EVA blocks without SwiGLU (EVA-01 style): no rotary position embedding assumed")
    return opts, float(fc1.shape[0]) / (2.0 if packed else 1.0)
