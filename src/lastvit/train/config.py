"""Training recipes: YAML files with ``task``, ``model``, ``data``, ``optim``, ``trainer`` and ``out_dir``.

``load_config(path, overrides)`` reads a recipe, fills defaults, applies dotted ``key.path=value`` overrides
(values parsed as YAML, so ``trainer.devices=8`` is an int and ``model.aggregator_kwargs={k: 7}`` a dict) and
checks the result. Errors are :class:`ConfigError` (a ``ValueError``) naming the file and the problem.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from lastvit.recipes import ConfigError, apply_overrides, load_recipe

__all__ = ["ConfigError", "DEFAULTS", "load_config", "apply_overrides", "resolve_config", "per_device_batch"]


TASKS = ("classify", "clip", "dino")

# Defaults of every section; a recipe only states what differs.
DEFAULTS: dict[str, Any] = {
    "task": "classify",
    "out_dir": "runs/train",
    "model": {
        "name": None,
        "aggregator": "lazystrike",
        "aggregator_kwargs": {},
        "num_classes": None,  # None: the data's number of classes
        "drop_path_rate": 0.0,
        "arch": {},  # architecture-key overrides (lastvit.models.ARCH_DEFAULTS)
    },
    "data": {
        "kind": "synthetic",  # synthetic | imagefolder
        "global_batch": 64,
        "num_workers": 0,
        "flip": True,
        "synthetic": {},  # SyntheticConfig keyword arguments
        "train_size": 2048,
        "val_size": 512,
        "data_seed": 0,
        "root": None,  # imagefolder: <root>/train/<wnid>/*.JPEG, <root>/val/<wnid>/*.JPEG
        "img_size": 224,
        "resize": 256,
        "val_batch": None,  # per-device eval batch (default: the per-device train batch)
        "cache": True,  # synthetic: generate once into memory
    },
    "optim": {
        "lr": 1e-3,
        "weight_decay": 0.3,
        "betas": [0.9, 0.95],
        "eps": 1e-8,
        "warmup_frac": 0.01,
        "warmup_factor": 0.1,
        "min_lr_factor": 0.001,
        "label_smoothing": 0.0,
        "grad_clip": None,
    },
    "trainer": {
        "accelerator": "auto",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "precision": "32-true",
        "max_steps": -1,
        "max_epochs": None,
        "accumulate": 1,
        "log_every": 10,
        "val_every": None,  # steps between validations; None: once per epoch
        "seed": 0,
        "ckpt_every": 500,  # steps between full-state checkpoints (checkpoints/last.ckpt)
        "resume": False,  # False | "auto" | True | path to a .ckpt
        "progress_bar": True,
        "model_summary": False,
        "deterministic": False,
    },
}


def _merge(base: dict[str, Any], new: dict[str, Any], where: str, src: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in new.items():
        if k not in base:
            raise ConfigError(f"{src}: unknown key {where}{k!r}; known: {sorted(base)}")
        if isinstance(base[k], dict) and base[k] and isinstance(v, dict) and k not in ("synthetic",):
            out[k] = _merge(base[k], v, f"{where}{k}.", src)
        else:
            out[k] = copy.deepcopy(v)
    return out


def per_device_batch(cfg: dict[str, Any], src: str = "config") -> int:
    """``data.global_batch / (devices * num_nodes * accumulate)``; an error when it does not divide."""
    t = cfg["trainer"]
    devices = t["devices"]
    if isinstance(devices, list | tuple):  # explicit device ids
        devices = len(devices)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ConfigError(f"{src}: trainer.devices must be a positive number of devices per node (or a list of "
                          f"ids), got {t['devices']!r}; the per-device batch is derived from it")
    world = devices * int(t["num_nodes"]) * int(t["accumulate"])
    g = int(cfg["data"]["global_batch"])
    if g <= 0 or world <= 0 or g % world:
        raise ConfigError(f"{src}: data.global_batch={g} is not divisible by devices*num_nodes*accumulate "
                          f"= {devices}*{t['num_nodes']}*{t['accumulate']} = {world}")
    return g // world


def resolve_config(raw: dict[str, Any], src: str = "config") -> dict[str, Any]:
    """Fill defaults into a raw recipe dict and check it. Sections of other tasks pass through unchanged."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    task = raw.get("task", "classify")
    if task not in TASKS:
        raise ConfigError(f"{src}: task must be one of {list(TASKS)}, got {task!r}")
    if task != "classify":
        # clip / dino own their schema; only the shared trainer section gets defaults here.
        cfg = copy.deepcopy(raw)
        cfg["trainer"] = _merge(DEFAULTS["trainer"], raw.get("trainer") or {}, "trainer.", src)
        cfg.setdefault("out_dir", DEFAULTS["out_dir"])
        return cfg
    cfg = _merge(DEFAULTS, raw, "", src)
    t, d, o = cfg["trainer"], cfg["data"], cfg["optim"]
    if d["kind"] not in ("synthetic", "imagefolder"):
        raise ConfigError(f"{src}: data.kind must be 'synthetic' or 'imagefolder', got {d['kind']!r}")
    if d["kind"] == "imagefolder" and not d["root"]:
        raise ConfigError(f"{src}: data.kind=imagefolder needs data.root")
    if (t["max_steps"] is None or t["max_steps"] < 0) and not t["max_epochs"]:
        raise ConfigError(f"{src}: set trainer.max_steps or trainer.max_epochs")
    if not 0 <= o["warmup_frac"] < 1:
        raise ConfigError(f"{src}: optim.warmup_frac must be in [0, 1), got {o['warmup_frac']}")
    if len(o["betas"]) != 2:
        raise ConfigError(f"{src}: optim.betas must have two values, got {o['betas']}")
    if cfg["model"]["name"] is None and not cfg["model"]["arch"]:
        raise ConfigError(f"{src}: set model.name (a preset or timm ViT name) or model.arch")
    per_device_batch(cfg, src)
    return cfg


def load_config(path: str | os.PathLike, overrides: list[str] | None = None, *,
                variant: str | None = None) -> dict[str, Any]:
    """Read a recipe (a packaged name such as ``"label_synthetic"`` or a YAML path), apply dotted overrides, fill
    defaults and check it (:func:`lastvit.recipes.load_recipe`)."""
    raw = load_recipe(path, overrides, variant=variant)
    p = os.fspath(path)
    return resolve_config(raw, src=p if os.path.isfile(p) else str(p))
