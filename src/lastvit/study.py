"""``lastvit study``: the miniature study — readouts x seeds on the synthetic benchmark, mean +- std.

A study config (YAML) names the paradigm, the readouts, the seeds and recipe overrides (the demo's recipe of that
paradigm is the base, :mod:`lastvit.paradigms`)::

    name: synthetic_main
    paradigm: label          # label | text | self | ovdet
    recipe: label_synthetic  # optional: another packaged recipe of the paradigm's task (default: the paradigm's)
    seeds: [0, 1, 2]
    readouts: {cls: {}, lazystrike: {}}   # {}: the recipe's own options (LazyStrike's K); or e.g. {k: 1}
    overrides: {trainer.max_steps: 2000}
    test_images: 1000
    variants:                # optional: extra runs that vary one knob (object size, clutter, depth, K ...)
      small_objects: {data.synthetic.max_size: 0.3}

It writes ``study.json`` (every run) and ``study.md`` (the table) into ``out``.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from lastvit.io import write_json
from lastvit.report import write_atomic

__all__ = ["load_study", "run_ovdet_study", "run_study", "summarise", "summarise_ovdet"]

_KEYS = ("accuracy", "pib", "pib_center", "score_auroc", "norm_block_max", "norm_block_median")
#: self-supervised extras, each beside the same network untrained (summarised when every run of a group has them)
_SELF_KEYS = ("knn_top1", "knn_top1_untrained", "linear_top1", "linear_top1_untrained", "pib_untrained",
              "pib_center_untrained", "score_auroc_untrained")


def load_study(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"study config {p} does not exist")
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"study config {p} is not valid YAML: {e}") from None
    if not isinstance(cfg, dict) or "seeds" not in cfg or "readouts" not in cfg:
        raise ValueError(f"study config {p} must be a mapping with 'seeds' and 'readouts'")
    return cfg


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)  # strict JSON keeps a NaN as null


def _mean_std(vals: list[float]) -> tuple[float, float]:
    if any(math.isnan(v) for v in vals):
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (variant, readout)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["variant"], r["readout"]), []).append(r)
    rows = []
    for (variant, readout), rs in groups.items():
        row = {"variant": variant, "readout": readout, "seeds": len(rs)}
        for k in _KEYS:
            row[k] = _mean_std([_num(r["metrics"][k]) for r in rs])
        row["outlier_fraction"] = _mean_std([_num(r["metrics"]["outliers_last_block"]["outlier_fraction"])
                                             for r in rs])
        for k in _SELF_KEYS:
            if all(k in r["metrics"] for r in rs):
                row[k] = _mean_std([_num(r["metrics"][k]) for r in rs])
        rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    pct = lambda ms: f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}"
    lines = ["| variant | readout | seeds | accuracy (%) | PiB any (%) | PiB centre (%) | AUROC fg>bg | "
             "last-block max norm | high-norm outliers (%) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['readout']} | {r['seeds']} | {pct(r['accuracy'])} | {pct(r['pib'])} | "
                     f"{pct(r['pib_center'])} | {r['score_auroc'][0]:.3f} ± {r['score_auroc'][1]:.3f} | "
                     f"{r['norm_block_max'][0]:.1f} ± {r['norm_block_max'][1]:.1f} | {pct(r['outlier_fraction'])} |")
    selfs = [r for r in rows if all(k in r for k in _SELF_KEYS)]
    if selfs:  # every self-supervised number beside the same network untrained (same seed and readout)
        lines += ["", "| variant | readout | kNN (%) | kNN untrained (%) | linear (%) | linear untrained (%) | "
                  "PiB any (%) | PiB untrained (%) | AUROC | AUROC untrained |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in selfs:
            lines.append(f"| {r['variant']} | {r['readout']} | {pct(r['knn_top1'])} | {pct(r['knn_top1_untrained'])} | "
                         f"{pct(r['linear_top1'])} | {pct(r['linear_top1_untrained'])} | {pct(r['pib'])} | "
                         f"{pct(r['pib_untrained'])} | {r['score_auroc'][0]:.3f} ± {r['score_auroc'][1]:.3f} | "
                         f"{r['score_auroc_untrained'][0]:.3f} ± {r['score_auroc_untrained'][1]:.3f} |")
    return "\n".join(lines) + "\n"


def run_study(cfg: dict[str, Any], out: str | Path, *, verbose: bool = True) -> dict[str, Any]:
    """Train and evaluate every (variant, readout, seed); resumable: finished runs in ``out`` are reused."""
    from lastvit.paradigms import ACCURACY_NAMES, PARADIGMS, run_one

    paradigm = cfg.get("paradigm", "label")
    if paradigm == "ovdet":
        return run_ovdet_study(cfg, out, verbose=verbose)
    if paradigm not in PARADIGMS:
        raise ValueError(f"study config: paradigm must be one of {', '.join(PARADIGMS)} or ovdet, got {paradigm!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    variants = {"main": {}, **(cfg.get("variants") or {})}
    n_test = int(cfg.get("test_images", 1000))
    runs = []
    for vname, vover in variants.items():
        for readout, kw in cfg["readouts"].items():
            for seed in cfg["seeds"]:
                run_dir = out / vname / f"{readout}_seed{seed}"
                done = run_dir / "run.json"
                if done.is_file():
                    runs.append(json.loads(done.read_text()))
                    continue
                # a run killed mid-way continues from its last full-state checkpoint (label and DINO runs)
                over = {"trainer.resume": "auto", **(cfg.get("overrides") or {}), **vover,
                        "trainer.progress_bar": False}
                agg = readout.split("@")[0]  # "lazystrike@k7" style names allow several settings per readout
                t = time.time()
                r = run_one(paradigm, agg, out=run_dir, seed=seed, overrides=over, readout_kwargs=dict(kw) or None,
                            test_images=n_test, verbose=False, recipe=cfg.get("recipe"))
                rec = {"variant": vname, "readout": readout, "seed": seed, "paradigm": paradigm,
                       "metrics": r["metrics"], "overrides": over, "seconds": round(time.time() - t, 1)}
                write_json(done, rec)
                runs.append(rec)
                if verbose:
                    print(f"[study] {vname} {readout} seed {seed}: acc {100 * r['metrics']['accuracy']:.1f}% "
                          f"PiB {100 * r['metrics']['pib']:.1f}% ({rec['seconds']:.0f} s)", flush=True)
    rows = summarise(runs)
    table = _table(rows)
    _write(out, cfg, {"runs": runs, "summary": rows}, table, verbose,
           f"{paradigm}; accuracy is the {ACCURACY_NAMES[paradigm]} on the held-out split")
    return {"runs": runs, "summary": rows, "table": table}


def _write(out: Path, cfg: dict[str, Any], result: dict[str, Any], table: str, verbose: bool, what: str) -> None:
    """``study.json`` (the config and every run) and ``study.md`` (the table), atomically."""
    write_json(out / "study.json", {"config": cfg, **result})
    write_atomic(out / "study.md", f"# Study {cfg.get('name', '')}\n\nParadigm: {what}.\n\n{table}")
    if verbose:
        print("\n" + table)


#: the open-vocabulary numbers of each seed (lastvit.ovdet_miniature), summarised per readout
OVDET_KEYS = ("novel_ap50", "base_ap50", "all_ap50", "novel_mask_ap", "novel_rpn_recall", "oracle_box_accuracy")


def summarise_ovdet(seeds: dict[int, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per readout of :data:`OVDET_KEYS` (``seeds``: seed -> readout -> metrics)."""
    readouts = sorted({r for per in seeds.values() for r in per})
    return [{"readout": r, "seeds": sum(r in per for per in seeds.values()),
             **{k: _mean_std([_num(per[r].get(k)) for per in seeds.values() if r in per]) for k in OVDET_KEYS}}
            for r in readouts]


def run_ovdet_study(cfg: dict[str, Any], out: str | Path, *, verbose: bool = True) -> dict[str, Any]:
    """Paper Table 5 in miniature over seeds (``paradigm: ovdet``): :func:`lastvit.ovdet_miniature.run_ovdet_miniature`
    per seed into ``out/seed<S>`` (the novel pair rotates with the seed), CLIPs and data cached in ``out/cache``;
    resumable (a seed whose ``metrics.json`` exists is reused). Options: ``quick``, ``workers``, ``threads``."""
    from lastvit.ovdet_miniature import run_ovdet_miniature

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in cfg["seeds"]:
        done = out / f"seed{seed}" / "metrics.json"
        if not done.is_file():
            run_ovdet_miniature(out / f"seed{seed}", int(seed), quick=bool(cfg.get("quick", False)),
                                cache=out / "cache", workers=int(cfg.get("workers", 2)),
                                threads=int(cfg.get("threads", 1)), verbose=verbose)
        seeds[int(seed)] = json.loads(done.read_text())["readouts"]
    rows = summarise_ovdet(seeds)
    pct = lambda ms: f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}"
    lines = ["| readout | seeds | " + " | ".join(f"{k} (%)" for k in OVDET_KEYS) + " |",
             "|---|---|" + "---|" * len(OVDET_KEYS)]
    lines += [f"| {r['readout']} | {r['seeds']} | " + " | ".join(pct(r[k]) for k in OVDET_KEYS) + " |" for r in rows]
    table = "\n".join(lines) + "\n"
    _write(out, cfg, {"seeds": seeds, "summary": rows}, table, verbose,
           "ovdet (F-ViT on the frozen text-supervised CLIPs; novel classes unannotated in training)")
    return {"seeds": seeds, "summary": rows, "table": table}
