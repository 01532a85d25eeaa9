"""Downstream evaluations of a study's models on the embedded benchmark (docs/RESULTS.md, issue: evaluations).

For every run of a ``lastvit study`` output folder, writes the run's held-out split to disk as a synthetic tree
(the benchmark the run was trained on, ``data.synthetic`` of the config in its ``metrics.json``, with the run's
seed: the images the study evaluated; ``synthetic_demo`` for a run whose file names none, said on the console) and
runs, with the library's own functions (``lastvit.evaluate``), on the first ``--images`` test images:

* object discovery (:func:`lastvit.evaluate.discover`): the LazyStrike rule (top patch's component and largest
  component) and LOST -> CorLoc;
* coarse segmentation (:func:`lastvit.evaluate.evaluate_coarse_seg`): Jaccard and binary (fg/bg) mIoU of the
  patch-score map thresholded by DINO's 60% mass rule;
* text-supervised runs only: zero-shot segmentation (:func:`lastvit.evaluate.evaluate_zeroshot_seg`; vanilla dense
  CLIP features, the training prompts, the 6 shape names, object pixels only: background is ignored as in the
  VOC20 / Context59 protocols) -> mIoU.

Each evaluation writes ``metrics.json`` and ``per_image.csv`` under ``<run>/downstream/<evaluation>/``.
Then prints and writes ``downstream.md`` / ``downstream.json`` (mean ± std over seeds per readout) into the study
folder. Usage::

    .venv/bin/python scripts/downstream_synthetic.py --study runs/study [--images 500] [--untrained]

``--untrained`` adds, for every run, the same evaluations of its network before training (rebuilt from the run's
recipe and seed, :func:`lastvit.paradigms.untrained_model`): the baseline each learned number stands beside.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from lastvit.io import atomic_write, write_csv, write_json

TEMPLATES = ["a {}", "a small {}", "a medium {}", "a large {}"]  # the text recipe's training prompts


def _run_config(run_dir: Path) -> dict[str, Any] | None:
    """The training config a run recorded in its ``metrics.json`` (None when there is none)."""
    path = run_dir / "metrics.json"
    cfg = json.loads(path.read_text()).get("config") if path.is_file() else None
    return cfg if isinstance(cfg, dict) else None


def benchmark_of(run_dir: Path, seed: int) -> dict[str, Any]:
    """The synthetic benchmark a run was trained on: ``config.data.synthetic`` of its ``metrics.json`` (the expanded
    definition, seed included), else the packaged ``synthetic_demo`` with ``seed`` (said on the console)."""
    from lastvit.recipes import load_benchmark

    data = (_run_config(run_dir) or {}).get("data")
    syn = data.get("synthetic") if isinstance(data, dict) else None
    if isinstance(syn, dict):
        return {**syn, "seed": int(syn.get("seed", seed))}
    print(f"{run_dir / 'metrics.json'}: no data.synthetic in the run's config; using the packaged synthetic_demo "
          f"benchmark, seed {seed}", flush=True)
    return {**load_benchmark("synthetic_demo"), "seed": seed}


def _tree(study: Path, bench: dict[str, Any], images: int) -> Path:
    """The held-out split of ``bench`` on disk, written once per benchmark definition under ``study/_trees``."""
    import hashlib

    from lastvit.data import SyntheticConfig, SyntheticDataset, write_imagefolder

    key = hashlib.sha256(json.dumps(bench, sort_keys=True).encode()).hexdigest()[:10]
    root = study / "_trees" / f"seed{bench['seed']}_{key}"
    if not (root / "classes.txt").is_file():
        write_imagefolder(SyntheticDataset(SyntheticConfig(**bench), "test", size=images), root)
    return root


def _samples(ds: Any):
    for i in range(len(ds)):
        s = ds[i]
        if s is not None:  # an unreadable file: skipped (the reader counts it)
            yield s


def _dataset(name: str, tree: Path, model: torch.nn.Module, images: int, **opts: Any):
    from lastvit.data import build_eval_dataset
    from lastvit.data.transforms import default_normalisation

    norm = default_normalisation(model, tree)
    return build_eval_dataset(name, tree, image_size=None, resize=None, mean=norm.mean, std=norm.std,
                              limit=images, **opts)


def _once(out: Path, compute) -> dict:
    """``out/metrics.json`` when it exists (a finished evaluation), else ``compute()`` written there."""
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    metrics, rows = compute()
    write_csv(out / "per_image.csv", rows)
    write_json(out / "metrics.json", metrics)
    return metrics


def _untrained(run_dir: Path) -> torch.nn.Module:
    """The network the run's training started from (its recipe, seed and readout; before the first step)."""
    from lastvit.paradigms import untrained_model

    cfg = _run_config(run_dir)
    if cfg is None:
        raise SystemExit(f"{run_dir / 'metrics.json'}: no training config in the run's metrics.json; --untrained "
                         f"needs it")
    return untrained_model(cfg)


def evaluate_run(run_dir: Path, rec: dict, tree: Path, images: int, untrained: bool = False) -> dict[str, float]:
    """The downstream numbers of one run (``untrained``: of the same network before training), cached per
    evaluation under ``<run>/downstream`` (``downstream_untrained``)."""
    from lastvit import create_model
    from lastvit.evaluate import ZeroShotSegConfig, discover, evaluate_coarse_seg, evaluate_zeroshot_seg

    if untrained:
        model = _untrained(run_dir).eval()
    else:
        ckpt = run_dir / "model.pt"  # every task writes model.pt (text: the whole CLIP; self: the teacher backbone)
        if not ckpt.is_file():
            raise SystemExit(f"{ckpt}: the run's checkpoint is missing")
        model = create_model(checkpoint=str(ckpt)).eval()
    vit = model.visual if hasattr(model, "visual") and not hasattr(model, "forward_tokens") else model
    ev = run_dir / ("downstream_untrained" if untrained else "downstream")
    methods = ["lazystrike", "lazystrike-largest", "lost"]

    def discovery():
        res = discover(vit, _samples(_dataset("synthetic", tree, vit, images, split="test")), methods=methods)
        rows = [{"id": sid, **{f"{m}_hit": int(res[m].hits[i]) for m in methods}}
                for i, sid in enumerate(res[methods[0]].ids)]
        return {"methods": {m: {"corloc": r.corloc, "images": len(r.hits)} for m, r in res.items()}}, rows

    def coarse():
        res = evaluate_coarse_seg(vit, _samples(_dataset("synthetic", tree, vit, images, split="test")))
        return {k: v for k, v in res.items() if k != "per_image"}, res["per_image"]

    d = _once(ev / "discovery", discovery)
    c = _once(ev / "coarse", coarse)
    res = {f"corloc_{m.replace('-', '_')}": v["corloc"] for m, v in d["methods"].items()}
    res["coarse_jaccard"] = c["jaccard"]
    res["coarse_binary_miou"] = c["binary_miou"]
    if rec.get("paradigm") == "text":
        def zeroshot():
            ds = _dataset("seg", tree, model, images, img_dir="test", ann_dir="Segmentation/test", img_suffix=".png",
                          reduce_zero_label=True)
            cfg = ZeroShotSegConfig(classnames=str(tree / "classes.txt"), short_side=None, crop=64, stride=32,
                                    background=False)
            r = evaluate_zeroshot_seg(model, _samples(ds), cfg, templates=TEMPLATES)
            return {k: v for k, v in r.items() if k != "per_image"}, r["per_image"]

        res["zeroshot_miou"] = _once(ev / "zeroshot", zeroshot)["mIoU"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", required=True, type=Path, help="a `lastvit study` output folder")
    ap.add_argument("--images", type=int, default=500, help="test images per seed")
    ap.add_argument("--untrained", action="store_true",
                    help="also evaluate each run's network before training (its recipe, seed and readout): the "
                         "baseline rows '<variant>/<readout> (untrained)'")
    args = ap.parse_args()
    study = json.loads((args.study / "study.json").read_text())
    rows: dict[str, list[dict]] = {}
    for rec in study["runs"]:
        run_dir = args.study / rec["variant"] / f"{rec['readout']}_seed{rec['seed']}"
        tree = _tree(args.study, benchmark_of(run_dir, int(rec["seed"])), args.images)
        for untrained in (False, True) if args.untrained else (False,):
            res = evaluate_run(run_dir, rec, tree, args.images, untrained=untrained)
            tag = " (untrained)" if untrained else ""
            print(f"{rec['readout']}{tag} seed {rec['seed']}: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()),
                  flush=True)
            rows.setdefault(f"{rec['variant']}/{rec['readout']}{tag}", []).append({"seed": rec["seed"], **res})
    summary = {}
    for name, rs in rows.items():
        summary[name] = {k: (statistics.fmean(r[k] for r in rs), statistics.stdev(r[k] for r in rs)
                             if len(rs) > 1 else 0.0) for k in rs[0] if k != "seed"}
    keys = sorted({k for v in summary.values() for k in v})
    lines = ["| run | seeds | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, v in summary.items():
        cells = [f"{v[k][0]:.1f} ± {v[k][1]:.1f}" if k in v else "–" for k in keys]
        lines.append(f"| {name} | {len(rows[name])} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    write_json(args.study / "downstream.json", {"runs": rows, "summary": summary})
    atomic_write(args.study / "downstream.md", f"# Downstream on the synthetic test split ({args.images} images "
                                               f"per seed)\n\n{table}")
    print("\n" + table)


if __name__ == "__main__":
    main()
