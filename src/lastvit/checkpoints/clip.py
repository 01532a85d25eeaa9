"""Whole-CLIP files: build or load a :class:`lastvit.models.clip.CLIP` from a converted checkpoint, and lastvit's
own CLIP file (:func:`save_clip` / :func:`load_clip`).

The converters (``formats.py``) give the image tower under LastViT names and the text tower under open_clip names
in ``ConvertedCheckpoint.clip``; here both are put under the CLIP's keys (``visual.*``, ``text.*``,
``logit_scale``) and loaded with the one key report (:class:`~lastvit.checkpoints.LoadReport`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from lastvit.checkpoints.formats import convert
from lastvit.checkpoints.read import load_raw
from lastvit.checkpoints.records import CheckpointError, ConvertedCheckpoint, LoadReport, load_tensors
from lastvit.checkpoints.write import save_checkpoint
from lastvit.models.clip import CLIP, TEXT_DEFAULTS

__all__ = ["ClipLoadError", "clip_from_converted", "is_clip_model", "load_clip", "load_into_clip", "save_clip"]

#: kept for callers of the old name: every CLIP file problem is a :class:`CheckpointError`
ClipLoadError = CheckpointError


def is_clip_model(model: nn.Module) -> bool:
    """True for lastvit's whole CLIP (image and text tower)."""
    return isinstance(model, CLIP)


def _split_clip_part(clip: Any, path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], int | None, Any]:
    """(text state dict without prefix, text config, embed_dim, logit_scale) from ``ConvertedCheckpoint.clip``.

    Accepted layouts: ``{"state_dict": {...}, "config": {...}}`` (also ``text_state_dict`` / ``text_cfg`` /
    ``text_config``), or config keys at the top level beside ``state_dict``. Keys may carry a ``text.`` prefix
    (open_clip CustomTextCLIP) and may include ``logit_scale`` / ``attn_mask``.
    """
    if not isinstance(clip, dict):
        clip = dict(vars(clip))
    sd = clip.get("state_dict") or clip.get("text_state_dict")
    if sd is None:
        sd = {k: v for k, v in clip.items() if isinstance(v, torch.Tensor)}
    cfg = clip.get("config") or clip.get("text_cfg") or clip.get("text_config") or {}
    cfg = {**{k: clip[k] for k in (*TEXT_DEFAULTS, "embed_dim") if k in clip}, **cfg}
    out: dict[str, torch.Tensor] = {}
    logit_scale = clip.get("logit_scale")
    for k, v in sd.items():
        k = k[len("text."):] if k.startswith("text.") else k
        if k == "logit_scale":
            logit_scale = v
        elif k in ("attn_mask", "logit_bias", "input_resolution", "context_length", "vocab_size"):
            if k == "logit_bias":
                raise CheckpointError(f"{path}: SigLIP-style checkpoints (logit_bias) are not supported")
            continue
        else:
            out[k] = v
    if "token_embedding.weight" not in out:
        raise CheckpointError(f"{path}: the text tower has no token_embedding.weight")
    v, w = out["token_embedding.weight"].shape
    text_cfg = {
        "context_length": int(cfg.get("context_length", out["positional_embedding"].shape[0])),
        "vocab_size": int(cfg.get("vocab_size", v)),
        "width": int(cfg.get("width", w)),
        "layers": int(cfg.get("layers", len({k.split(".")[2] for k in out if k.startswith("transformer.resblocks.")}))),
    }
    text_cfg["heads"] = int(cfg.get("heads", max(1, text_cfg["width"] // 64)))
    fc = out.get("transformer.resblocks.0.mlp.c_fc.weight")
    text_cfg["mlp_ratio"] = float(cfg.get("mlp_ratio", fc.shape[0] / w if fc is not None else 4.0))
    proj = out.get("text_projection")
    embed_dim = cfg.get("embed_dim") or (int(proj.shape[1]) if proj is not None else None)
    return out, text_cfg, embed_dim, logit_scale


def _clip_state_dict(ckpt: ConvertedCheckpoint) -> dict[str, torch.Tensor]:
    """The converted file under the CLIP's own keys."""
    cfg = ckpt.config or {}
    if isinstance(cfg, dict) and cfg.get("model") == "clip":  # lastvit's CLIP file: already the CLIP's keys
        return dict(ckpt.state_dict)
    if not ckpt.clip:
        raise CheckpointError(f"{ckpt.path}: not a whole-CLIP checkpoint (no text tower found)")
    text_sd, _, _, logit_scale = _split_clip_part(ckpt.clip, ckpt.path)
    sd = {f"visual.{k}": v for k, v in ckpt.state_dict.items()}
    sd.update({f"text.{k}": v for k, v in text_sd.items()})
    if logit_scale is not None:
        sd["logit_scale"] = torch.as_tensor(logit_scale).reshape(())
    return sd


def load_into_clip(model: CLIP, ckpt: ConvertedCheckpoint, strict: bool = True) -> LoadReport:
    """Load a converted whole-CLIP file (or a lastvit CLIP file) into ``model``; the report is also kept in
    ``model.load_report``. Under ``strict`` any missing / unexpected / mis-shaped key raises one line."""
    sd = _clip_state_dict(ckpt)
    own = model.state_dict()
    if "logit_scale" in sd and "logit_scale" in own:
        sd["logit_scale"] = torch.as_tensor(sd["logit_scale"]).reshape(own["logit_scale"].shape)
    skipped = {g: list(k) for g, k in ckpt.skipped.items() if g != "clip text tower"}  # the text tower is loaded
    report = LoadReport(path=ckpt.path, format=ckpt.format, skipped=skipped, notes=list(ckpt.notes))
    if ckpt.unsupported and strict:
        raise CheckpointError(f"{ckpt.path}: {ckpt.unsupported[0]}")
    report.notes.extend(ckpt.unsupported)
    load_tensors(model, sd, report, strict=strict, unmapped=ckpt.unmapped)
    model.load_report = report
    return report


def clip_from_converted(
    ckpt: ConvertedCheckpoint,
    *,
    aggregator: str | None = None,
    aggregator_kwargs: dict[str, Any] | None = None,
    strict: bool = True,
    quick_gelu: bool | None = None,
) -> CLIP:
    """A whole :class:`CLIP` built from a converted file and loaded (report in ``model.load_report``).

    The image tower comes from ``ckpt.arch`` / ``ckpt.head`` (``("proj", E)``), the text tower from ``ckpt.clip``
    (its config inferred by the converter). A lastvit CLIP file is rebuilt from its stored config.
    ``quick_gelu=None`` follows the image tower's activation as converted (OpenAI files: QuickGELU). The default
    readout is LazyStrike (or the readout stored in a lastvit file).
    """
    cfg = ckpt.config or {}
    if isinstance(cfg, dict) and cfg.get("model") == "clip":
        model = CLIP.from_config(cfg, aggregator=aggregator, aggregator_kwargs=aggregator_kwargs,
                                 quick_gelu=quick_gelu)
        load_into_clip(model, ckpt, strict=strict)
        return model
    if not ckpt.clip:
        raise CheckpointError(f"{ckpt.path}: not a whole-CLIP checkpoint (no text tower found)")
    _, text_cfg, embed_dim, _ = _split_clip_part(ckpt.clip, ckpt.path)
    if ckpt.head[0] != "proj":
        raise CheckpointError(f"{ckpt.path}: the image tower has a {ckpt.head[0]!r} head, a CLIP needs a projection")
    embed_dim = embed_dim or int(ckpt.head[1])
    arch = dict(ckpt.arch)
    if quick_gelu is None:
        quick_gelu = arch.get("act") == "quick_gelu"
    model = CLIP(arch, text_cfg, embed_dim, aggregator=aggregator or "lazystrike",
                 aggregator_kwargs=aggregator_kwargs, quick_gelu=quick_gelu)
    load_into_clip(model, ckpt, strict=strict)
    return model


def save_clip(model: CLIP, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> str:
    """Write lastvit's own file (``{"format": "lastvit", "version", "config": model.config(), "model_class",
    "state_dict", "extra"}``) atomically via :func:`lastvit.checkpoints.save_checkpoint`; the config carries both
    towers, so ``lastvit.create_model(checkpoint=path)`` and :func:`load_clip` rebuild the CLIP."""
    return os.fspath(save_checkpoint(model, path, extra=dict(extra or {})))


def load_clip(path: str | os.PathLike, strict: bool = True, *, allow_pickle: bool = False,
              **overrides: Any) -> CLIP:
    """Rebuild a CLIP written by :func:`save_clip` (``overrides``: e.g. ``aggregator=``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    obj, notes = load_raw(path, allow_pickle=allow_pickle)
    if not (isinstance(obj, dict) and obj.get("format") == "lastvit" and (obj.get("config") or {}).get("model")
            == "clip"):
        raise CheckpointError(f"{path}: not a lastvit CLIP checkpoint (expected format 'lastvit' with a CLIP config)")
    ckpt = convert(obj, path, "lastvit")
    ckpt.notes[:0] = notes
    model = CLIP.from_config(obj["config"], **overrides)
    load_into_clip(model, ckpt, strict=strict)
    return model
