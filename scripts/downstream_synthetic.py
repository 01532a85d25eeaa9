"""Downstream evaluations of a study's models on the embedded benchmark (docs/RESULTS.md, issue: evaluations).

For every run of a ``lastvit study`` output folder, writes the run's held-out split to disk as a synthetic tree
(``lastvit data synth --demo --seed S``: the images the study evaluated) and runs, through the ``lastvit evaluate``
commands, on the first ``--images`` test images:

* object discovery: the LazyStrike rule (top patch's component and largest component) and LOST -> CorLoc;
* coarse segmentation: Jaccard and binary (fg/bg) mIoU of the patch-score map thresholded by DINO's 60% mass rule;
* text-supervised runs only: zero-shot segmentation (vanilla dense CLIP features, the training prompts, the 6 shape
  names, object pixels only: background is ignored as in the VOC20 / Context59 protocols) -> mIoU.

Then prints and writes ``downstream.md`` / ``downstream.json`` (mean ± std over seeds per readout) into the study
folder. Usage::

    .venv/bin/python scripts/downstream_synthetic.py --study runs/study [--images 500]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from lastvit.cli import main as cli
from lastvit.io import atomic_write

CHECKPOINT = {"label": "model.pt", "text": "clip.pt", "self": "teacher.pth"}


def _tree(study: Path, seed: int, images: int) -> Path:
    root = study / "_trees" / f"seed{seed}"
    if not (root / "metrics.json").is_file():
        assert cli(["data", "synth", "--demo", "--seed", str(seed), "--splits", "test", "--size", str(images),
                    "--out", str(root)]) == 0
    return root


def _run(argv: list[str], out: Path) -> dict:
    if not (out / "metrics.json").is_file():
        rc = cli([*argv, "--out", str(out), "--no-progress"])
        if rc != 0:
            raise SystemExit(f"lastvit {' '.join(argv)} failed ({rc})")
    return json.loads((out / "metrics.json").read_text())


def evaluate_run(run_dir: Path, rec: dict, tree: Path, images: int) -> dict[str, float]:
    ckpt = run_dir / CHECKPOINT[rec.get("paradigm", "label")]
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt}: the run's checkpoint is missing")
    common = ["--checkpoint", str(ckpt), "--root", str(tree), "--limit", str(images)]
    ev = run_dir / "downstream"
    d = _run(["evaluate", "discovery", *common, "--dataset", "synthetic", "--split", "test",
              "--methods", "lazystrike,lazystrike-largest,lost"], ev / "discovery")
    c = _run(["evaluate", "coarse-seg", *common, "--dataset", "synthetic", "--split", "test"], ev / "coarse")
    res = {f"corloc_{m.replace('-', '_')}": v["corloc"] for m, v in d["methods"].items()}
    res["coarse_jaccard"] = c["jaccard"]
    res["coarse_binary_miou"] = c["binary_miou"]
    if rec.get("paradigm") == "text":
        tpl = ev / "templates.txt"
        ev.mkdir(parents=True, exist_ok=True)
        tpl.write_text("a {}\na small {}\na medium {}\na large {}\n")
        z = _run(["evaluate", "zeroshot-seg", *common, "--dataset", "seg", "--img-dir", "test", "--ann-dir",
                  "Segmentation/test", "--img-suffix", ".png", "--classnames", str(tree / "classes.txt"),
                  "--reduce-zero-label", "--no-background", "--templates", str(tpl), "--short-side", "0",
                  "--crop", "64", "--stride", "32"], ev / "zeroshot")
        res["zeroshot_miou"] = z["mIoU"]
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
    atomic_write(args.study / "downstream.json", json.dumps({"runs": rows, "summary": summary}, indent=2))
    atomic_write(args.study / "downstream.md", f"# Downstream on the synthetic test split ({args.images} images "
                                               f"per seed)\n\n{table}")
    print("\n" + table)


if __name__ == "__main__":
    main()
