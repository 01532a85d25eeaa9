"""``LoadOptions``: every choice of reading a checkpoint and building a model from it, in one frozen record.

``create_model(checkpoint=...)``, :func:`lastvit.checkpoints.build_from_checkpoint`, ``build_from_converted``,
``read_checkpoint`` and the CLI (``inspect``, ``convert``, and ``evaluate`` / ``analyze`` through their shared
options) all carry one ``LoadOptions`` instead of a dozen keywords passed from hand to hand.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from lastvit.checkpoints.records import CheckpointError
from lastvit.models.vit import POS_INTERP

__all__ = ["LoadOptions", "POS_INTERP", "arch_config"]


@dataclass(frozen=True)
class LoadOptions:
    """How to read a checkpoint and what to build from it.

    Reading: ``format`` (``"auto"`` or a :data:`~lastvit.checkpoints.FORMATS` name), ``dino_branch``
    (``"teacher"`` | ``"student"``), ``quick_gelu`` (CLIP activation; None: by format), ``allow_pickle`` (opt-in
    to ``torch.load(weights_only=False)`` for files that pickle objects off the allow-list; trusted files only),
    ``allow_nonfinite`` (load NaN / Inf weights instead of refusing them).
    Architecture facts the weights do not record: ``num_heads`` (image tower), ``text_heads`` (CLIP text tower),
    ``arch`` (an open_clip model name such as ``"ViT-B-16"`` or the path of an open_clip model-config JSON: both
    head counts and the activation come from it), ``pos_interp`` (position-embedding resampling family, overrides
    the one the converter records), ``arch_overrides`` (any other architecture key).
    Building: ``name`` (a preset / timm name supplying heads and image size), ``aggregator`` /
    ``aggregator_kwargs`` (readout; None: the file's, else LazyStrike), ``num_classes`` / ``head`` / ``head_dim``,
    ``drop_path_rate``, ``visual_only`` (image tower of a whole CLIP), ``strict`` (any key mismatch raises),
    ``verbose`` (print the load report).
    """

    format: str = "auto"
    strict: bool = True
    dino_branch: str = "teacher"
    quick_gelu: bool | None = None
    num_heads: int | None = None
    text_heads: int | None = None
    arch: str | None = None
    pos_interp: str | None = None
    allow_pickle: bool = False
    allow_nonfinite: bool = False
    name: str | None = None
    aggregator: str | None = None
    aggregator_kwargs: dict[str, Any] | None = None
    num_classes: int | None = None
    head: str | None = None
    head_dim: int | None = None
    drop_path_rate: float = 0.0
    visual_only: bool = False
    verbose: bool = False
    arch_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dino_branch not in ("teacher", "student"):
            raise CheckpointError(f"dino_branch must be 'teacher' or 'student', got {self.dino_branch!r}")
        if self.pos_interp is not None and self.pos_interp not in POS_INTERP:
            raise CheckpointError(f"pos_interp must be one of {POS_INTERP}, got {self.pos_interp!r}")
        for key in ("num_heads", "text_heads"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise CheckpointError(f"{key} must be a positive integer, got {v!r}")

    @classmethod
    def of(cls, options: LoadOptions | None = None, **kwargs: Any) -> LoadOptions:
        """``options`` (or the defaults) with ``kwargs`` replaced; keywords that are not fields are architecture
        keys and go to ``arch_overrides`` (``num_heads`` is a field)."""
        base = options if options is not None else cls()
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in kwargs.items() if k in names}
        extra = {k: v for k, v in kwargs.items() if k not in names}
        if extra:
            fields["arch_overrides"] = {**base.arch_overrides, **fields.get("arch_overrides", {}), **extra}
        if "arch_overrides" in fields:
            ov = dict(fields["arch_overrides"])
            for k in ("num_heads", "text_heads", "dino_branch", "pos_interp"):  # fields given among arch keys
                if k in ov:
                    fields[k] = ov.pop(k)
            fields["arch_overrides"] = ov
        return dataclasses.replace(base, **fields)

    def read_kwargs(self) -> dict[str, Any]:
        """What reading the file needs (:func:`lastvit.checkpoints.read_checkpoint`)."""
        return {"dino_branch": self.dino_branch, "quick_gelu": self.quick_gelu, "allow_pickle": self.allow_pickle,
                "allow_nonfinite": self.allow_nonfinite}


def _timm_tower_facts(name: str, spec: str) -> dict[str, Any]:
    """Head count (and, for an EVA tower, its rotary-embedding options) of an open_clip config's timm image tower,
    read off the timm model built on the meta device (nothing downloaded)."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            m = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as e:
        raise CheckpointError(f"{spec}: timm image tower {name!r} is not a timm model ({e})") from None
    blocks = getattr(m, "blocks", None)
    if not blocks:
        return {}
    out: dict[str, Any] = {"num_heads": int(blocks[0].attn.num_heads)}
    rope = getattr(m, "rope", None)
    if type(m).__name__ == "Eva":
        ref = getattr(rope, "ref_feat_shape", None)
        out["eva"] = {"use_rot_pos_emb": rope is not None,
                      "ref_feat_shape": [int(r) for r in ref] if ref is not None else None}
        if rope is not None and getattr(rope, "temperature", None) is not None:
            out["eva"]["rope_temperature"] = float(rope.temperature)
    return out


def arch_config(spec: str) -> dict[str, Any]:
    """Head counts and activation of an open_clip model name (its bundled ``model_configs``, nothing downloaded)
    or of an open_clip model-config JSON file: ``{"num_heads", "text_heads", "quick_gelu", "source"}`` (keys that
    the config does not determine are left out); a timm image tower (``timm_model_name``, e.g. ``EVA02-B-16``)
    gives its head count and, for EVA, ``"eva"`` (rotary embedding options) from the timm model."""
    if os.path.isfile(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{spec}: not a readable model-config JSON ({type(e).__name__}: {e})") from None
    else:
        from open_clip import get_model_config

        cfg = get_model_config(spec)
        if cfg is None:
            raise CheckpointError(f"--arch {spec!r}: neither a config file nor an open_clip model name "
                                  "(see open_clip.list_models())")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("vision_cfg"), dict):
        raise CheckpointError(f"{spec}: not an open_clip model config (no 'vision_cfg' entry)")
    out: dict[str, Any] = {"source": spec}
    v = cfg["vision_cfg"]
    if isinstance(v.get("width"), int):
        hw = int(v.get("head_width", 64))
        out["num_heads"] = max(1, v["width"] // hw)
    elif isinstance(v.get("timm_model_name"), str):
        out.update(_timm_tower_facts(v["timm_model_name"], spec))
    t = cfg.get("text_cfg")
    if isinstance(t, dict):
        if isinstance(t.get("heads"), int):
            out["text_heads"] = int(t["heads"])
        elif isinstance(t.get("width"), int):
            out["text_heads"] = max(1, t["width"] // 64)
    if "quick_gelu" in cfg:
        out["quick_gelu"] = bool(cfg["quick_gelu"])
    return out
