"""lastvit: the reference implementation of LaSt-ViT (LazyStrike) from "Vision Transformers Need More Than
Registers" (Shi, Yu, Yang; CVPR 2026): the readout, models, training, diagnostics and evaluations.

The public names below are imported on first use (PEP 562), so ``import lastvit`` and ``lastvit --help`` do not pay
for torch and timm until a model, a readout or a checkpoint is asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "AttentionPool": "lastvit.aggregate",
    "ClsToken": "lastvit.aggregate",
    "LazyStrike": "lastvit.aggregate",
    "MaxPool": "lastvit.aggregate",
    "MeanPool": "lastvit.aggregate",
    "build_aggregator": "lastvit.aggregate",
    "LoadOptions": "lastvit.checkpoints",
    "load_checkpoint": "lastvit.checkpoints",
    "read_checkpoint": "lastvit.checkpoints",
    "save_checkpoint": "lastvit.checkpoints",
    "create_model": "lastvit.factory",
    "LastViT": "lastvit.models",
    "TokenRecord": "lastvit.models",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:  # a subpackage (``lastvit.models``, ``lastvit.evaluate`` ...), as an eager import would give
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'lastvit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
