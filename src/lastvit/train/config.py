"""Training recipes: YAML files with ``task``, ``model``, ``data``, ``optim``, ``trainer`` and ``out_dir``.

``load_config(path, overrides)`` reads a recipe, fills defaults, applies dotted ``key.path=value`` overrides
(values parsed as YAML, so ``trainer.devices=8`` is an int and ``model.aggregator_kwargs={k: 7}`` a dict) and
checks the result. Errors are :class:`ConfigError` (a ``ValueError``) naming the file and the problem.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import sys
from typing import Any

from lastvit.recipes import ConfigError, apply_overrides, load_recipe

__all__ = ["ConfigError", "DEFAULTS", "TRAINER_DEFAULTS", "load_config", "apply_overrides", "resolve_config", "merge",
           "per_device_batch", "task_of"]


TASKS = ("classify", "clip", "dino", "ovdet")

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


#: keys whose dict values replace the default whole instead of being merged key by key (free-form options)
LEAF_KEYS = ("synthetic", "aggregator_kwargs", "local_aggregator_kwargs", "arch", "arch_overrides", "text",
             "vision")


def merge(base: dict[str, Any], new: dict[str, Any], where: str = "", src: str = "config",
          leaf: tuple[str, ...] = LEAF_KEYS) -> dict[str, Any]:
    """``new`` deep-merged onto a copy of ``base``; a key ``base`` does not have is a :class:`ConfigError`.

    The readout's options belong to the readout: when ``new`` sets ``model.aggregator`` to another readout than
    ``base`` and leaves ``model.aggregator_kwargs`` out, the defaults' options (e.g. LazyStrike's K) are dropped.
    """
    if not isinstance(new, dict):
        raise ConfigError(f"{src}: {where.rstrip('.') or 'the recipe'} must be a mapping, got {type(new).__name__}")
    out = copy.deepcopy(base)
    for k, v in new.items():
        if k not in base:
            raise ConfigError(f"{src}: unknown key {where}{k!r}; known: {sorted(base)}")
        if isinstance(base[k], dict) and base[k] and isinstance(v, dict) and k not in leaf:
            out[k] = merge(base[k], v, f"{where}{k}.", src, leaf)
        else:
            out[k] = _typed(base[k], copy.deepcopy(v), f"{where}{k}", src)
    if ("aggregator" in new and "aggregator_kwargs" in base and "aggregator_kwargs" not in new
            and new["aggregator"] != base.get("aggregator")):
        out["aggregator_kwargs"] = {}
    return out


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_FREE_TYPE = ("trainer.resume", "trainer.devices")  # a flag or a path / a count or a list of ids


def _typed(default: Any, value: Any, key: str, src: str) -> Any:
    """``value`` checked against the type of its default: numbers stay numbers (a numeric string such as YAML 1.1's
    ``1e-3`` is read as one), flags stay flags; other defaults (``None``, strings, lists) accept any value."""
    if key in _FREE_TYPE or value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{src}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int | float):
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value) if isinstance(default, float) or not value.strip().lstrip("+-").isdigit() \
                else int(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{src}: {key} must be a number, got {value!r}")
    return value


def _merge(base: dict[str, Any], new: dict[str, Any], where: str, src: str) -> dict[str, Any]:
    return merge(base, new, where, src)


def task_of(raw: dict[str, Any], src: str = "config") -> str:
    """The ``task`` of a raw recipe (``classify`` when absent); an error for an unknown one."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    task = raw.get("task", "classify")
    if task not in available_tasks():
        raise ConfigError(f"{src}: task must be one of {available_tasks()}, got {task!r}")
    return task


def available_tasks() -> list[str]:
    """The tasks ``fit`` can run: every module ``lastvit.train.<task>`` that supplies ``build`` (the built-in
    :data:`TASKS` and those that plug in, e.g. ``ovdet``)."""
    import pkgutil

    extra = [m.name for m in pkgutil.iter_modules([os.path.dirname(os.path.abspath(__file__))])
             if m.name not in (*TASKS, "config", "data", "optim", "runner") and not m.name.startswith("_")]
    return [*TASKS, *sorted(extra)]


#: the ``trainer`` section every task shares
TRAINER_DEFAULTS: dict[str, Any] = DEFAULTS["trainer"]


_NOTED: set[tuple[str, str]] = set()


def deprecated(cfg: dict[str, Any], old: str, new: str, src: str, convert: Any = None) -> None:
    """Move the value of dotted key ``old`` to ``new`` (through ``convert``) with a one-line note on stderr;
    an error when both are set."""
    o_sec, o_key = old.rsplit(".", 1)
    n_sec, n_key = new.rsplit(".", 1)
    osec = cfg.get(o_sec)
    if not isinstance(osec, dict) or o_key not in osec:
        return
    nsec = cfg.setdefault(n_sec, {})
    if n_key in nsec:
        raise ConfigError(f"{src}: both {old} (deprecated) and {new} are set; keep {new}")
    value = osec.pop(o_key)
    nsec[n_key] = convert(value) if convert else value
    if (src, old) not in _NOTED:  # once per recipe and key, however often it is resolved
        _NOTED.add((src, old))
        print(f"lastvit: note: {src}: {old} is deprecated, use {new} (read as {new}={nsec[n_key]!r})",
              file=sys.stderr)


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
    """Fill the task's defaults into a raw recipe dict and check it (``task`` picks ``lastvit.train.<task>``)."""
    task = task_of(raw, src)
    if task != "classify":
        return importlib.import_module(f"lastvit.train.{task}").resolve_config(raw, src)
    return resolve_classify(raw, src)


def resolve_classify(raw: dict[str, Any], src: str = "config") -> dict[str, Any]:
    """The label-supervised recipe: ``raw`` merged onto :data:`DEFAULTS` and checked."""
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
