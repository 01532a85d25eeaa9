"""Atomic file writes: every file lastvit writes goes through a temporary file in the target folder and a rename.

The one output toolkit of the package: :func:`atomic_write` (text / bytes), :func:`atomic_save` (any ``save_fn``),
:func:`write_json` (strict JSON: a NaN / Inf becomes ``null`` with its reason recorded beside it, never a bare
``NaN``) and :func:`write_csv`.

The temporary file is ``.<name>.<random>.tmp`` next to the target (``tempfile.mkstemp``), so ``os.replace`` is an
atomic rename on the same file system: readers see the old file or the new one, never a half-written one. On any
exception (``KeyboardInterrupt`` included) the temporary file is removed and the exception re-raised. The final
file gets the permissions a plain ``open(path, "w")`` would give it (``0o666`` less the umask), not ``mkstemp``'s
``0o600``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io as _io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["NULL_REASON", "atomic_save", "atomic_write", "to_json", "write_csv", "write_json"]


@functools.cache
def _umask() -> int:
    try:  # Linux >= 4.7: read it without changing it (os.umask is process-wide, not thread-safe to swap)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_via_temp(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], fsync: bool) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write(path: str | os.PathLike, data: str | bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically and return the path (as a ``Path``); parent folders are created.

    ``str`` is written as UTF-8 exactly as given (no newline translation); ``bytes`` as they are. ``fsync``: flush
    the data to disk before the rename.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return _write_via_temp(path, lambda f: f.write(raw), fsync)


def atomic_save(obj: Any, path: str | os.PathLike, save_fn: Callable[[Any, IO[bytes]], Any] | None = None, *,
                fsync: bool = False) -> Path:
    """Write ``obj`` to ``path`` atomically with ``save_fn(obj, f)`` and return the path; parent folders are created.

    ``f`` is the temporary file opened in binary mode, so ``save_fn`` must accept a file object (``torch.save``, the
    default, does; for a matplotlib figure pass ``lambda fig, f: fig.savefig(f, format="png")``).
    ``fsync``: flush the data to disk before the rename.
    """
    if save_fn is None:
        import torch

        save_fn = torch.save
    return _write_via_temp(path, lambda f: save_fn(obj, f), fsync)


# ---------------------------------------------------------------------------------------------- JSON and CSV
#: suffix of the sibling key that records why a value was written as ``null``
NULL_REASON = "_null_reason"


def _nonfinite(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _plain(x: Any) -> Any:
    """Tensors, numpy values, paths, sets and dataclasses as JSON types (floats may still be non-finite)."""
    if isinstance(x, (str, bool, int, float)) or x is None:
        return x
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
    tolist = getattr(x, "tolist", None)  # torch.Tensor, numpy arrays and numpy scalars
    if callable(tolist):
        return tolist()
    item = getattr(x, "item", None)
    if callable(item):
        return item()
    if isinstance(x, (set, frozenset)):
        return sorted(x, key=str)
    if isinstance(x, Mapping):
        return dict(x)
    if isinstance(x, (list, tuple)):
        return list(x)
    return str(x)


def _strict(x: Any) -> tuple[Any, str | None]:
    """(``x`` with every non-finite float replaced by ``None``, a reason when ``x`` itself or a list inside it lost
    a value); a dict gets a ``<key>_null_reason`` sibling for each of its keys that lost one."""
    x = _plain(x)
    if isinstance(x, float):
        return (None, _nonfinite(x)) if not math.isfinite(x) else (x, None)
    if isinstance(x, dict):
        out: dict[str, Any] = {}
        given = {str(k) for k in x}
        for k, v in x.items():
            v, why = _strict(v)
            out[str(k)] = v
            if why is not None and str(k) + NULL_REASON not in given:  # a reason the caller wrote is kept
                out[str(k) + NULL_REASON] = why
        return out, None
    if isinstance(x, list):
        items, lost = [], []
        for v in x:
            v, why = _strict(v)
            items.append(v)
            if why is not None:
                lost.append(why)
        if not lost:
            return items, None
        kinds = ", ".join(f"{k} x{lost.count(k)}" for k in sorted(set(lost)))
        return items, f"{len(lost)} of {len(items)} entries not finite ({kinds}), written as null"
    return x, None


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    """``obj`` as STRICT JSON text (RFC 8259: no ``NaN`` / ``Infinity``), ending in a newline.

    A non-finite float becomes ``null`` and the dict holding it gets a sibling ``"<key>_null_reason"`` (``"nan"``,
    ``"inf"``, ``"-inf"``, or for a list ``"2 of 5 entries not finite (nan x2), written as null"``) unless the
    caller already wrote that sibling with a better reason. Tensors and numpy values become numbers or lists,
    paths strings, dataclasses dicts; anything else its ``str``. A top-level non-finite float is refused.
    """
    clean, why = _strict(obj)
    if why is not None and not isinstance(clean, list):
        raise ValueError(f"to_json: a bare non-finite number ({why}) has no key to record its reason under")
    return json.dumps(clean, indent=indent, allow_nan=False, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` to ``path`` atomically as strict JSON (see :func:`to_json`) and return the path."""
    return atomic_write(path, to_json(obj, indent=indent))


def _cell(v: Any) -> Any:
    v = _plain(v)
    if isinstance(v, float) and not math.isfinite(v):
        return ""  # an empty cell: missing, never the string "nan" that some readers take for a number
    if isinstance(v, (list, dict)):
        return json.dumps(_strict(v)[0], allow_nan=False)
    return v


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
              fields: Sequence[str] | None = None) -> Path:
    """Write ``rows`` (dicts) to ``path`` atomically as CSV and return the path.

    Columns: ``fields``, else every key in order of first appearance; a row lacking a column gets an empty cell,
    keys outside ``fields`` are left out. Non-finite floats are empty cells, lists / dicts JSON text. No rows and
    no ``fields``: an empty file.
    """
    rows = list(rows)
    if fields is None:
        names: list[str] = []
        for r in rows:
            names.extend(str(k) for k in r if str(k) not in names)
    else:
        names = [str(f) for f in fields]
    buf = _io.StringIO(newline="")
    if names:
        w = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({str(k): _cell(v) for k, v in r.items()})
    return atomic_write(path, buf.getvalue())
