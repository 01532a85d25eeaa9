"""The EVA encoder family of :class:`~lastvit.models.vit.LastViT` (arch key ``family="eva"``): timm's ``Eva``.

EVA-02 CLIP towers (open_clip ``EVA02-B-16`` / ``EVA02-L-14`` / ``EVA02-L-14-336``, BAAI's EVA-CLIP) differ from a
plain ViT in three places, all of them timm's ``timm.models.eva`` code:

* rotary position embedding (``use_rot_pos_emb``) on the patch tokens of q and k in every block, on top of the
  absolute ``pos_embed``; its coordinates are scaled to a reference grid (``ref_feat_shape``, 16 x 16 for EVA-02
  CLIP: ``t = arange(h) / h * 16``), so at another input size the rotary embedding is recomputed for the new grid
  the way EVA-CLIP's ``VisionRotaryEmbeddingFast(pt_seq_len=16, ft_seq_len=grid)`` and timm's ``Eva`` with
  ``dynamic_img_size`` / ``set_input_size`` do;
* SwiGLU MLP (``swiglu_mlp``: ``fc2(norm(silu(fc1_g(y)) * fc1_x(y)))``);
* sub-LN (``scale_attn_inner``: a LayerNorm on the attention output before ``proj``; ``scale_mlp``: the ``norm``
  inside the MLP), separate ``q_proj`` / ``k_proj`` / ``v_proj`` with q and v biases only.

The EVA-only options live in ``arch["eva"]`` under timm's ``Eva`` keyword names (:data:`EVA_DEFAULTS` are EVA-02
CLIP's). :class:`EvaEncoder` is timm's ``Eva`` with the attributes LastViT's token path reads off a timm
``VisionTransformer`` (``has_class_token``, ``num_reg_tokens``, ``patch_drop``, ``_pos_embed`` returning tokens
only); its blocks keep timm's forward and additionally answer ``attn.qkv(y)`` (q, k, v concatenated, biases
included), ``ls1`` / ``ls2`` (the block's ``gamma_1`` / ``gamma_2``) and ``attn.rotate_qk(q, k, grid)``, so the
dense variants, the attention diagnostics and the discovery keys that recompute a block from ``norm1`` / ``qkv`` /
``proj`` work on it unchanged. LastViT passes the rotary embedding of the grid to every block
(:meth:`EvaEncoder.rope_embed`); a block called without one uses the grid of the encoder's last patch embedding.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.layers import LayerNorm, apply_rot_embed_cat, resample_abs_pos_embed
from timm.models.eva import Eva, EvaAttention, EvaBlock
from torch import nn

__all__ = ["EVA_DEFAULTS", "EvaEncoder", "build_eva_encoder", "eva_options"]

#: EVA-only architecture options (timm ``Eva`` keyword names), EVA-02 CLIP's values (timm
#: ``eva02_base_patch16_clip_224`` / ``eva02_large_patch14_clip_224`` / ``_336``; BAAI EVA-CLIP ``pt_hw_seq_len=16``).
EVA_DEFAULTS: dict[str, Any] = {
    "swiglu_mlp": True,
    "scale_mlp": True,
    "scale_attn_inner": True,
    "use_rot_pos_emb": True,
    "ref_feat_shape": [16, 16],
    "rope_temperature": 10000.0,
    "rope_grid_offset": 0.0,
}


def eva_options(arch: dict[str, Any]) -> dict[str, Any]:
    """``arch["eva"]`` completed with :data:`EVA_DEFAULTS`; unknown keys raise one line."""
    opts = {**EVA_DEFAULTS, **(arch.get("eva") or {})}
    unknown = set(opts) - set(EVA_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown EVA option(s) {sorted(unknown)} in arch['eva']; known: {sorted(EVA_DEFAULTS)}")
    return opts


class _GammaScale(nn.Module):
    """``ls1`` / ``ls2`` of an EVA block: multiplies by the block's ``gamma_1`` / ``gamma_2`` (identity when None).
    Holds no parameter of its own (the gamma stays where timm keeps it)."""

    def __init__(self, block: nn.Module, name: str) -> None:
        super().__init__()
        object.__setattr__(self, "_block", block)  # not a submodule: no cycle in modules() / state_dict()
        self._name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = getattr(self._block, self._name)
        return x if g is None else x * g


class _FusedQKV(nn.Module):
    """``attn.qkv(y)`` of an EVA attention with separate projections: ``cat(q_proj(y), k_proj(y), v_proj(y))``."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_attn", attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._attn
        return torch.cat([a.q_proj(x), a.k_proj(x), a.v_proj(x)], dim=-1)


class EvaEncoderAttention(EvaAttention):
    """timm's ``EvaAttention`` (same forward) that also answers ``qkv(y)`` and ``rotate_qk(q, k, grid)``."""

    def rotate_qk(self, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k (B, H, P + N, hd) with the encoder's rotary embedding of ``grid`` applied to the patch tokens."""
        rope = self._encoder().rope_embed(grid)
        if rope is None:
            return q, k
        p = self.num_prefix_tokens
        half = getattr(self, "rotate_half", False)
        q = torch.cat([q[:, :, :p], apply_rot_embed_cat(q[:, :, p:], rope, half=half)], dim=2).type_as(q)
        k = torch.cat([k[:, :, :p], apply_rot_embed_cat(k[:, :, p:], rope, half=half)], dim=2).type_as(k)
        return q, k


class EvaEncoderBlock(EvaBlock):
    """timm's ``EvaBlock``; without ``rope`` it takes the rotary embedding of the encoder's last grid."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if rope is None:
            rope = self._encoder().rope_for_tokens(x.shape[1])
        return super().forward(x, rope=rope, attn_mask=attn_mask, is_causal=is_causal)


class EvaEncoder(Eva):
    """timm's ``Eva`` without head or pooling, dynamic image size, read by LastViT like a timm ViT encoder."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(num_classes=0, global_pool="", dynamic_img_size=True)
        super().__init__(**kwargs)
        if self.patch_drop is None:
            self.patch_drop = nn.Identity()
        self.has_class_token = self.cls_token is not None
        self.num_reg_tokens = 0 if self.reg_token is None else int(self.reg_token.shape[1])
        self._grid: tuple[int, int] | None = None
        owner = _Ref(self)
        for blk in self.blocks:
            blk.__class__ = EvaEncoderBlock  # a subclass adding no state: timm's forward, LastViT's views
            blk.attn.__class__ = EvaEncoderAttention
            object.__setattr__(blk, "_encoder", owner)
            object.__setattr__(blk.attn, "_encoder", owner)
            blk.ls1 = _GammaScale(blk, "gamma_1")
            blk.ls2 = _GammaScale(blk, "gamma_2")
            if blk.attn.qkv is None:
                object.__setattr__(blk.attn, "qkv", _FusedQKV(blk.attn))
        object.__setattr__(self.patch_embed, "_owner", owner)
        self.patch_embed.register_forward_hook(_remember_grid)

    def rope_embed(self, grid: tuple[int, int], keep: torch.Tensor | None = None) -> torch.Tensor | None:
        """The rotary embedding of the patch grid ``grid`` (N, 2 * dim) -- or (B, 1, n, 2 * dim) for the kept
        patches ``keep`` (B, n) -- or None without rotary embedding."""
        if self.rope is None:
            return None
        r = self.rope.get_embed(shape=[int(grid[0]), int(grid[1])])
        if keep is not None:
            r = r[keep.to(r.device)].unsqueeze(1)
        return r

    def rope_for_tokens(self, length: int) -> torch.Tensor | None:
        """The rotary embedding for a sequence of ``length`` tokens on the grid of the last patch embedding."""
        if self.rope is None:
            return None
        g = self._grid
        if g is None or g[0] * g[1] + self.num_prefix_tokens != length:
            raise ValueError(f"an EVA block needs the rotary embedding of its grid: {length} tokens do not fit the "
                             f"encoder's last patch grid {g}; run it through LastViT.forward_blocks or pass rope=")
        return self.rope_embed(g)

    def forward_features(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                         is_causal: bool = False) -> torch.Tensor:
        """timm's ``Eva.forward_features`` on this encoder (final-normed tokens): patch and position embedding,
        then every block with the grid's rotary embedding."""
        x = self.patch_embed(x)
        grid = self._grid
        x = self.norm_pre(self._pos_embed(x))
        rope = self.rope_embed(grid)
        for blk in self.blocks:
            x = blk(x, rope=rope, attn_mask=attn_mask, is_causal=is_causal)
        return self.norm(x)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        return self.forward_features(x, attn_mask=attn_mask, is_causal=is_causal)

    def forward_intermediates(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        raise NotImplementedError("use LastViT.forward_intermediates (the token path walks an EVA encoder's blocks "
                                  "with their rotary embedding)")

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Absolute position embedding (timm's resampling), class token / registers: tokens only (the rotary
        embedding is LastViT's to pass to the blocks)."""
        b, h, w, c = x.shape
        pos = None
        if self.pos_embed is not None:
            pos = resample_abs_pos_embed(self.pos_embed, new_size=(h, w), old_size=self.patch_embed.grid_size,
                                         num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens)
        x = x.reshape(b, -1, c)
        prefix = [t.expand(b, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:
            x = x + pos if pos is not None else x
            x = torch.cat([*prefix, x], dim=1) if prefix else x
        else:
            x = torch.cat([*prefix, x], dim=1) if prefix else x
            x = x + pos if pos is not None else x
        return self.pos_drop(x)


class _Ref:
    """A call-to-get reference to the encoder (blocks point back to it without registering it as a submodule)."""

    def __init__(self, target: nn.Module) -> None:
        self._target = target

    def __call__(self) -> EvaEncoder:
        return self._target


def _remember_grid(module: nn.Module, args: Any, out: torch.Tensor) -> None:
    """Forward hook of the patch embedding (NHWC under dynamic_img_size): the encoder keeps the grid (h, w)."""
    module._owner()._grid = (int(out.shape[1]), int(out.shape[2]))


def build_eva_encoder(arch: dict[str, Any], **timm_kwargs: Any) -> EvaEncoder:
    """An :class:`EvaEncoder` for LastViT architecture keys (``family="eva"``; EVA options in ``arch["eva"]``)."""
    opts = eva_options(arch)
    ref = opts["ref_feat_shape"]
    kw: dict[str, Any] = dict(
        img_size=arch.get("img_size", 224),
        patch_size=arch.get("patch_size", 16),
        embed_dim=arch.get("embed_dim", 768),
        depth=arch.get("depth", 12),
        num_heads=arch.get("num_heads", 12),
        mlp_ratio=arch.get("mlp_ratio", 4.0),
        qkv_bias=arch.get("qkv_bias", True),
        qkv_fused=False,
        class_token=arch.get("class_token", True),
        num_reg_tokens=arch.get("reg_tokens", 0),
        no_embed_class=arch.get("no_embed_class", False),
        use_pre_transformer_norm=arch.get("pre_norm", False),
        norm_layer=partial(LayerNorm, eps=arch.get("norm_eps", 1e-6)),
        init_values=arch.get("init_values"),
        swiglu_mlp=bool(opts["swiglu_mlp"]),
        scale_mlp=bool(opts["scale_mlp"]),
        scale_attn_inner=bool(opts["scale_attn_inner"]),
        use_rot_pos_emb=bool(opts["use_rot_pos_emb"]),
        ref_feat_shape=tuple(int(r) for r in ref) if ref is not None else None,
        rope_temperature=float(opts["rope_temperature"]),
        rope_grid_offset=float(opts["rope_grid_offset"]),
    )
    act = arch.get("act", "gelu")
    if not opts["swiglu_mlp"] and act != "gelu":  # timm's Eva has no act_layer keyword: plain MLPs use GELU
        raise ValueError(f"an EVA encoder with a plain MLP uses GELU; act={act!r} is not supported")
    kw.update(timm_kwargs)
    return EvaEncoder(**kw)
