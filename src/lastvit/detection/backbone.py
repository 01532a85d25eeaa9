"""F-ViT's backbone: a FROZEN ``LastViT`` CLIP image tower tapped after four blocks, plus a trainable simple
feature pyramid (CLIPSelf ``F-ViT/models/evaclip_vit.py``; the OpenAI-CLIP port of CLIM is the same with
``ln_post`` + ``proj``).

* taps: the outputs of blocks ``taps`` (B/16: 3, 5, 7, 11; L/14: 6, 10, 14, 23), prefix tokens dropped, reshaped to
  (D, h, w) maps. Not final-normed (as F-ViT).
* last block ``"fvit"``: attention replaced by the value path, residual and FFN kept:
  ``x + ls1(proj(v(norm1(x))))`` then ``+ ls2(mlp(norm2(.)))`` (:func:`lastvit.evaluate.dense.fvit_taps`);
  ``"vanilla"`` runs the block as trained.
* dense CLIP map (eval only, for the ensemble): ``normalize(head(norm(last_block_output[:, P:])))``.
* simple pyramid on the four taps: ConvT2x2-Norm-GELU-ConvT2x2 (x4), ConvT2x2 (x2), identity (x1), MaxPool2 (x1/2).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lastvit.evaluate.dense import fvit_taps
from lastvit.models.vit import LastViT, as_vit

__all__ = ["LAST_BLOCKS", "DEFAULT_TAPS", "FViTBackbone", "default_taps", "frozen_taps"]

LAST_BLOCKS = ("fvit", "vanilla")
#: F-ViT's tapped blocks per depth (12: ViT-B, 24: ViT-L).
DEFAULT_TAPS = {12: (3, 5, 7, 11), 24: (6, 10, 14, 23)}


def default_taps(depth: int) -> tuple[int, ...]:
    """F-ViT's taps for 12 / 24 blocks; otherwise four evenly spaced blocks ending with the last one."""
    if depth in DEFAULT_TAPS:
        return DEFAULT_TAPS[depth]
    if depth < 4:
        raise ValueError(f"F-ViT needs at least 4 blocks to tap, the model has {depth}")
    return tuple(round(depth * (i + 1) / 4) - 1 for i in range(4))


@torch.no_grad()
def frozen_taps(vit: LastViT, images: torch.Tensor, taps: Sequence[int], last_block: str = "fvit",
                dense: bool = False) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The four tapped maps (B, D, h, w) of a LastViT and, with ``dense``, the normalised dense CLIP map (B, E, h, w).

    Every tap must be an earlier block or the last block; the last block is run ``last_block``'s way.
    """
    if last_block not in LAST_BLOCKS:
        raise ValueError(f"unknown last_block {last_block!r}; choose from {LAST_BLOCKS}")
    if last_block == "fvit":  # helper D's public F-ViT pass (lastvit.evaluate.dense)
        maps, dmap = fvit_taps(vit, images, taps)
        return maps, (F.normalize(dmap, dim=1) if dense else None)
    depth = vit.depth
    taps = [int(t) % depth for t in taps]
    tokens, grid = vit.embed(images)
    early = sorted({t for t in taps if t < depth - 1})
    x, outs = vit.forward_blocks(tokens, grid, upto=depth - 1, indices=early)
    last = vit.encoder.blocks[-1](x)  # vanilla: the block as trained
    by_index = dict(zip(early, outs))
    by_index[depth - 1] = last
    p = vit.num_prefix_tokens
    b = images.shape[0]

    def to_map(t: torch.Tensor) -> torch.Tensor:
        return t[:, p:].reshape(b, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()

    maps = [to_map(by_index[t]) for t in taps]
    dmap = None
    if dense:
        y = vit.encoder.norm(last)[:, p:]
        if vit.head_type == "proj":
            y = vit.head(y)
        dmap = F.normalize(y, dim=-1).reshape(b, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
    return maps, dmap


def _norm2d(kind: str, c: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(c)
    if kind == "gn":
        return nn.GroupNorm(min(32, c), c)
    raise ValueError(f"norm must be 'bn' or 'gn', got {kind!r}")


class FViTBackbone(nn.Module):
    """Frozen CLIP image tower + trainable simple feature pyramid. ``forward(images)`` returns
    ``(OrderedDict('0'..'3' -> maps at x4, x2, x1, x1/2 of the patch stride), dense map or None)``; the dense map is
    computed in eval mode (or with ``dense=True``). ``strides`` are floats (3.5 / 7 / 14 / 28 for patch 14)."""

    def __init__(self, clip_or_vit: nn.Module, taps: Sequence[int] | None = None, last_block: str = "fvit",
                 norm: str = "bn") -> None:
        super().__init__()
        vit = as_vit(clip_or_vit)
        if last_block not in LAST_BLOCKS:
            raise ValueError(f"unknown last_block {last_block!r}; choose from {LAST_BLOCKS}")
        self.vit = vit
        for prm in self.vit.parameters():
            prm.requires_grad_(False)
        self.vit.eval()
        self.taps = tuple(int(t) % vit.depth for t in (taps if taps is not None else default_taps(vit.depth)))
        if len(self.taps) != 4:
            raise ValueError(f"F-ViT taps four blocks, got {list(self.taps)}")
        self.last_block = last_block
        d = vit.embed_dim
        self.out_channels = d
        p = float(vit.patch_size)
        self.strides = (p / 4, p / 2, p, p * 2)
        self.fpn1 = nn.Sequential(nn.ConvTranspose2d(d, d, 2, 2), _norm2d(norm, d), nn.GELU(),
                                  nn.ConvTranspose2d(d, d, 2, 2))
        self.fpn2 = nn.ConvTranspose2d(d, d, 2, 2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2, 2)

    def train(self, mode: bool = True) -> FViTBackbone:
        """The frozen tower stays in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.vit.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("vit.")]

    def forward(self, images: torch.Tensor, dense: bool | None = None
                ) -> tuple[OrderedDict[str, torch.Tensor], torch.Tensor | None]:
        want_dense = (not self.training) if dense is None else bool(dense)
        maps, dmap = frozen_taps(self.vit, images, self.taps, self.last_block, dense=want_dense)
        feats = OrderedDict()
        for i, (m, f) in enumerate(zip(maps, (self.fpn1, self.fpn2, self.fpn3, self.fpn4))):
            feats[str(i)] = f(m)
        return feats, dmap
