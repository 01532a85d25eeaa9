#!/usr/bin/env python
"""A DINO probe run with a learning curve: kNN and linear-probe top-1 of the teacher every N steps.

The first row (step 0) is the untrained network: the same seed, the same build and the same readout as the run,
before its first update, probed exactly as the later rows (DINO's weighted kNN, k 20, T 0.07, and the
logistic-regression linear probe of :func:`lastvit.train.dino.evaluate_backbone`, on the recipe's training bank
``data.train_size`` and its validation split ``data.val_size``). Training is DINO's step
(:meth:`lastvit.train.dino.DINOModule.train_step`) in a plain loop, without a Lightning Trainer, on the batches the
recipe's data module would draw (one cached render, :class:`BatchMultiCrop` seeded per batch). Bounded by
``--max-minutes`` (training stops, then the final row is probed) and ``--max-steps``.

    OMP_NUM_THREADS=1 python scripts/dino_probe.py --config self_synthetic_ssl --out runs/probe --every 100 \\
        --max-minutes 8 [key.path=value ...]

Writes ``OUT/curve.jsonl`` (one row per probe: step, epoch, seconds, loss, knn_top1, linear_top1) and
``OUT/summary.json`` (``untrained`` and ``trained`` rows, their differences, the resolved recipe, wall time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch


def _probe(module: Any, loaders: tuple[Any, Any], cfg: dict[str, Any], device: torch.device) -> dict[str, float]:
    from lastvit.train.dino import evaluate_backbone

    backbone = module.teacher_backbone
    was = backbone.training
    backbone.eval()
    with torch.no_grad():
        r = evaluate_backbone(backbone, loaders[0], loaders[1], cfg, device=device)
    backbone.train(was)
    return {"knn_top1": float(r["knn_top1"]), "linear_top1": float(r.get("linear_top1", float("nan")))}


def run_probe(cfg: dict[str, Any], out: str | Path, *, every: int = 100, max_minutes: float = 8.0,
              max_steps: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Train ``cfg`` (a raw DINO recipe dict) with a probe every ``every`` steps; returns the summary."""
    import lightning as L

    from lastvit.io import write_json
    from lastvit.train.dino import _CachedCropBatches, build, resolve_config

    cfg = resolve_config(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    seed = int(cfg["trainer"]["seed"])
    L.seed_everything(seed, workers=True, verbose=False)  # as lastvit.train.fit: same init as its runs
    module, dm = build(cfg)
    dm.setup()
    module.to(dev)
    bs = int(cfg["data"]["global_batch"])
    n = len(dm._train)
    ipe = n // bs
    if ipe < 1:
        raise ValueError(f"dino_probe: data.train_size ({n}) is smaller than one batch ({bs})")
    epochs = int(cfg["trainer"]["max_epochs"])
    total = epochs * ipe if max_steps <= 0 else min(epochs * ipe, int(max_steps))
    opt = module.configure_optimizers()
    module.make_schedules(ipe)
    view = _CachedCropBatches(dm._images, dm._labels, dm._boxes, dm.augment(), seed)
    loaders = dm.eval_loaders()
    loaders = ([(x.to(dev), y) for x, y in loaders[0]], [(x.to(dev), y) for x, y in loaders[1]])

    curve_path = out / "curve.jsonl"
    curve_path.write_text("")
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    train_s = 0.0

    def record(step: int, epoch: int, loss: float | None) -> None:
        tp = time.perf_counter()
        row = {"step": step, "epoch": epoch, "train_seconds": round(train_s, 1), "loss": loss,
               **_probe(module, loaders, cfg, dev)}
        row["probe_seconds"] = round(time.perf_counter() - tp, 1)
        rows.append(row)
        with open(curve_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[probe] step {step:5d}  loss {'-' if loss is None else f'{loss:.3f}'}  kNN {row['knn_top1']:.1f}  "
              f"linear {row['linear_top1']:.1f}  ({train_s:.0f} s training)", flush=True)

    record(0, 0, None)  # the untrained network: same seed, same readout, same probes
    module.train()
    it, losses, stopped = 0, [], "steps"
    budget = 60.0 * float(max_minutes)
    while it < total:
        epoch = it // ipe
        g = torch.Generator()
        g.manual_seed(seed * 7_919 + epoch)
        perm = torch.randperm(n, generator=g)
        for b in range(it % ipe, ipe):
            if it >= total:
                break
            if train_s >= budget:
                stopped = "time"
                break
            ts = time.perf_counter()
            batch = view[(perm[b * bs:(b + 1) * bs].tolist(), epoch)]
            logs = module.train_step([c.to(dev, non_blocking=True) for c in batch["crops"]], epoch, it, opt)
            losses.append(logs["loss"])
            it += 1
            train_s += time.perf_counter() - ts
            if it % every == 0 and it < total:
                record(it, epoch, sum(losses[-every:]) / len(losses[-every:]))
        if stopped == "time":
            break
    if rows[-1]["step"] != it:
        k = min(every, len(losses)) or 1
        record(it, it // ipe, sum(losses[-k:]) / k if losses else None)
    first, last = rows[0], rows[-1]
    best = max(rows[1:] or rows, key=lambda r: r["knn_top1"])
    summary = {
        "untrained": {k: first[k] for k in ("knn_top1", "linear_top1")},
        "trained": {k: last[k] for k in ("knn_top1", "linear_top1")},
        "gain": {k: last[k] - first[k] for k in ("knn_top1", "linear_top1")},
        "best_knn_row": best, "steps": it, "planned_steps": total, "stopped_by": stopped,
        "iters_per_epoch": ipe, "train_seconds": round(train_s, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
        "device": str(dev), "recipe": cfg,
    }
    write_json(out / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="self_synthetic_ssl", help="packaged DINO recipe name or YAML path")
    ap.add_argument("--out", required=True)
    ap.add_argument("--every", type=int, default=100, help="probe every N steps (and at step 0 and the end)")
    ap.add_argument("--max-minutes", type=float, default=8.0, help="training-time budget (probes not counted)")
    ap.add_argument("--max-steps", type=int, default=0, help="> 0: stop after this many steps")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    ap.add_argument("overrides", nargs="*", help="key.path=value recipe overrides")
    a = ap.parse_args(argv)
    if a.every < 1:
        ap.error("--every must be >= 1")
    torch.set_num_threads(a.threads)
    from lastvit.recipes import load_recipe

    cfg = load_recipe(a.config, a.overrides)
    s = run_probe(cfg, a.out, every=a.every, max_minutes=a.max_minutes, max_steps=a.max_steps, device=a.device)
    print(json.dumps({k: s[k] for k in ("untrained", "trained", "gain", "steps", "train_seconds",
                                        "wall_seconds", "stopped_by")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
