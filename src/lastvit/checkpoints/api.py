"""``read_checkpoint``, ``load_checkpoint`` and ``build_from_checkpoint`` (behind ``create_model(checkpoint=...)``)."""

from __future__ import annotations

import importlib
import math
import os
import warnings
from typing import Any

import torch
from torch import nn

from lastvit.checkpoints.formats import convert
from lastvit.checkpoints.options import LoadOptions, arch_config
from lastvit.checkpoints.read import first_nonfinite, load_raw
from lastvit.checkpoints.records import (
    GUESS_PREFIXES,
    ArchitectureGuessWarning,
    CheckpointError,
    ConvertedCheckpoint,
    LoadReport,
    load_tensors,
)

__all__ = ["read_checkpoint", "load_checkpoint", "build_from_checkpoint", "build_from_converted", "apply_converted"]

# Architecture keys the weights determine; a model name may not change them (only heads / image size).
_NAME_KEYS = ("img_size", "num_heads")
_GUESS_HEADS, _GUESS_TEXT_HEADS, _GUESS_ACT = GUESS_PREFIXES


def read_checkpoint(
    path: str | os.PathLike,
    format: str = "auto",
    *,
    dino_branch: str = "teacher",
    quick_gelu: bool | None = None,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
    options: LoadOptions | None = None,
) -> ConvertedCheckpoint:
    """Read a local checkpoint of any supported format and convert it to LastViT keys.

    Args:
        path: the file.
        format: ``"auto"`` or one of :data:`lastvit.checkpoints.FORMATS` (aliases: ``release``, ``dino-backbone``...).
        dino_branch: ``"teacher"`` (default) or ``"student"`` for DINO training checkpoints.
        quick_gelu: activation of CLIP towers (not recorded in files): default True for OpenAI files, False for
            open_clip files.
        allow_pickle: opt-in to ``torch.load(weights_only=False)`` for a file that pickles Python objects beyond the
            allow-list (:func:`lastvit.checkpoints.allowed_globals`); such files are refused by default.
        allow_nonfinite: load NaN / Inf weights (refused by default, naming the first bad key).
        options: a :class:`LoadOptions` (its reading fields replace the keywords above).
    """
    if options is not None:
        format = options.format if format == "auto" else format
        dino_branch, quick_gelu = options.dino_branch, options.quick_gelu
        allow_pickle, allow_nonfinite = options.allow_pickle, options.allow_nonfinite
    p = os.fspath(path)
    obj, notes = load_raw(p, allow_pickle=allow_pickle)
    if isinstance(obj, nn.Module):  # torch.save(model) of a module built only from allowed types (or allow_pickle)
        notes.append(f"a pickled {type(obj).__name__} module: its state_dict() was read")
        obj = dict(obj.state_dict())
    obj, n_np = _numpy_to_torch(obj)
    if n_np:
        notes.append(f"{n_np} numpy array(s) converted to tensors")
    try:
        ckpt = convert(obj, p, format, dino_branch=dino_branch, quick_gelu=quick_gelu)
    except (KeyError, AttributeError, TypeError, IndexError, RuntimeError) as e:  # malformed entries
        raise CheckpointError(f"{p}: malformed checkpoint ({type(e).__name__}: {e})") from None
    ckpt.notes[:0] = notes
    bad = first_nonfinite(ckpt.state_dict) or first_nonfinite((ckpt.clip or {}).get("state_dict") or {})
    if bad is not None:
        if not allow_nonfinite:
            raise CheckpointError(f"{p}: non-finite weights (NaN or Inf) in {bad}; refusing to load them "
                                  "(allow_nonfinite=True to load anyway)")
        ckpt.notes.append(f"non-finite weights (NaN or Inf) loaded on request, first in {bad}")
    return ckpt


def _numpy_to_torch(obj: Any, depth: int = 0) -> tuple[Any, int]:
    """numpy arrays (detectron2 pickles) -> tensors, in the top two levels of dictionaries."""
    import numpy as np

    if isinstance(obj, np.ndarray) and obj.dtype.kind in "fiub":
        return torch.from_numpy(np.ascontiguousarray(obj)), 1
    if depth < 2 and isinstance(obj, dict):
        out, n = {}, 0
        for k, v in obj.items():
            out[k], c = _numpy_to_torch(v, depth + 1)
            n += c
        return out, n
    return obj, 0


def _resample_pos_embed(src: torch.Tensor, dst_shape: torch.Size, num_prefix: int) -> torch.Tensor | None:
    """Bicubic resampling of a square pos-embed grid to the model's grid, or None when not possible."""
    from timm.layers import resample_abs_pos_embed

    n_src, n_dst = src.shape[1] - num_prefix, dst_shape[1] - num_prefix
    gs, gd = math.isqrt(n_src), math.isqrt(n_dst)
    if src.shape[-1] != dst_shape[-1] or gs * gs != n_src or gd * gd != n_dst or n_src <= 0:
        return None
    return resample_abs_pos_embed(src, [gd, gd], [gs, gs], num_prefix_tokens=num_prefix)


def apply_converted(model: nn.Module, ckpt: ConvertedCheckpoint, strict: bool = True) -> LoadReport:
    """Load converted tensors into ``model`` and report; under ``strict`` any mismatch raises ``CheckpointError``."""
    report = LoadReport(path=ckpt.path, format=ckpt.format, skipped={g: list(k) for g, k in ckpt.skipped.items()},
                        notes=list(ckpt.notes))
    if ckpt.unsupported and strict:
        raise CheckpointError(f"{ckpt.path}: {ckpt.unsupported[0]}")
    report.notes.extend(ckpt.unsupported)
    target = model.state_dict()
    source = dict(ckpt.state_dict)
    # Parts the checkpoint has and the model does not: skipped, not errors.
    if not any(k.startswith("head.") for k in target):
        head = [k for k in source if k.startswith("head.")]
        if head:
            report.skipped.setdefault("head (model has none)", []).extend(head)
            report.notes.append("the model has no head (num_classes=0 / head='none'): the file's head is skipped")
            for k in head:
                source.pop(k)
    if not any(k.startswith("aggregator.") for k in target):
        agg = [k for k in source if k.startswith("aggregator.")]
        if agg:
            report.skipped.setdefault("readout parameters (model's readout has none)", []).extend(agg)
            for k in agg:
                source.pop(k)
    # Position embeddings of another image size are resampled (bicubic, as timm does).
    pk = "encoder.pos_embed"
    if pk in source and pk in target and source[pk].shape != target[pk].shape:
        enc = getattr(model, "encoder", None)
        prefix = 0 if getattr(enc, "no_embed_class", False) else int(getattr(enc, "num_prefix_tokens", 1))
        new = _resample_pos_embed(source[pk], target[pk].shape, prefix)
        if new is not None:
            report.notes.append(f"pos_embed resampled from {tuple(source[pk].shape)} to {tuple(target[pk].shape)} "
                                "(bicubic) for the model's image size")
            source[pk] = new
    load_tensors(model, source, report, strict=strict, unmapped=ckpt.unmapped)
    arch = getattr(model, "arch", None)
    if isinstance(arch, dict) and ckpt.arch:
        for key in ("act", "norm_eps"):
            if key in ckpt.arch and arch.get(key) != ckpt.arch.get(key):
                report.notes.append(f"the model's {key}={arch.get(key)!r} differs from the checkpoint's "
                                    f"{ckpt.arch.get(key)!r} (not stored in the weights; check it)")
    return report


def load_checkpoint(model: nn.Module, path: str | os.PathLike, format: str = "auto", strict: bool = True,
                    *, options: LoadOptions | None = None, **opts: Any) -> LoadReport:
    """Load a local checkpoint of any supported format into ``model`` (a LastViT, or a lastvit CLIP).

    ``opts``: ``dino_branch``, ``quick_gelu``, ``allow_pickle``, ``allow_nonfinite`` (see :func:`read_checkpoint`),
    or one :class:`LoadOptions`. Returns a :class:`LoadReport`; under ``strict`` (default) any missing, unexpected
    or mis-shaped key raises ``CheckpointError``. Recognised parts the model lacks (trainer state, DINO head, CLIP
    text tower, a head when the model has none) are skipped and reported.
    """
    o = LoadOptions.of(options, format=format, strict=strict, **opts)
    ckpt = read_checkpoint(path, o.format, options=o)
    from lastvit.checkpoints.clip import is_clip_model, load_into_clip

    if is_clip_model(model):
        return load_into_clip(model, ckpt, strict=o.strict)
    return apply_converted(model, ckpt, strict=o.strict)


def _import_lastvit_class(qualname: str, path: str) -> type:
    mod, _, cls = qualname.rpartition(".")
    if not mod.startswith("lastvit."):
        raise CheckpointError(f"{path}: model class {qualname!r} is not a lastvit class")
    try:
        return getattr(importlib.import_module(mod), cls)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(f"{path}: model class {qualname!r} is not available ({e})") from None


def _build_lastvit_file(ckpt: ConvertedCheckpoint, o: LoadOptions, arch_overrides: dict[str, Any]) -> nn.Module:
    from lastvit.checkpoints.clip import clip_from_converted
    from lastvit.models.vit import LastViT

    cfg = dict(ckpt.config or {})
    qual = ckpt.model_class or "lastvit.models.vit.LastViT"
    if cfg.get("model") == "clip":  # lastvit's CLIP rebuilds itself from its config
        return clip_from_converted(ckpt, aggregator=o.aggregator, aggregator_kwargs=o.aggregator_kwargs,
                                   strict=o.strict, quick_gelu=o.quick_gelu)
    if qual != "lastvit.models.vit.LastViT":
        cls = _import_lastvit_class(qual, ckpt.path)
        model = cls.from_config(**cfg)
        if o.aggregator is not None and hasattr(model, "set_aggregator"):
            model.set_aggregator(o.aggregator, **(o.aggregator_kwargs or {}))
        model.load_report = apply_converted(model, ckpt, strict=o.strict)
        return model
    cfg["arch"] = {**cfg.get("arch", {}), **arch_overrides}
    if o.quick_gelu is not None:
        cfg["arch"]["act"] = "quick_gelu" if o.quick_gelu else "gelu"
    if o.aggregator is not None:
        cfg["aggregator"] = o.aggregator
        cfg["aggregator_kwargs"] = dict(o.aggregator_kwargs or {})
    elif o.aggregator_kwargs is not None:
        cfg["aggregator_kwargs"] = dict(o.aggregator_kwargs)
    if o.num_classes is not None:
        cfg["num_classes"] = o.num_classes
    if o.head is not None:
        cfg["head"] = o.head
    if o.head_dim is not None:
        cfg["head_dim"] = o.head_dim
    model = LastViT(cfg["arch"], aggregator=cfg.get("aggregator", "lazystrike"),
                    aggregator_kwargs=cfg.get("aggregator_kwargs") or {}, num_classes=cfg.get("num_classes", 0),
                    head=cfg.get("head", "linear"), head_dim=cfg.get("head_dim"), drop_path_rate=o.drop_path_rate,
                    name=cfg.get("name"))
    model.load_report = apply_converted(model, ckpt, strict=o.strict)
    return model


def build_from_checkpoint(path: str | os.PathLike, options: LoadOptions | None = None, **kwargs: Any) -> nn.Module:
    """Build a model from a checkpoint file of any supported format and load it (``create_model(checkpoint=...)``).

    ``options`` (a :class:`LoadOptions`) and/or its fields as keywords; other keywords are architecture keys
    (``lastvit.models.ARCH_DEFAULTS``). The architecture comes from the file (lastvit's config, or inferred from
    the weights); ``name`` (a preset or timm name), ``num_heads`` / ``text_heads`` or ``arch`` (an open_clip
    model name or config JSON) supply what the weights cannot tell. A head count that nothing supplies is guessed
    as width / 64: the guess is in the notes and emitted once as an :class:`ArchitectureGuessWarning`.
    Readout: ``aggregator`` if given, else the file's (lastvit files; LazyStrike k=1 for the LaSt-ViT release),
    else LazyStrike. Head: ``num_classes`` / ``head`` if given, else the file's head. A whole-CLIP file returns
    ``lastvit.models.clip.CLIP`` unless ``visual_only`` or ``head="proj"`` is given. The load report is
    attached as ``model.load_report`` (printed when ``verbose``).
    """
    o = LoadOptions.of(options, **kwargs)
    _check_arch_keys(o.arch_overrides)
    ckpt = read_checkpoint(path, o.format, options=o)
    return build_from_converted(ckpt, o)


def _check_arch_keys(overrides: dict[str, Any]) -> None:
    from lastvit.models.vit import ARCH_DEFAULTS

    unknown = set(overrides) - set(ARCH_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown architecture keyword(s) {sorted(unknown)}; known: {sorted(ARCH_DEFAULTS)}")


def _resolve_heads(ckpt: ConvertedCheckpoint, o: LoadOptions) -> tuple[dict[str, Any], int | None, bool | None]:
    """Architecture overrides, text heads and activation after ``num_heads`` / ``text_heads`` / ``arch``."""
    overrides = dict(o.arch_overrides)
    text_heads, quick_gelu = o.text_heads, o.quick_gelu
    if o.arch is not None:
        spec = arch_config(o.arch)
        if o.num_heads is None and "num_heads" in spec:
            overrides["num_heads"] = spec["num_heads"]
        if text_heads is None:
            text_heads = spec.get("text_heads")
        if quick_gelu is None:
            quick_gelu = spec.get("quick_gelu")
            if quick_gelu is None and ckpt.format == "open_clip" and any(n.startswith(_GUESS_ACT) for n in ckpt.notes):
                quick_gelu = False  # an open_clip config without "quick_gelu": open_clip's default, GELU
                ckpt.notes.append(f"activation from {o.arch!r}: GELU (the config sets no quick_gelu)")
        if quick_gelu is not None:
            ckpt.notes = [n for n in ckpt.notes if not n.startswith(_GUESS_ACT)]
        if isinstance(spec.get("eva"), dict) and ckpt.arch.get("family") == "eva":
            overrides["eva"] = {**(ckpt.arch.get("eva") or {}), **spec["eva"], **(overrides.get("eva") or {})}
            ckpt.notes = [n for n in ckpt.notes if not n.startswith("rotary position embedding: not stored")]
            ckpt.notes.append(f"EVA options from {o.arch!r}: " + ", ".join(f"{k}={v}" for k, v in spec["eva"].items()))
        ckpt.notes.append(f"head counts{' and activation' if 'quick_gelu' in spec else ''} from {o.arch!r}: "
                          + ", ".join(f"{k}={spec[k]}" for k in ("num_heads", "text_heads", "quick_gelu")
                                      if k in spec))
    if o.num_heads is not None:
        overrides["num_heads"] = o.num_heads
    if o.quick_gelu is not None:
        ckpt.notes = [n for n in ckpt.notes if not n.startswith(_GUESS_ACT)]
    return overrides, text_heads, quick_gelu


def _warn_guesses(ckpt: ConvertedCheckpoint, text_tower: bool) -> None:
    """Every architecture guess left standing (for a tower that is built) is emitted once, one line naming the file."""
    for n in ckpt.notes:
        if n.startswith((_GUESS_HEADS, _GUESS_ACT)) or (text_tower and n.startswith(_GUESS_TEXT_HEADS)):
            warnings.warn(f"{ckpt.path}: {n}", ArchitectureGuessWarning, stacklevel=3)


def build_from_converted(ckpt: ConvertedCheckpoint, options: LoadOptions | None = None, **kwargs: Any) -> nn.Module:
    """:func:`build_from_checkpoint` for an already-read :class:`ConvertedCheckpoint` (same options)."""
    from lastvit.models.vit import LastViT

    o = LoadOptions.of(options, **kwargs)
    _check_arch_keys(o.arch_overrides)
    overrides, text_heads, quick_gelu = _resolve_heads(ckpt, o)
    if quick_gelu is not o.quick_gelu:
        o = LoadOptions.of(o, quick_gelu=quick_gelu)
    if o.pos_interp is not None:
        overrides["pos_interp"] = o.pos_interp
    if "num_heads" in overrides:
        ckpt.notes = [n for n in ckpt.notes if not n.startswith(_GUESS_HEADS)]
    if text_heads is not None:
        ckpt.notes = [n for n in ckpt.notes if not n.startswith(_GUESS_TEXT_HEADS)]
    if ckpt.format == "lastvit":
        model = _build_lastvit_file(ckpt, o, overrides)
        if o.verbose:
            print(model.load_report)
        return model

    if ckpt.clip is not None and text_heads is not None and ckpt.clip.get("config"):
        ckpt.clip["config"]["heads"] = int(text_heads)
        ckpt.notes.append(f"CLIP text heads set by the caller: {int(text_heads)}")

    arch = dict(ckpt.arch)
    if o.name is not None:
        from lastvit.models.arch import resolve_arch

        named = resolve_arch(o.name, {})
        for key in _NAME_KEYS:
            arch[key] = named[key]
        for key in ("embed_dim", "depth", "patch_size"):
            if named[key] != ckpt.arch[key]:
                raise CheckpointError(f"{ckpt.path}: model name {o.name!r} has {key}={named[key]} but the "
                                      f"checkpoint has {key}={ckpt.arch[key]}")
        ckpt.notes = [n for n in ckpt.notes if not n.startswith(_GUESS_HEADS)]
        ckpt.notes.append(f"num_heads={arch['num_heads']} and img_size={arch['img_size']} taken from {o.name!r}")
    for key, v in overrides.items():
        if key in ("embed_dim", "depth", "patch_size") and v != ckpt.arch.get(key):
            ckpt.notes.append(f"{key}={v} overrides the checkpoint's {ckpt.arch.get(key)} (shapes will mismatch)")
        elif key == "num_heads":
            ckpt.notes.append(f"num_heads={v} set by the caller")
        elif key == "pos_interp" and v != ckpt.arch.get(key):
            ckpt.notes.append(f"pos_interp={v!r} set by the caller (the file's family: {ckpt.arch.get(key)!r})")
        arch[key] = v
    if quick_gelu is not None and not (arch.get("family") == "eva" and arch.get("act") == "swiglu"):
        arch["act"] = "quick_gelu" if quick_gelu else "gelu"
    _warn_guesses(ckpt, text_tower=ckpt.clip is not None and not o.visual_only and o.head is None)

    if ckpt.readout is not None and o.aggregator is None:
        agg, agg_kw = ckpt.readout
        agg_kw = dict(agg_kw) if o.aggregator_kwargs is None else dict(o.aggregator_kwargs)
    else:
        agg, agg_kw = o.aggregator or "lazystrike", dict(o.aggregator_kwargs or {})

    if ckpt.clip is not None and not o.visual_only and o.head is None:
        from lastvit.checkpoints.clip import clip_from_converted

        ckpt.arch = arch
        model = clip_from_converted(ckpt, aggregator=agg, aggregator_kwargs=agg_kw, strict=o.strict,
                                    quick_gelu=quick_gelu)
        if o.verbose:
            print(model.load_report)
        return model

    kind, size = ckpt.head
    head, head_dim = o.head, o.head_dim
    if head is None:
        head = kind if kind != "none" else "linear"
    if head == "proj":
        head_dim = head_dim if head_dim is not None else (size if kind == "proj" else None)
        n = 0
    elif head == "none":
        n = 0
    else:
        n = o.num_classes if o.num_classes is not None else (size if kind == "linear" else 0)
    model = LastViT(arch, aggregator=agg, aggregator_kwargs=agg_kw, num_classes=n, head=head, head_dim=head_dim,
                    drop_path_rate=o.drop_path_rate, name=o.name)
    model.load_report = apply_converted(model, ckpt, strict=o.strict)
    if o.verbose:
        print(model.load_report)
    return model
