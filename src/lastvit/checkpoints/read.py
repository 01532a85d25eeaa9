"""Reading checkpoint files into Python objects, safely: TorchScript, safetensors, and ``torch.load(weights_only=True)``
with an allow-list of harmless types (anything else only with ``allow_pickle=True``)."""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from lastvit.checkpoints.records import CheckpointError, CheckpointNotFoundError

__all__ = ["allowed_globals", "first_nonfinite", "load_raw", "safe_torch_load"]


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
    except Exception as e:  # e.g. torch.load handing a safetensors-looking file to safetensors (SafetensorError)
        if type(e).__name__ != "SafetensorError":
            raise
        raise CheckpointError(f"{p}: unreadable safetensors file ({_one_line(e)})") from None
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
