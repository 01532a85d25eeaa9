"""``LastViT``: a timm VisionTransformer encoder + a swappable readout + a head.

The encoder keeps its class token (and registers, if any) in the sequence under every readout, as the released
LaSt-ViT does; only the readout decides what the global representation is. ``forward_tokens`` is the one place
that knows how many prefix tokens there are.

The token path is public and walked in ONE place (the shape of timm's ``forward_intermediates`` and dinov2's
``get_intermediate_layers``): :meth:`LastViT.embed` (patch embedding, position embedding resampled the source
family's way, prefix tokens, ``norm_pre``), :meth:`LastViT.attn_mask` (window attention),
:meth:`LastViT.forward_blocks` (the blocks, with window masks, token dropping and intermediate taps) and
:meth:`LastViT.forward_intermediates`. Code outside this module never calls timm's private ``_pos_embed`` or
re-walks the blocks.

Position-embedding resampling at a grid other than the native one (arch key ``pos_interp``):

* ``"timm"`` (default): timm's ``resample_abs_pos_embed`` -- bicubic, ``antialias=True``, to ``size=(h, w)``;
* ``"dino"``: DINO's ``interpolate_pos_encoding`` (facebookresearch/dino ``vision_transformer.py``) -- bicubic,
  ``align_corners=False``, no antialiasing, ``scale_factor=((h + 0.1) / h0, (w + 0.1) / w0)`` for a native grid
  ``h0 x w0`` (``sqrt(N)`` each in DINO), untouched when the grid is square with the native count. SCLIP, ClearCLIP
  and NACLIP resample their CLIP towers with the same formula;
* ``"open_clip"``: bicubic, ``align_corners=False``, no antialiasing, to ``size=(h, w)`` (a plain resize of the grid).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from lastvit.aggregate import build_aggregator

__all__ = ["LastViT", "TokenRecord", "ARCH_DEFAULTS", "FAMILIES", "PRESETS", "POS_INTERP", "as_vit", "build_encoder"]

# How position embeddings are resampled to a non-native grid (arch key ``pos_interp``; see the module docstring).
POS_INTERP = ("timm", "dino", "open_clip")

# Architecture keys a LastViT records (and checkpoints infer); everything else uses timm's defaults.
ARCH_DEFAULTS: dict[str, Any] = {
    "img_size": 224,
    "patch_size": 16,
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "class_token": True,
    "reg_tokens": 0,
    "no_embed_class": False,
    "pre_norm": False,
    "act": "gelu",  # or "quick_gelu" (OpenAI-initialised CLIP towers)
    "norm_eps": 1e-6,  # LayerNorm eps: 1e-6 timm/torchvision/DINO, 1e-5 open_clip / OpenAI CLIP
    "init_values": None,  # LayerScale init (DINOv2-style blocks carry ls1/ls2 gammas)
    "window_size": 0,  # >0: window attention of this size in `window_layers` (paper Table 2 study)
    "window_layers": None,  # list of block indices, or None for all blocks (when window_size > 0)
    "pos_interp": "timm",  # position-embedding resampling: "timm" | "dino" | "open_clip" (module docstring)
    "family": "vit",  # encoder: "vit" (timm VisionTransformer) | "eva" (timm Eva: rotary pos-embed, SwiGLU, sub-LN)
    "eva": None,  # family "eva": EVA options (timm Eva keyword names), see lastvit.models.eva.EVA_DEFAULTS
    "proj_bias": False,  # head="proj" with a bias (EVA-CLIP's projection is timm's Linear head)
}
FAMILIES = ("vit", "eva")

# Small named architectures for CPU work; any timm ViT name works as well.
PRESETS: dict[str, dict[str, Any]] = {
    "vit_micro_patch8_64": dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3),
    "vit_mini_patch8_64": dict(img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3),
    "vit_tiny_patch16_224": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_base_patch28_224": dict(patch_size=28, embed_dim=768, depth=12, num_heads=12),
    "vit_base_patch32_224": dict(patch_size=32, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch14_224": dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16),
    "vit_large_patch16_224": dict(embed_dim=1024, depth=24, num_heads=16),
}


@dataclass
class TokenRecord:
    """What a ViT computed for a batch: final-normed tokens split once, and the pooled representation."""

    prefix: torch.Tensor  # (B, P, D): class token (if any) then registers
    patches: torch.Tensor  # (B, N, D), N = h * w, row-major
    pooled: torch.Tensor  # (B, D): the readout's global representation (before the head)
    grid: tuple[int, int]  # (h, w)


def _window_attention_mask(h: int, w: int, window: int, num_prefix: int, device) -> torch.Tensor:
    """Boolean mask (L, L): patches attend within their (window x window) cell; prefix tokens attend all."""
    rows = torch.arange(h, device=device).repeat_interleave(w) // window
    cols = torch.arange(w, device=device).repeat(h) // window
    cell = rows * ((w + window - 1) // window) + cols
    same = cell[:, None] == cell[None, :]
    n = h * w
    mask = torch.ones(num_prefix + n, num_prefix + n, dtype=torch.bool, device=device)
    mask[num_prefix:, num_prefix:] = same
    return mask


def build_encoder(arch: dict[str, Any], timm_name: str | None = None, **timm_kwargs: Any) -> VisionTransformer:
    """A timm ``VisionTransformer`` (or, for ``family="eva"``, timm's ``Eva``: :mod:`lastvit.models.eva`) without
    head or pooling, with dynamic image size."""
    a = {k: arch[k] for k in ARCH_DEFAULTS if k in arch}
    if a.get("family", "vit") == "eva":
        from lastvit.models.eva import build_eva_encoder

        return build_eva_encoder(a, **timm_kwargs)
    kw = dict(
        num_classes=0,
        global_pool="",
        dynamic_img_size=True,
        img_size=a.get("img_size", 224),
        patch_size=a.get("patch_size", 16),
        embed_dim=a.get("embed_dim", 768),
        depth=a.get("depth", 12),
        num_heads=a.get("num_heads", 12),
        mlp_ratio=a.get("mlp_ratio", 4.0),
        qkv_bias=a.get("qkv_bias", True),
        class_token=a.get("class_token", True),
        reg_tokens=a.get("reg_tokens", 0),
        no_embed_class=a.get("no_embed_class", False),
        pre_norm=a.get("pre_norm", False),
        act_layer=a.get("act", "gelu"),
        norm_layer=partial(nn.LayerNorm, eps=a.get("norm_eps", 1e-6)),
        init_values=a.get("init_values"),
    )
    kw.update(timm_kwargs)
    return VisionTransformer(**kw)


class LastViT(nn.Module):
    """A ViT whose global representation comes from a swappable readout.

    ``model(images)`` returns logits (or embeddings when the head is a projection, or the pooled token when
    there is no head). ``model.forward_tokens(images)`` returns a :class:`TokenRecord`.
    """

    def __init__(
        self,
        arch: dict[str, Any] | None = None,
        *,
        aggregator: str = "lazystrike",
        aggregator_kwargs: dict[str, Any] | None = None,
        num_classes: int = 1000,
        head: str = "linear",
        head_dim: int | None = None,
        drop_path_rate: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        arch = {**ARCH_DEFAULTS, **(arch or {})}
        unknown = set(arch) - set(ARCH_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown architecture keys {sorted(unknown)}; known: {sorted(ARCH_DEFAULTS)}")
        if arch["pos_interp"] not in POS_INTERP:
            raise ValueError(f"pos_interp must be one of {POS_INTERP}, got {arch['pos_interp']!r}")
        if arch["family"] not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {arch['family']!r}")
        if head not in ("linear", "proj", "none"):
            raise ValueError(f"head must be 'linear', 'proj' or 'none', got {head!r}")
        self.arch = arch
        self.name = name
        self.aggregator_name = aggregator
        self.aggregator_kwargs = dict(aggregator_kwargs or {})
        self.head_type = head
        self.num_classes = num_classes if head == "linear" else 0
        self.drop_path_rate = drop_path_rate
        self.encoder = build_encoder(arch, drop_path_rate=drop_path_rate)
        self.embed_dim = arch["embed_dim"]
        self.aggregator = build_aggregator(aggregator, self.embed_dim, **self.aggregator_kwargs)
        if head == "linear" and num_classes > 0:
            self.head = nn.Linear(self.embed_dim, num_classes)
        elif head == "proj":
            out = head_dim if head_dim is not None else self.embed_dim
            self.head = nn.Linear(self.embed_dim, out, bias=bool(arch["proj_bias"]))
        else:
            self.head = nn.Identity()
        self.head_dim = self.head.out_features if isinstance(self.head, nn.Linear) else self.embed_dim
        self._window_cache: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ configuration
    @property
    def num_prefix_tokens(self) -> int:
        return self.encoder.num_prefix_tokens

    @property
    def patch_size(self) -> int:
        return int(self.arch["patch_size"])

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (stored in lastvit checkpoints)."""
        return {
            "arch": copy.deepcopy(self.arch),
            "aggregator": self.aggregator_name,
            "aggregator_kwargs": copy.deepcopy(self.aggregator_kwargs),
            "num_classes": self.num_classes,
            "head": self.head_type,
            "head_dim": self.head_dim if self.head_type == "proj" else None,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> LastViT:
        return cls(
            cfg["arch"],
            aggregator=cfg.get("aggregator", "lazystrike"),
            aggregator_kwargs=cfg.get("aggregator_kwargs") or {},
            num_classes=cfg.get("num_classes", 0),
            head=cfg.get("head", "linear"),
            head_dim=cfg.get("head_dim"),
            name=cfg.get("name"),
        )

    def set_aggregator(self, name: str, **kwargs: Any) -> LastViT:
        """Swap the readout in place (e.g. to read a CLS-trained encoder through LazyStrike)."""
        self.aggregator = build_aggregator(name, self.embed_dim, **kwargs)
        self.aggregator_name, self.aggregator_kwargs = name, dict(kwargs)
        return self

    # ------------------------------------------------------------------ forward
    def grid_size(self, images: torch.Tensor) -> tuple[int, int]:
        h, w = images.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
        return h // p, w // p

    @property
    def depth(self) -> int:
        return len(self.encoder.blocks)

    @property
    def windowed_blocks(self) -> frozenset[int]:
        """Indices of the blocks that use window attention (empty when ``window_size`` is 0)."""
        if int(self.arch.get("window_size") or 0) <= 0:
            return frozenset()
        layers = self.arch.get("window_layers")
        return frozenset(range(self.depth) if layers is None else (int(i) % self.depth for i in layers))

    def _block_index(self, i: int) -> int:
        n = self.depth
        if not -n <= int(i) < n:
            raise ValueError(f"block index {i} is out of range for a {n}-block model (valid: {-n}..{n - 1})")
        return int(i) % n

    # ------------------------------------------------------------------ token path (the one place)
    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """The encoder's position embedding resampled to ``grid`` the ``arch["pos_interp"]`` way.

        Shape (1, E + h * w, D) with E = 0 when the prefix tokens carry no position (``no_embed_class``), else the
        number of prefix tokens; ``None`` when the encoder has no position embedding.
        """
        enc = self.encoder
        pe = enc.pos_embed
        if pe is None:
            return None
        ep = 0 if enc.no_embed_class else enc.num_prefix_tokens
        old = tuple(int(g) for g in enc.patch_embed.grid_size)
        h, w = int(grid[0]), int(grid[1])
        mode = self.arch.get("pos_interp", "timm")
        if mode == "timm":
            return resample_abs_pos_embed(pe, new_size=[h, w], old_size=list(old), num_prefix_tokens=ep)
        if mode == "dino":
            if h * w == old[0] * old[1] and h == w:  # DINO's early-out: same count, square input
                return pe
            kw: dict[str, Any] = dict(scale_factor=((h + 0.1) / old[0], (w + 0.1) / old[1]))
        elif mode == "open_clip":
            if (h, w) == old:
                return pe
            kw = dict(size=(h, w))
        else:  # validated in __init__; a hand-edited arch dict lands here
            raise ValueError(f"pos_interp must be one of {POS_INTERP}, got {mode!r}")
        prefix, patch = pe[:, :ep], pe[:, ep:]
        d = patch.shape[-1]
        grid_pe = patch.float().reshape(1, old[0], old[1], d).permute(0, 3, 1, 2)
        grid_pe = F.interpolate(grid_pe, mode="bicubic", align_corners=False, **kw)
        if tuple(grid_pe.shape[-2:]) != (h, w):  # DINO asserts the same
            raise RuntimeError(f"{mode} resampling gave a {tuple(grid_pe.shape[-2:])} grid, expected {(h, w)}")
        patch = grid_pe.permute(0, 2, 3, 1).reshape(1, h * w, d).to(pe.dtype)
        return torch.cat([prefix, patch], dim=1)

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens entering the first block (B, P + N, D) and the grid (h, w).

        Patch embedding, position embedding (resampled per ``arch["pos_interp"]``), class token and registers
        prepended, patch dropout (identity in eval) and ``norm_pre`` -- the same path as timm's
        ``forward_features`` before its blocks.
        """
        enc = self.encoder
        grid = self.grid_size(images)
        x = enc.patch_embed(images)  # (B, h, w, D): dynamic_img_size gives NHWC
        if self.arch.get("pos_interp", "timm") == "timm":
            x = enc._pos_embed(x)  # timm's own path, bit for bit
        else:
            b, d = x.shape[0], x.shape[-1]
            x = x.reshape(b, -1, d)
            prefix = []
            if enc.cls_token is not None:
                prefix.append(enc.cls_token.expand(b, -1, -1))
            if enc.reg_token is not None:
                prefix.append(enc.reg_token.expand(b, -1, -1))
            pe = self.position_embedding(grid)
            if pe is not None and enc.no_embed_class:
                x = x + pe
            if prefix:
                x = torch.cat([*prefix, x], dim=1)
            if pe is not None and not enc.no_embed_class:
                x = x + pe
            x = enc.pos_drop(x)
        return enc.norm_pre(enc.patch_drop(x)), grid

    def attn_mask(
        self, grid: tuple[int, int], *, keep: torch.Tensor | None = None, device=None
    ) -> torch.Tensor | None:
        """Window-attention mask (True = may attend), or ``None`` when the model attends globally.

        (L, L) for the full sequence, or (B, 1, P + n, P + n) for the kept patches ``keep`` (B, n) (row-major
        indices): a patch attends to the kept patches of its own (window x window) cell, prefix tokens attend to
        everything. It applies to the blocks in ``arch["window_layers"]`` (all blocks when None).
        """
        ws = int(self.arch.get("window_size") or 0)
        if ws <= 0:
            return None
        if keep is not None:
            h, w = grid
            idx = torch.arange(h * w, device=keep.device)
            cell = (idx // w) // ws * ((w + ws - 1) // ws) + (idx % w) // ws
            kc = cell[keep]  # (B, n)
            b, n = keep.shape
            p = self.num_prefix_tokens
            mask = torch.ones(b, 1, p + n, p + n, dtype=torch.bool, device=keep.device)
            mask[:, 0, p:, p:] = kc[:, :, None] == kc[:, None, :]
            return mask
        device = torch.device("cpu") if device is None else torch.device(device)
        key = (tuple(grid), ws, str(device))
        m = self._window_cache.get(key)
        if m is None:
            m = _window_attention_mask(*grid, ws, self.num_prefix_tokens, device)
            self._window_cache[key] = m
        return m

    def forward_blocks(
        self,
        tokens: torch.Tensor,
        grid: tuple[int, int],
        *,
        upto: int | None = None,
        keep: torch.Tensor | None = None,
        indices: Sequence[int] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the blocks on ``tokens`` (B, P + N, D) from :meth:`embed`: the one block loop of lastvit.

        Args:
            grid: the patch grid (h, w) of ``tokens``.
            upto: run only blocks ``0 .. upto - 1`` (e.g. ``depth - 1``: the input of the last block).
            keep: (B, n) row-major patch indices; only the prefix tokens and these patches enter the blocks
                (token dropping; window attention is restricted to kept patches of the same window).
            indices: block indices (negative allowed) whose outputs are also returned.

        Returns:
            the token sequence after the last block run (no final norm) -- (B, P + n, D) -- and, with ``indices``,
            the list of the chosen blocks' outputs in the order given.
        """
        n_run = self.depth if upto is None else int(upto)
        if not 0 <= n_run <= self.depth:
            raise ValueError(f"upto={upto} is out of range for a {self.depth}-block model")
        x = tokens
        p = self.num_prefix_tokens
        if keep is not None:
            if keep.ndim != 2 or keep.shape[0] != x.shape[0]:
                raise ValueError(f"keep must be (B, n) patch indices, got shape {tuple(keep.shape)}")
            keep = keep.to(x.device)
            patches = torch.gather(x[:, p:], 1, keep[..., None].expand(-1, -1, x.shape[-1]))
            x = torch.cat([x[:, :p], patches], dim=1)
        mask = self.attn_mask(grid, keep=keep, device=x.device)
        take = None if indices is None else [self._block_index(i) for i in indices]
        blocks = self.encoder.blocks
        ckpt = self.encoder.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
        rope_embed = getattr(self.encoder, "rope_embed", None)  # EVA: rotary embedding of the (kept) grid
        rope = rope_embed(grid, keep) if rope_embed is not None else None
        if rope is not None:
            rope = rope.to(x.device)
        if mask is None and take is None and not ckpt and rope is None and isinstance(blocks, nn.Sequential):
            x = blocks[:n_run](x) if n_run < self.depth else blocks(x)
            return x
        windowed = self.windowed_blocks if mask is not None else frozenset()
        outs: dict[int, torch.Tensor] = {}
        for i in range(n_run):
            blk = blocks[i]
            m = mask if i in windowed else None
            if ckpt:
                from torch.utils.checkpoint import checkpoint

                x = (checkpoint(blk, x, m, use_reentrant=False) if rope is None
                     else checkpoint(blk, x, rope, m, use_reentrant=False))
            elif rope is not None:
                x = blk(x, rope=rope, attn_mask=m)
            else:
                x = blk(x, attn_mask=m) if m is not None else blk(x)
            if take is not None and i in take:
                outs[i] = x
        if take is None:
            return x
        missing = [i for i in take if i not in outs]
        if missing:
            raise ValueError(f"indices {missing} lie beyond upto={n_run}")
        return x, [outs[i] for i in take]

    def forward_intermediates(
        self,
        images: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        norm: bool = False,
        output_fmt: str = "NCHW",
        return_prefix_tokens: bool = False,
        stop_early: bool = False,
    ) -> tuple[torch.Tensor | None, list]:
        """Final-normed tokens and intermediate block outputs, in the shape of timm's ``forward_intermediates``.

        Args:
            indices: an int n takes the last n blocks, a sequence takes those blocks (negative allowed), None all.
            norm: apply the final norm to each intermediate.
            output_fmt: ``"NCHW"`` (B, D, h, w) patch maps or ``"NLC"`` (B, N, D).
            return_prefix_tokens: each intermediate becomes ``(patches, prefix)``.
            stop_early: stop after the deepest requested block; the first return value is then ``None``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        if indices is None:
            take = list(range(self.depth))
        elif isinstance(indices, int):
            if not 0 < indices <= self.depth:
                raise ValueError(f"indices={indices}: take 1..{self.depth} last blocks")
            take = list(range(self.depth - indices, self.depth))
        else:
            take = [self._block_index(i) for i in indices]
        tokens, grid = self.embed(images)
        upto = max(take) + 1 if (stop_early and take) else None
        x, inter = self.forward_blocks(tokens, grid, upto=upto, indices=take)
        p = self.num_prefix_tokens
        enc = self.encoder
        out = []
        for y in inter:
            y = enc.norm(y) if norm else y
            pre, pat = y[:, :p], y[:, p:]
            if output_fmt == "NCHW":
                pat = pat.reshape(pat.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous()
            out.append((pat, pre) if return_prefix_tokens else pat)
        final = None if upto is not None and upto < self.depth else enc.norm(x)
        return final, out

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Final-normed token sequence (B, P + N, D)."""
        tokens, grid = self.embed(images)
        return self.encoder.norm(self.forward_blocks(tokens, grid))

    def split(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prefix, patches) from a token sequence."""
        p = self.num_prefix_tokens
        return tokens[:, :p], tokens[:, p:]

    def pool(self, patches: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        return self.aggregator(patches, prefix)

    def forward_tokens(self, images: torch.Tensor) -> TokenRecord:
        """Prefix tokens, patch tokens, pooled token and grid for a batch of images."""
        grid = self.grid_size(images)
        prefix, patches = self.split(self.encode(images))
        pooled = self.pool(patches, prefix)
        return TokenRecord(prefix=prefix, patches=patches, pooled=pooled, grid=grid)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_tokens(images).pooled)

    def cls_output(self, rec: TokenRecord) -> torch.Tensor | None:
        """The class-token output of a record, or None when the encoder has no class token."""
        return rec.prefix[:, 0] if self.encoder.has_class_token else None


def as_vit(model: nn.Module) -> LastViT:
    """The ``LastViT`` of ``model``: the image tower (``.visual``) of a CLIP, the model itself otherwise."""
    if isinstance(model, LastViT):
        return model
    visual = getattr(model, "visual", None)
    if isinstance(visual, LastViT):
        return visual
    raise TypeError(f"expected a LastViT or a CLIP with a LastViT image tower, got {type(model).__name__}")
