"""Checkpoint records and errors: ``ConvertedCheckpoint`` (a file translated to LastViT keys), ``LoadReport`` (what a
load did) and the one ``CheckpointError``; ``load_tensors`` fills a report while loading."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "ArchitectureGuessWarning",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConvertedCheckpoint",
    "LoadReport",
    "load_tensors",
]


#: how the notes of a guessed architecture fact begin (``ConvertedCheckpoint.guesses``)
GUESS_PREFIXES = ("num_heads is not stored", "CLIP text heads are not stored",
                  "the activation is not recorded in CLIP files")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, is not a checkpoint, or does not fit the model (one line)."""


class ArchitectureGuessWarning(UserWarning):
    """An architecture fact the file does not record was guessed (e.g. heads = width / 64); pass it to silence."""


class CheckpointNotFoundError(FileNotFoundError):
    """The checkpoint path does not exist."""


def _short(keys: list[str], n: int = 6) -> str:
    keys = sorted(keys)
    if len(keys) <= n:
        return ", ".join(keys)
    return ", ".join(keys[:n]) + f", ... (+{len(keys) - n} more)"


@dataclass
class ConvertedCheckpoint:
    """A checkpoint translated to LastViT keys.

    Attributes:
        path: the file.
        format: detected (or given) format name, see :data:`lastvit.checkpoints.FORMATS`.
        arch: architecture keys (``lastvit.models.ARCH_DEFAULTS``) inferred from the weights.
        state_dict: tensors under LastViT names (``encoder.*``, ``head.*``, ``aggregator.*``).
        head: ``("linear", num_classes)`` | ``("proj", out_dim)`` | ``("none", 0)``.
        skipped: groups of recognised keys that a LastViT does not hold (trainer state, DINO head, text tower).
        notes: what was assumed or recognised, for the user.
        config: the full model config (lastvit's own files only).
        clip: for whole-CLIP files, ``{"state_dict": text-tower tensors (open_clip names), "config": {context_length,
            vocab_size, width, heads, layers, mlp_ratio, embed_dim, norm_eps, quick_gelu}, "embed_dim": E,
            "quick_gelu": bool, "source": "openai" | "open_clip"}``.
        readout: ``(aggregator, kwargs)`` the file was trained with, when known.
        unmapped: keys of the file that no rule recognised (they are "unexpected" when loading).
        unsupported: problems that make a faithful load impossible (raised under ``strict``).
        extra: the ``extra`` dict of a lastvit file.
    """

    path: str
    format: str
    arch: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    head: tuple[str, int] = ("none", 0)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None
    clip: dict[str, Any] | None = None
    readout: tuple[str, dict[str, Any]] | None = None
    unmapped: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    extra: dict[str, Any] | None = None
    model_class: str | None = None

    def guesses(self) -> list[str]:
        """The architecture guesses still standing (a head count that nothing supplied), one line each."""
        return [n for n in self.notes if n.startswith(GUESS_PREFIXES)]

    def skip(self, group: str, keys: list[str] | str) -> None:
        """Record recognised keys that are not loaded into a LastViT."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        if keys:
            self.skipped.setdefault(group, []).extend(keys)

    def num_params(self, part: str = "all") -> int:
        """Parameter count of the converted tensors (``part``: "all", "encoder", "head", "text")."""
        if part == "text":
            return sum(v.numel() for v in (self.clip or {}).get("state_dict", {}).values() if _is_tensor(v))
        sd = self.state_dict
        if part != "all":
            sd = {k: v for k, v in sd.items() if k.startswith(part + ".")}
        return sum(v.numel() for v in sd.values() if _is_tensor(v))

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable description (what ``lastvit inspect --json`` prints)."""
        out: dict[str, Any] = {
            "path": self.path,
            "format": self.format,
            "arch": self.arch,
            "head": list(self.head),
            "readout": list(self.readout) if self.readout else None,
            "params": {"total": self.num_params(), "encoder": self.num_params("encoder"),
                       "head": self.num_params("head")},
            "tensors": len(self.state_dict),
            "skipped": {g: len(k) for g, k in self.skipped.items()},
            "unmapped": sorted(self.unmapped),
            "unsupported": list(self.unsupported),
            "notes": list(self.notes),
        }
        if self.clip is not None:
            out["clip_text"] = dict(self.clip["config"])
            out["params"]["text"] = self.num_params("text")
        if self.config is not None:
            out["config"] = self.config
        return out


def _is_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor)


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did: loaded / missing / unexpected / shape-mismatched / skipped keys, and notes."""

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: file (a, b) vs model (c, d)"
    skipped: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model tensor was loaded and every file tensor was used or knowingly skipped."""
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        """One line listing the missing / unexpected / mismatched keys."""
        parts = []
        if self.missing:
            parts.append(f"missing {len(self.missing)} key(s) [{_short(self.missing)}]")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)} key(s) [{_short(self.unexpected)}]")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape mismatch(es) [{_short(self.mismatched, 3)}]")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "loaded": len(self.loaded),
            "missing": sorted(self.missing),
            "unexpected": sorted(self.unexpected),
            "mismatched": list(self.mismatched),
            "skipped": {g: sorted(k) for g, k in self.skipped.items()},
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        lines = [f"checkpoint {self.path} (format: {self.format})",
                 f"  loaded:     {len(self.loaded)} tensors"]
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                           ("mismatched", self.mismatched)):
            lines.append(f"  {name + ':':<11} {len(keys)}" + (f"  [{_short(keys)}]" if keys else ""))
        for group, keys in self.skipped.items():
            lines.append(f"  skipped:    {group}: {len(keys)} [{_short(keys, 4)}]")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)


def load_tensors(model: torch.nn.Module, source: dict[str, torch.Tensor], report: LoadReport, *, strict: bool = True,
                 unmapped: list[str] | tuple[str, ...] = ()) -> LoadReport:
    """Load ``source`` (model key names) into ``model``, filling ``report``'s loaded / missing / unexpected /
    mismatched keys; under ``strict`` any of them raises one-line :class:`CheckpointError` before anything loads."""
    target = model.state_dict()
    to_load = {}
    for k, v in source.items():
        if k not in target:
            report.unexpected.append(k)
        elif tuple(v.shape) != tuple(target[k].shape):
            report.mismatched.append(f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}")
        else:
            to_load[k] = v
    report.unexpected.extend(unmapped)
    report.missing = [k for k in target if k not in source]
    if strict and not report.ok:
        raise CheckpointError(f"{report.path}: does not fit the model ({report.format}): {report.problems()}; "
                              "use strict=False for a partial load")
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    return report
