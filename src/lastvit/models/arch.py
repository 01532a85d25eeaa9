"""Architecture keys of a model name: lastvit presets and any timm ViT (read off a meta-device model)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lastvit.models.vit import ARCH_DEFAULTS, PRESETS

__all__ = ["arch_from_timm", "resolve_arch"]


def arch_from_timm(name: str, **timm_kwargs: Any) -> dict[str, Any]:
    """Architecture keys of any timm ViT name, read off a model built on the meta device (nothing downloaded)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    try:
        with torch.device("meta"):
            m = timm.create_model(name, pretrained=False, num_classes=0, **timm_kwargs)
    except RuntimeError as e:  # timm raises RuntimeError for unknown names
        raise ValueError(f"unknown model name {name!r}: not a lastvit preset ({sorted(PRESETS)}) "
                         f"nor a timm model ({e})") from None
    if not isinstance(m, VisionTransformer):
        raise ValueError(f"timm model {name!r} is a {type(m).__name__}, not a plain VisionTransformer")
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
