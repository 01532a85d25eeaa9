"""Training: label supervision (``classify``), CLIP (``clip``) and DINO (``dino``) on Lightning, through one ``fit``.

``load_config(name_or_path, overrides)`` reads a recipe (a packaged name such as ``"label_synthetic"`` or a YAML
file, :mod:`lastvit.recipes`) and fills the task's defaults; ``fit(cfg)`` trains any task and returns
``{"model", "metrics", "out_dir", "model_path", "step"}``; ``build(cfg)`` dispatches on ``cfg["task"]`` to
``lastvit.train.<task>.build``. See docs/training.md.
"""

from lastvit.train.config import ConfigError, apply_overrides, load_config, per_device_batch, resolve_config
from lastvit.train.optim import lr_factor, param_groups
from lastvit.train.runner import build, fit

__all__ = [
    "ConfigError",
    "apply_overrides",
    "build",
    "fit",
    "load_config",
    "lr_factor",
    "param_groups",
    "per_device_batch",
    "resolve_config",
]
