"""Checkpoint records, errors, raw file reading and lastvit's own (atomic) checkpoint writer."""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lastvit.io import atomic_save

__all__ = [
    "ArchitectureGuessWarning",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConvertedCheckpoint",
    "LoadReport",
    "allowed_globals",
    "first_nonfinite",
    "load_raw",
    "load_tensors",
    "safe_torch_load",
    "save_checkpoint",
    "atomic_torch_save",
    "LASTVIT_FORMAT_VERSION",
]

LASTVIT_FORMAT_VERSION = 1


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


# ---------------------------------------------------------------------------------------------- reading
def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _is_safetensors(path: Path, size: int) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n <= size - 8


def _numpy_globals() -> list[Any]:
    """numpy's array / scalar / dtype reconstructors, under the names numpy 1.x and numpy 2.x pickle them."""
    import numpy as np

    try:
        multiarray = np._core.multiarray  # numpy >= 2
    except AttributeError:  # numpy 1.x
        multiarray = np.core.multiarray
    out: list[Any] = [np.ndarray, np.dtype]
    for fn in ("_reconstruct", "scalar"):
        f = getattr(multiarray, fn)
        out += [(f, f"numpy.core.multiarray.{fn}"), (f, f"numpy._core.multiarray.{fn}")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles some dtypes by their class
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and isinstance(getattr(dtypes, n), type)]
    return out


def allowed_globals() -> list[Any]:
    """The Python objects (besides tensors and containers) that ``torch.load(weights_only=True)`` accepts here.

    Exactly the harmless types that the supported formats contain: DINO's ``args`` (``argparse.Namespace``),
    numpy arrays, scalars and dtypes (detectron2 model-zoo pickles, trainer state), ``pathlib`` paths (training
    arguments). Each is a plain data constructor; none runs code named by the file. Plain dicts, ``OrderedDict``,
    lists, tuples, sets, numbers, strings and tensors are accepted by torch itself.
    """
    import argparse
    import pathlib

    return [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath,
            pathlib.PureWindowsPath, *_numpy_globals()]


def _allowed_names() -> set[str]:
    names = set()
    for g in allowed_globals():
        names.add(g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}")
    return names


def _globals_in(p: Path) -> list[str]:
    """The non-default globals a (zip) torch file pickles, read from its opcodes; [] when not readable."""
    try:
        return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(p))))
    except Exception:  # legacy (non-zip) files
        return []


def _first_disallowed(p: Path, msg: str) -> str:
    """The first global the unpickler met that is not on the allow-list (nothing of the file is run)."""
    m = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
    if m:
        name = m.group(1)
        return name if "." in name else f"builtins.{name}"  # torch names builtins without their module
    allowed = _allowed_names()
    bad = [n for n in _globals_in(p) if n not in allowed]
    return bad[0] if bad else "an unknown global"


def safe_torch_load(path: str | os.PathLike, *, allow_pickle: bool = False) -> tuple[Any, list[str]]:
    """``torch.load(path, weights_only=True)`` on CPU with :func:`allowed_globals` allowed for this call only.

    A file that pickles anything else is refused with one :class:`CheckpointError` line naming the file, the first
    disallowed global and the opt-in, before any of its objects is built; only ``allow_pickle=True`` (which the
    caller must give explicitly) then reads it with ``weights_only=False`` (which can run code: trusted files only).
    Returns ``(object, notes)``. Also the loader for lastvit's own training checkpoints (resume).
    """
    p = Path(path)
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            with torch.serialization.safe_globals(allowed_globals()):
                obj = torch.load(p, map_location="cpu", weights_only=True)
        used = _globals_in(p)
        if used:
            notes.append(f"read with torch.load(weights_only=True); allow-listed types in the file: {', '.join(used)}")
        return obj, notes
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" not in msg:  # not a pickle of tensors + Python objects: garbage or another file type
            reason = "invalid pickle data"
            for marker in ("Unsupported operand", "invalid load key", "WeightsUnpickler error:"):
                if marker in msg:
                    reason = " ".join(msg.split(marker, 1)[1].split("Check the documentation")[0].split())[:80]
                    reason = f"{marker.rstrip(':')} {reason}".strip()
                    break
            raise CheckpointError(f"{p}: not a PyTorch checkpoint ({reason})") from None
        unsafe = _first_disallowed(p, msg)
        if not allow_pickle:
            raise CheckpointError(f"{p}: refusing to unpickle {unsafe} (not on the allow-list of harmless types; "
                                  "it could run code); pass allow_pickle=True / --allow-pickle only for a file "
                                  "you trust") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, IndexError,
            KeyError, TypeError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint (truncated or corrupted?): "
                              f"{_one_line(e)}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint: {_one_line(e)}") from None
    notes.append(f"read with torch.load(weights_only=False) because allow_pickle=True: the file pickles {unsafe}; "
                 "only load files you trust")
    return obj, notes


def load_raw(path: str | os.PathLike, *, allow_pickle: bool = False) -> tuple[Any, list[str]]:
    """Read a checkpoint file into Python objects (CPU tensors) without interpreting it.

    Order: TorchScript archives via ``torch.jit.load`` (no Python unpickling: TorchScript's own reader, which only
    builds tensors and TorchScript objects); safetensors files; :func:`safe_torch_load` (``weights_only=True`` with
    the allow-list; anything else needs ``allow_pickle=True``). Returns ``(object, notes)``.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(f"{p}: no such checkpoint file")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, not a checkpoint file")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"{p}: empty file, not a checkpoint")
    notes: list[str] = []
    with open(p, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(p):
        raise CheckpointError(f"{p}: truncated or corrupted zip archive (torch.save format): no central directory")
    text = head.lstrip()
    if text[:1] in (b"{", b"[", b"#", b"<") or text[:3] in (b"---", b"ver"):
        try:
            text.decode("utf-8")
            raise CheckpointError(f"{p}: a text file (JSON / YAML / XML?), not a PyTorch checkpoint")
        except UnicodeDecodeError:
            pass
    if _is_torchscript(p):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still the reader
                module = torch.jit.load(str(p), map_location="cpu")
        except Exception as e:  # any TorchScript failure is one clear line
            msg = f"{p}: TorchScript archive that torch.jit.load cannot read ({_one_line(e)})"
            raise CheckpointError(msg) from None
        notes.append("TorchScript archive: read with torch.jit.load on CPU")
        return {k: v.detach().clone() for k, v in module.state_dict().items()}, notes
    if _is_safetensors(p, size):
        try:
            from safetensors.torch import load_file
            return load_file(str(p), device="cpu"), ["safetensors file"]
        except Exception as e:
            raise CheckpointError(f"{p}: unreadable safetensors file ({_one_line(e)})") from None
    return safe_torch_load(p, allow_pickle=allow_pickle)


def first_nonfinite(tensors: dict[str, Any]) -> str | None:
    """The first key (in order) of a floating-point tensor holding NaN or Inf, or None. Attention masks
    (``*attn_mask``, -inf by design in CLIP text towers) are not weights and are not checked."""
    for k, v in tensors.items():
        if k.rsplit(".", 1)[-1] == "attn_mask":
            continue
        floating = isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) and v.numel()
        if floating and not bool(torch.isfinite(v).all()):
            return k
    return None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ---------------------------------------------------------------------------------------------- writing
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the target folder, then ``os.replace`` (nothing half-written)."""
    return atomic_save(obj, path, torch.save, fsync=True)


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` in lastvit's own format, atomically.

    File: ``{"format": "lastvit", "version": 1, "config": model.config(), "model_class": "<module>.<Class>",
    "state_dict": model.state_dict() (CPU tensors), "extra": extra}``. ``model`` must offer ``config()``
    (``LastViT`` and the other lastvit models do); a non-LastViT class is rebuilt on load with
    ``Class.from_config(**config)``.
    """
    if not hasattr(model, "config"):
        raise TypeError(f"save_checkpoint needs a lastvit model with .config(), got {type(model).__name__}")
    cls = type(model)
    obj = {
        "format": "lastvit",
        "version": LASTVIT_FORMAT_VERSION,
        "config": model.config(),
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    return atomic_torch_save(obj, path)
