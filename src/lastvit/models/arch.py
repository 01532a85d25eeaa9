"""Architecture keys of a model name: lastvit presets and any timm ViT (read off a meta-device model)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lastvit.models.vit import ARCH_DEFAULTS, PRESETS

__all__ = ["arch_from_timm", "resolve_arch"]


def arch_from_timm(name: str, **timm_kwargs: Any) -> dict[str, Any]:
    """Architecture keys of any timm ViT (or EVA: family "eva") name, read off a model built on the meta device
    (nothing downloaded)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    try:
        with torch.device("meta"):
            m = timm.create_model(name, pretrained=False, num_classes=0, **timm_kwargs)
    except RuntimeError as e:  # timm raises RuntimeError for unknown names
        raise ValueError(f"unknown model name {name!r}: not a lastvit preset ({sorted(PRESETS)}) "
                         f"nor a timm model ({e})") from None
    from timm.models.eva import Eva

    if isinstance(m, Eva):
        return _arch_from_eva(m)
    if not isinstance(m, VisionTransformer):
        raise ValueError(f"timm model {name!r} is a {type(m).__name__}, not a plain VisionTransformer nor an Eva")
    blk = m.blocks[0]
    act = type(blk.mlp.act).__name__.lower()
    norm_eps = getattr(m.norm, "eps", None) or getattr(blk.norm1, "eps", 1e-6)
    ls = getattr(blk, "ls1", None)
    init_values = None if ls is None or isinstance(ls, nn.Identity) else 1e-5
    arch = dict(
        img_size=m.patch_embed.img_size[0],
        patch_size=m.patch_embed.patch_size[0],
        embed_dim=m.embed_dim,
        depth=len(m.blocks),
        num_heads=blk.attn.num_heads,
        mlp_ratio=blk.mlp.fc1.out_features / m.embed_dim,
        qkv_bias=blk.attn.qkv.bias is not None,
        class_token=m.has_class_token,
        reg_tokens=m.num_reg_tokens,
        no_embed_class=m.no_embed_class,
        pre_norm=not isinstance(m.norm_pre, nn.Identity),
        act="quick_gelu" if "quick" in act else "gelu",
        norm_eps=float(norm_eps),
        init_values=init_values,
    )
    return arch


def _arch_from_eva(m: nn.Module) -> dict[str, Any]:
    """Architecture keys (family "eva") of a timm ``Eva`` built on the meta device."""
    blk = m.blocks[0]
    if getattr(blk.attn, "qkv", None) is None and getattr(blk.attn, "q_proj", None) is None:
        raise ValueError(f"timm Eva variant with a {type(blk.attn).__name__} attention is not supported")
    mlp = blk.mlp
    swiglu = hasattr(mlp, "fc1_g") or type(mlp).__name__ == "GluMlp"
    hidden = mlp.fc1_g.out_features if hasattr(mlp, "fc1_g") else mlp.fc1.out_features
    if type(mlp).__name__ == "GluMlp":
        hidden //= 2
    rope = m.rope
    ref = getattr(rope, "ref_feat_shape", None)
    q_bias = blk.attn.q_proj.bias if getattr(blk.attn, "q_proj", None) is not None else blk.attn.q_bias
    return dict(
        img_size=m.patch_embed.img_size[0],
        patch_size=m.patch_embed.patch_size[0],
        embed_dim=m.embed_dim,
        depth=len(m.blocks),
        num_heads=blk.attn.num_heads,
        mlp_ratio=hidden / m.embed_dim,
        qkv_bias=q_bias is not None,
        class_token=m.cls_token is not None,
        reg_tokens=0 if m.reg_token is None else int(m.reg_token.shape[1]),
        no_embed_class=m.no_embed_class,
        pre_norm=not isinstance(m.norm_pre, nn.Identity),
        act="swiglu" if swiglu else "gelu",
        norm_eps=float(getattr(blk.norm1, "eps", 1e-6)),
        init_values=None if blk.gamma_1 is None else 1e-5,
        family="eva",
        eva={"swiglu_mlp": swiglu, "scale_mlp": not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity),
             "scale_attn_inner": not isinstance(blk.attn.norm, nn.Identity), "use_rot_pos_emb": rope is not None,
             "ref_feat_shape": [int(r) for r in ref] if ref is not None else None,
             "rope_temperature": float(getattr(rope, "temperature", 10000.0)),
             "rope_grid_offset": float(getattr(rope, "grid_offset", 0.0))},
    )


def resolve_arch(name: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Architecture keys for a preset / timm name plus keyword overrides."""
    base: dict[str, Any] = {}
    if name is not None:
        base = dict(PRESETS[name]) if name in PRESETS else arch_from_timm(name)
    unknown = set(overrides) - set(ARCH_DEFAULTS)
    if unknown:
        raise TypeError(f"create_model got unknown keyword(s) {sorted(unknown)}; architecture keys are "
                        f"{sorted(ARCH_DEFAULTS)}")
    return {**ARCH_DEFAULTS, **base, **overrides}
