"""Text-supervised LaSt-ViT: a CLIP whose image tower is a :class:`~lastvit.models.vit.LastViT`.

* image tower ``model.visual``: a ``LastViT`` with ``head="proj"`` (bias-free projection to the joint space). The
  readout pools the final-normed (``ln_post``) tokens; ``"cls"`` is the standard CLIP image embedding,
  ``"lazystrike"`` the paper's (channel-wise top-K of the final-normed patch tokens), then the projection.
* text tower ``model.text``: open_clip's ``TextTransformer`` (keys as open_clip names them: ``token_embedding``,
  ``positional_embedding``, ``transformer.resblocks.i.*``, ``ln_final``, ``text_projection``), argmax (EOT) pooling.
* ``model.tokenizer``: open_clip's BPE tokenizer (the vocabulary ships in the open_clip wheel).
* ``logit_scale``: learnable temperature, initialised to ``log(1 / 0.07)``.

Elsewhere, one job per file: the contrastive loss in :mod:`lastvit.models.clip_loss`, the tokenizer in
:mod:`lastvit.data.tokenizer`, zero-shot classification and dense similarity in :mod:`lastvit.evaluate.zeroshot`,
reading and writing CLIP files in :mod:`lastvit.checkpoints.clip`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lastvit.data.tokenizer import ClipTokenizer
from lastvit.models.arch import arch_from_timm
from lastvit.models.vit import ARCH_DEFAULTS, PRESETS, LastViT

__all__ = ["CLIP", "TEXT_DEFAULTS", "CLIP_VISION_DEFAULTS"]

# Text-tower configuration keys (open_clip's CLIPTextCfg names) and the OpenAI ViT-B defaults.
TEXT_DEFAULTS: dict[str, Any] = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 512,
    "heads": 8,
    "layers": 12,
    "mlp_ratio": 4.0,
}
# Image-tower defaults that differ from ARCH_DEFAULTS for CLIP towers (open_clip / OpenAI layout: ln_pre, eps 1e-5).
CLIP_VISION_DEFAULTS: dict[str, Any] = {"pre_norm": True, "norm_eps": 1e-5}

# ---------------------------------------------------------------------------------------------- model
def _text_tower(cfg: dict[str, Any], embed_dim: int, quick_gelu: bool) -> nn.Module:
    from open_clip.transformer import LayerNorm, QuickGELU, TextTransformer

    return TextTransformer(
        context_length=cfg["context_length"],
        vocab_size=cfg["vocab_size"],
        width=cfg["width"],
        heads=cfg["heads"],
        layers=cfg["layers"],
        mlp_ratio=cfg.get("mlp_ratio", 4.0),
        output_dim=embed_dim,
        act_layer=QuickGELU if quick_gelu else nn.GELU,
        norm_layer=LayerNorm,
    )


def _vision_arch(vision: str | dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    if isinstance(vision, str):
        base = dict(PRESETS[vision]) if vision in PRESETS else arch_from_timm(vision)
        if base.get("family") == "eva":  # EVA-CLIP's projection is timm's Linear head, with a bias
            base.setdefault("proj_bias", True)
        return {**ARCH_DEFAULTS, **CLIP_VISION_DEFAULTS, **base}, vision
    unknown = set(vision) - set(ARCH_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown vision architecture keys {sorted(unknown)}; known: {sorted(ARCH_DEFAULTS)}")
    return {**ARCH_DEFAULTS, **CLIP_VISION_DEFAULTS, **vision}, None


class CLIP(nn.Module):
    """CLIP with a LaSt-ViT image tower and open_clip's text tower.

    Args:
        vision: architecture keys of the image tower (``lastvit.models.ARCH_DEFAULTS``) or a preset / timm name.
            CLIP towers default to ``pre_norm=True`` (``ln_pre``) and ``norm_eps=1e-5``.
        text: text-tower keys ``context_length, vocab_size, width, heads, layers[, mlp_ratio]``.
        embed_dim: joint embedding size (both projections).
        aggregator / aggregator_kwargs: the image readout (``"lazystrike"``, ``"cls"``, ...).
        quick_gelu: QuickGELU in both towers (OpenAI-initialised CLIPs); overrides ``vision["act"]``.
        init_logit_scale: initial ``logit_scale`` (a log temperature).
    """

    def __init__(
        self,
        vision: str | dict[str, Any] | None = None,
        text: dict[str, Any] | None = None,
        embed_dim: int = 512,
        *,
        aggregator: str = "lazystrike",
        aggregator_kwargs: dict[str, Any] | None = None,
        quick_gelu: bool = False,
        init_logit_scale: float = math.log(1 / 0.07),
        name: str | None = None,
    ) -> None:
        super().__init__()
        arch, vname = _vision_arch(vision if vision is not None else "vit_base_patch16_224")
        arch["act"] = "quick_gelu" if quick_gelu else arch.get("act", "gelu")
        text_cfg = {**TEXT_DEFAULTS, **(text or {})}
        unknown = set(text_cfg) - set(TEXT_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown text-tower keys {sorted(unknown)}; known: {sorted(TEXT_DEFAULTS)}")
        self.embed_dim = int(embed_dim)
        self.quick_gelu = bool(quick_gelu)
        self.text_cfg = text_cfg
        self.name = name or vname
        self.visual = LastViT(
            arch,
            aggregator=aggregator,
            aggregator_kwargs=aggregator_kwargs,
            head="proj",
            head_dim=self.embed_dim,
            name=vname,
        )
        self.text = _text_tower(text_cfg, self.embed_dim, self.quick_gelu)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self._tokenizer: ClipTokenizer | None = None

    # ------------------------------------------------------------------ configuration
    @property
    def context_length(self) -> int:
        return int(self.text_cfg["context_length"])

    @property
    def tokenizer(self) -> ClipTokenizer:
        """BPE tokenizer matched to this text tower (context length, vocabulary size)."""
        if self._tokenizer is None:
            self._tokenizer = ClipTokenizer(self.context_length, self.text_cfg["vocab_size"])
        return self._tokenizer

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids on the model's device."""
        return self.tokenizer(texts).to(self.logit_scale.device)

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (both towers); stored in lastvit checkpoints."""
        v = self.visual.config()
        return {
            "model": "clip",
            "vision": copy.deepcopy(v["arch"]),
            "text": copy.deepcopy(self.text_cfg),
            "embed_dim": self.embed_dim,
            "aggregator": self.visual.aggregator_name,
            "aggregator_kwargs": copy.deepcopy(self.visual.aggregator_kwargs),
            "quick_gelu": self.quick_gelu,
            "name": self.name,
        }

    @classmethod
    def from_config(
        cls,
        cfg: dict[str, Any] | None = None,
        *,
        vision: str | dict[str, Any] | None = None,
        text: dict[str, Any] | None = None,
        embed_dim: int | None = None,
        aggregator: str | None = None,
        aggregator_kwargs: dict[str, Any] | None = None,
        quick_gelu: bool | None = None,
        name: str | None = None,
        model: str = "clip",
    ) -> CLIP:
        """Build from a config dict (as written by :meth:`config`; also accepted as keywords,
        ``CLIP.from_config(**model.config())``) and/or keyword overrides."""
        if model != "clip":
            raise ValueError(f"not a CLIP config (model={model!r})")
        c = dict(cfg or {})
        c.pop("model", None)
        return cls(
            vision if vision is not None else c.get("vision"),
            text if text is not None else c.get("text"),
            embed_dim if embed_dim is not None else c.get("embed_dim", 512),
            aggregator=aggregator or c.get("aggregator", "lazystrike"),
            aggregator_kwargs=aggregator_kwargs if aggregator_kwargs is not None else c.get("aggregator_kwargs"),
            quick_gelu=quick_gelu if quick_gelu is not None else bool(c.get("quick_gelu", False)),
            name=name or c.get("name"),
        )

    # ------------------------------------------------------------------ towers
    def set_aggregator(self, name: str, **kwargs: Any) -> CLIP:
        """Swap the image readout in place (e.g. read an OpenAI CLIP through LazyStrike)."""
        self.visual.set_aggregator(name, **kwargs)
        return self

    def lock_text_tower(self, frozen: bool = True) -> CLIP:
        """Freeze (or unfreeze) the whole text tower."""
        for p in self.text.parameters():
            p.requires_grad_(not frozen)
        return self

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image embeddings (B, E): readout of the final-normed tokens, then the projection head."""
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text embeddings (B, E) from token ids (B, context_length)."""
        if text.shape[-1] != self.context_length:
            raise ValueError(f"token ids have length {text.shape[-1]}, the text tower expects {self.context_length}")
        x = self.text(text)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_patches(self, images: torch.Tensor, normalize: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
        """Final-normed patch tokens projected by the image head: (B, N, E) and the grid (h, w)."""
        rec = self.visual.forward_tokens(images)
        x = self.visual.head(rec.patches)
        return (F.normalize(x, dim=-1) if normalize else x), rec.grid

    def forward(
        self, images: torch.Tensor | None, text: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """``(normalised image features, normalised text features, logit_scale.exp())`` like open_clip."""
        img = self.encode_image(images, normalize=True) if images is not None else None
        txt = self.encode_text(text, normalize=True) if text is not None else None
        return img, txt, self.logit_scale.exp()


