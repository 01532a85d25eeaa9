"""Training recipes as data: YAML files shipped in the package, loaded by name with dotted overrides.

``load_recipe("label_synthetic", ["model.aggregator=cls"])`` returns the raw recipe dict (the schema of
``lastvit train``, docs/training.md); ``lastvit.train.load_config`` fills the defaults and checks it. A recipe is a
packaged name (``list_recipes()``: the files of ``lastvit/resources/recipes/``) or the path of a YAML file.

Three rules hold for every recipe, packaged or not:

* **Benchmarks by name.** ``data.synthetic: synthetic_demo`` (a string) stands for the benchmark definition
  ``resources/recipes/benchmarks/synthetic_demo.yaml`` (``load_benchmark``), so the demo benchmark is written once.
* **Overrides** are ``key.path=value`` strings whose values are parsed as YAML (``trainer.devices=8`` is an int,
  ``model.aggregator_kwargs={k: 7}`` a dict, ``optim.lr=2e-3`` a float).
* **The readout's options belong to the readout**: an override that changes ``model.aggregator`` also clears
  ``model.aggregator_kwargs`` unless the same override list sets them (``model.aggregator=cls`` turns a LazyStrike
  recipe with ``{k: 0.125}`` into the plain class-token baseline; ``model.aggregator=lazystrike
  model.aggregator_kwargs.k=1`` sets K as well).

A recipe may carry ``variants:`` (name -> dotted overrides, e.g. ``quick``), applied with ``variant=`` before the
caller's overrides and removed from the result.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "RECIPE_DIR", "list_recipes", "load_recipe", "load_benchmark", "list_benchmarks",
           "apply_overrides", "expand_benchmarks"]

RECIPE_DIR = Path(__file__).resolve().parent / "resources" / "recipes"
_BENCHMARK_DIR = RECIPE_DIR / "benchmarks"
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A recipe that cannot be used; the message names the file (or 'config') and the problem."""


def list_recipes() -> list[str]:
    """Names of the packaged recipes (``lastvit train --config NAME``)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def list_benchmarks() -> list[str]:
    """Names of the packaged benchmark definitions (``data.synthetic: NAME``)."""
    return sorted(p.stem for p in _BENCHMARK_DIR.glob("*.yaml"))


def _read_yaml(path: Path, src: str) -> Any:
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{src}: not valid YAML ({e})") from None


def load_benchmark(name: str) -> dict[str, Any]:
    """The ``SyntheticConfig`` keyword arguments of a packaged benchmark (e.g. ``"synthetic_demo"``)."""
    path = _BENCHMARK_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"config: unknown benchmark {name!r}; known: {list_benchmarks()}")
    out = _read_yaml(path, str(path))
    if not isinstance(out, dict):
        raise ConfigError(f"{path}: a benchmark must be a YAML mapping")
    return out


def expand_benchmarks(cfg: dict[str, Any]) -> dict[str, Any]:
    """Replace a benchmark name in ``data.synthetic`` by its definition (in place; returns ``cfg``)."""
    data = cfg.get("data")
    if isinstance(data, dict) and isinstance(data.get("synthetic"), str):
        data["synthetic"] = load_benchmark(data["synthetic"])
    return cfg


def _resolve_path(name_or_path: str | os.PathLike) -> Path:
    s = os.fspath(name_or_path)
    if os.path.isfile(s):
        return Path(s)
    looks_like_path = os.sep in s or "/" in s or s.endswith((".yaml", ".yml"))
    if not looks_like_path and (RECIPE_DIR / f"{s}.yaml").is_file():
        return RECIPE_DIR / f"{s}.yaml"
    if looks_like_path:
        raise FileNotFoundError(f"{s}: no such recipe file")
    raise FileNotFoundError(f"{s}: no such recipe file or packaged recipe; packaged: {', '.join(list_recipes())}")


def _set_dotted(cfg: dict[str, Any], key: str, value: Any, src: str) -> None:
    parts = key.split(".")
    node = cfg
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node, dict):
            raise ConfigError(f"{src}: override {key!r}: {'.'.join(parts[:i])} is not a section")
        node = node.setdefault(p, {})
    if not isinstance(node, dict):
        raise ConfigError(f"{src}: override {key!r}: parent is not a section")
    node[parts[-1]] = value


def _parse(item: str, src: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"{src}: override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"{src}: override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        hint = (" (a value with spaces must be quoted as one shell word: 'key={k: 7}', or write key.k=7)"
                if raw.strip().startswith(("{", "[")) else "")
        raise ConfigError(f"{src}: override {item!r}: value is not valid YAML{hint} ({e})") from None
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads "2e-3" as a string
    return key, value


def _apply(cfg: dict[str, Any], pairs: list[tuple[str, Any]], src: str) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    before = model.get("aggregator")
    for key, value in pairs:
        _set_dotted(cfg, key, copy.deepcopy(value), src)
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    sets_kwargs = any(k == "model.aggregator_kwargs" or k.startswith("model.aggregator_kwargs.") for k, _ in pairs)
    if "aggregator" in model and model["aggregator"] != before and not sets_kwargs:
        model["aggregator_kwargs"] = {}  # the old readout's options (e.g. LazyStrike's K) do not carry over
    return expand_benchmarks(cfg)


def apply_overrides(cfg: dict[str, Any], overrides: list[str] | None, src: str = "overrides") -> dict[str, Any]:
    """Apply ``key.path=value`` strings (values parsed as YAML) to a raw recipe dict; a copy is returned."""
    return _apply(cfg, [_parse(item, src) for item in overrides or []], src)


def load_recipe(name: str | os.PathLike, overrides: list[str] | None = None, *,
                variant: str | None = None) -> dict[str, Any]:
    """The raw recipe ``name`` (a packaged name or a YAML path), benchmark names expanded, the ``variant``'s and
    then ``overrides`` applied. Defaults are not filled in (``lastvit.train.load_config`` does that)."""
    path = _resolve_path(name)
    src = str(name) if path.parent == RECIPE_DIR else str(path)
    raw = _read_yaml(path, src)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    variants = raw.pop("variants", None) or {}
    if not isinstance(variants, dict):
        raise ConfigError(f"{src}: variants must be a mapping of name -> {{key.path: value}}")
    cfg = expand_benchmarks(raw)
    if variant is not None:
        if variant not in variants:
            raise ConfigError(f"{src}: no variant {variant!r}; this recipe has {sorted(variants) or 'none'}")
        cfg = _apply(cfg, list((variants[variant] or {}).items()), src)
    return apply_overrides(cfg, overrides, src)
