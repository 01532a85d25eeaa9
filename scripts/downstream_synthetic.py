"""Downstream evaluations of a study's models on the embedded benchmark (docs/RESULTS.md, issue: evaluations).

For every run of a ``lastvit study`` output folder, writes the run's held-out split to disk as a synthetic tree
(the packaged ``synthetic_demo`` benchmark with the run's seed: the images the study evaluated) and runs, with the
library's own functions (``lastvit.evaluate``), on the first ``--images`` test images:

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

    .venv/bin/python scripts/downstream_synthetic.py --study runs/study [--images 500]
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


def _tree(study: Path, seed: int, images: int) -> Path:
    from lastvit.data import SyntheticConfig, SyntheticDataset, write_imagefolder
    from lastvit.recipes import load_benchmark

    root = study / "_trees" / f"seed{seed}"
    if not (root / "classes.txt").is_file():
        write_imagefolder(SyntheticDataset(SyntheticConfig(**load_benchmark("synthetic_demo"), seed=seed), "test",
                                           size=images), root)
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


def evaluate_run(run_dir: Path, rec: dict, tree: Path, images: int) -> dict[str, float]:
    from lastvit import create_model
    from lastvit.evaluate import ZeroShotSegConfig, discover, evaluate_coarse_seg, evaluate_zeroshot_seg

    ckpt = run_dir / "model.pt"  # every task writes model.pt (text: the whole CLIP; self: the teacher backbone)
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt}: the run's checkpoint is missing")
    model = create_model(checkpoint=str(ckpt)).eval()
    vit = model.visual if hasattr(model, "visual") and not hasattr(model, "forward_tokens") else model
    ev = run_dir / "downstream"
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
    args = ap.parse_args()
    study = json.loads((args.study / "study.json").read_text())
    rows: dict[str, list[dict]] = {}
    for rec in study["runs"]:
        run_dir = args.study / rec["variant"] / f"{rec['readout']}_seed{rec['seed']}"
        tree = _tree(args.study, int(rec["seed"]), args.images)
        res = evaluate_run(run_dir, rec, tree, args.images)
        print(f"{rec['readout']} seed {rec['seed']}: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()),
              flush=True)
        rows.setdefault(f"{rec['variant']}/{rec['readout']}", []).append({"seed": rec["seed"], **res})
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
