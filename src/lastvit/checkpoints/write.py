"""lastvit's own checkpoint format, written atomically (temporary file in the target folder, then ``os.replace``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lastvit.io import atomic_save

__all__ = ["LASTVIT_FORMAT_VERSION", "atomic_torch_save", "save_checkpoint"]

LASTVIT_FORMAT_VERSION = 1


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
