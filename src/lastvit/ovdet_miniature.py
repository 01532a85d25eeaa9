"""The CPU miniature of paper Table 5: F-ViT on the demo's tiny text-supervised CLIPs, CLS vs LazyStrike readout.

Per seed:

1. the two frozen CLIPs: the text paradigm's recipe (:func:`lastvit.paradigms.paradigm_recipe` ``("text", readout)``:
   micro ViT, captions over all 6 shapes -- like a web CLIP that has seen the novel names), trained once and cached
   in ``<cache>/clip_<readout>_s<seed>/model.pt``;
2. the OV set (:func:`lastvit.detection.synthetic.write_ovdet_synthetic`): the demo's 6 textured shapes with
   ``multi_object=2`` (1-3 disjoint objects per image, instance masks), 4 base / 2 novel classes -- the novel pair
   rotates with the seed over :data:`NOVEL_FOLDS` -- novel objects unannotated in training;
3. F-ViT scaled down (:data:`MINI_DETECTOR`: taps after the 4 blocks, fvit last block, pyramid strides 2/4/8/16 (+32),
   32-channel FPN, Mask R-CNN with a class-agnostic mask head), trained through :func:`lastvit.train.fit`
   (``task: ovdet``) with only flips as augmentation; class texts from the text recipe's own zero-shot templates;
4. :func:`lastvit.detection.evaluate.evaluate_ovdet` on the held-out set: ``<out>/<readout>/metrics.json`` with
   ``novel_ap50``, ``base_ap50``, ``novel_mask_ap``, ``novel_rpn_recall``, ``oracle_box_accuracy`` (+ the rest),
   ``<out>/metrics.json`` with both readouts, and ``<out>/detections.png``.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from lastvit.io import atomic_write

__all__ = ["NOVEL_FOLDS", "MINI_DETECTOR", "MINI_RECIPE", "QUICK", "run_ovdet_miniature", "miniature_clip"]

#: novel pair per seed (seed % 3); the other 4 of the 6 shapes are base
NOVEL_FOLDS = (("ring", "star"), ("triangle", "cross"), ("disk", "square"))

MINI_DETECTOR: dict[str, Any] = {
    "taps": [0, 1, 2, 3], "last_block": "fvit", "fpn_dim": 32, "norm": "gn", "anchor_scale": 4.0,
    "rpn_pre_nms_train": 300, "rpn_post_nms_train": 100, "rpn_pre_nms_test": 300, "rpn_post_nms_test": 100,
    "rpn_batch": 64, "roi_size": 7, "finest_scale": 28.0, "roi_convs": 2, "roi_fcs": 1, "roi_conv_dim": 32,
    "roi_fc_dim": 128, "roi_batch": 32, "bg_weight": 0.6, "ensemble": "fvit", "alpha": 0.1, "beta": 0.8,
    "vlm_temperature": 75.0, "score_thresh": 0.01, "nms_thresh": 0.4, "detections_per_img": 100, "masks": True,
    "mask_roi_size": 7, "mask_convs": 1,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],  # the synthetic benchmark's normalisation
}

#: the data and schedule of the miniature
MINI_RECIPE: dict[str, Any] = {"train_images": 2000, "test_images": 500, "steps": 600, "batch": 16, "lr": 1.0e-3,
                               "warmup": 50}
#: the smoke-test sizes (``quick=True``)
QUICK: dict[str, Any] = {"train_images": 64, "test_images": 32, "steps": 20, "batch": 8, "lr": 1.0e-3, "warmup": 5,
                         "clip_steps": 40}


def _data_config(seed: int):
    from lastvit.data.synthetic import SyntheticConfig
    from lastvit.recipes import load_benchmark

    return SyntheticConfig(**{**load_benchmark("synthetic_demo"), "multi_object": 2, "seed": int(seed)})


def _text_templates() -> list[str]:
    """The prompt templates of the text paradigm's zero-shot evaluation: the tiny text tower was trained on short
    captions ("a small red disk at the top"), which CLIPSelf's 63 sentence templates do not resemble."""
    from lastvit.paradigms import paradigm_recipe

    return list(paradigm_recipe("text", "cls", out=".")["eval"]["templates"])


def miniature_clip(readout: str, seed: int, cache: str | os.PathLike, quick: bool = False,
                   verbose: bool = True) -> Path:
    """The cached frozen CLIP of one readout and seed (trained with the text recipe when missing)."""
    from lastvit.paradigms import paradigm_recipe
    from lastvit.train import fit

    folder = Path(cache) / f"clip_{readout}_s{seed}{'_quick' if quick else ''}"
    path = folder / "model.pt"
    if path.is_file():
        return path
    overrides = {"trainer.max_steps": QUICK["clip_steps"], "optim.warmup_steps": 5,
                 "data.train_size": 512} if quick else None
    cfg = paradigm_recipe("text", readout, out=str(folder), seed=seed, overrides=overrides)
    cfg["trainer"]["progress_bar"] = False
    if verbose:
        print(f"[ovdet] training the {readout} CLIP (seed {seed}, {cfg['trainer']['max_steps']} steps)", flush=True)
    fit(cfg)
    if not path.is_file():
        raise RuntimeError(f"{folder}: CLIP training wrote no model.pt")
    return path


def _figure(out: Path, data: Path, preds: dict[str, Any], names: list[str], novel: list[bool], n: int = 6) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    test = json.loads((data / "test.json").read_text())
    ims = test["images"][:n]
    gts: dict[int, list] = {}
    for a in test["annotations"]:
        gts.setdefault(a["image_id"], []).append(a)
    fig, axes = plt.subplots(len(preds), n, figsize=(2.0 * n, 2.2 * len(preds)), squeeze=False)
    for r, (readout, pred) in enumerate(preds.items()):
        for c, im in enumerate(ims):
            ax = axes[r][c]
            ax.imshow(Image.open(data / im["file_name"]).convert("RGB"))
            for a in gts.get(im["id"], []):
                x, y, w, h = a["bbox"]
                ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, ec="white", lw=0.8, ls="--"))
            d = pred["per_image"][c]
            for box, s, lab in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
                if s < 0.3:
                    continue
                col = "magenta" if novel[lab - 1] else "lime"
                ax.add_patch(plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, ec=col,
                                           lw=1.2))
                ax.text(box[0], box[1], f"{names[lab - 1]} {s:.2f}", color=col, fontsize=6, va="bottom")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(readout)
    fig.suptitle("F-ViT miniature: detections (score >= 0.3; magenta = novel class, dashed = ground truth)",
                 fontsize=8)
    path = out / "detections.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _run_readout(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], tuple[list[str], list[bool]]]:
    """CLIP (cached) -> F-ViT training -> evaluation for one readout (a process of its own with ``workers > 1``)."""
    from lastvit.detection.evaluate import evaluate_ovdet
    from lastvit.train import fit

    if job["threads"]:
        torch.set_num_threads(int(job["threads"]))
    readout, seed, rec, data = job["readout"], job["seed"], job["rec"], Path(job["data"])
    t = time.time()
    clip_path = miniature_clip(readout, seed, job["cache"], quick=job["quick"], verbose=job["verbose"])
    t_clip = time.time() - t
    run = Path(job["run"])
    cfg = {"task": "ovdet", "out_dir": str(run),
           "model": {"clip": str(clip_path), "detector": job["det"], "templates": _text_templates(),
                     "text_cache": str(Path(job["cache"]) / "text_cache")},
           "data": {"kind": "lvis", "train_ann": str(data / "train.json"), "val_ann": str(data / "test.json"),
                    "train_images": str(data), "val_images": str(data), "image_size": job["image_size"],
                    "lsj": [1.0, 1.0], "flip": 0.5, "global_batch": rec["batch"], "val_batch": 32,
                    "val_limit": 32, "num_workers": 0},
           "optim": {"lr": rec["lr"], "lr_batch": rec["batch"], "warmup_steps": rec["warmup"]},
           "trainer": {"accelerator": "cpu", "max_steps": rec["steps"], "val_every": 10 ** 9, "seed": seed,
                       "progress_bar": False, "ckpt_every": 0, "log_every": 25}}
    if job["verbose"]:
        print(f"[ovdet] training F-ViT on the {readout} CLIP ({rec['steps']} steps x {rec['batch']})", flush=True)
    t = time.time()
    res = fit(cfg)
    t_det = time.time() - t
    t = time.time()
    m = evaluate_ovdet(res["model"], data / "test.json", data, return_predictions=True)
    pred = m.pop("_predictions")
    m.update(readout=readout, seed=seed, novel_classes=job["novel_names"], base_classes=job["base_names"],
             seconds={"clip": round(t_clip, 1), "detector": round(t_det, 1), "eval": round(time.time() - t, 1)})
    atomic_write(run / "metrics.json", json.dumps(m, indent=2))
    if job["verbose"]:
        print(f"[ovdet] {readout}: novel AP50 {m['novel_ap50']:.3f}  base AP50 {m['base_ap50']:.3f}  "
              f"novel mask AP {m.get('novel_mask_ap', float('nan')):.3f}  novel RPN recall "
              f"{m['novel_rpn_recall']:.3f}  oracle-box acc {m['oracle_box_accuracy']:.3f}", flush=True)
    light = {"per_image": pred["per_image"][:8]}
    return m, light, (list(res["model"].class_names), res["model"].roi_heads.novel.tolist())


def run_ovdet_miniature(out: str | os.PathLike, seed: int = 0, *, readouts: tuple[str, ...] = ("cls", "lazystrike"),
                        quick: bool = False, cache: str | os.PathLike | None = None, threads: int | None = 1,
                        overrides: dict[str, Any] | None = None, workers: int = 1,
                        verbose: bool = True) -> dict[str, Any]:
    """Run the miniature for one seed (module docstring); returns ``{readout: metrics}``.

    ``cache`` (default ``<out>/..``/``ovdet_cache``) holds the CLIPs and the data per seed; ``overrides`` replace
    :data:`MINI_RECIPE` keys (``steps``, ``train_images``...) or, as ``detector.<key>``, :data:`MINI_DETECTOR` keys.
    ``workers=2`` runs the two readouts in parallel processes (``threads`` threads each).
    """
    from lastvit.detection.synthetic import write_ovdet_synthetic

    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out)
    cache = Path(cache) if cache is not None else out.parent / "ovdet_cache"
    rec = {**(QUICK if quick else MINI_RECIPE)}
    det = copy.deepcopy(MINI_DETECTOR)
    for k, v in (overrides or {}).items():
        if k.startswith("detector."):
            det[k.split(".", 1)[1]] = v
        elif k in rec:
            rec[k] = v
        else:
            raise ValueError(f"unknown miniature override {k!r}; known: {sorted(rec)} and detector.<key>")
    from lastvit.detection.model import DETECTOR_DEFAULTS

    unknown = sorted(set(det) - set(DETECTOR_DEFAULTS))
    if unknown:  # refused here, not after the CLIPs have trained
        raise ValueError(f"unknown miniature override detector.{unknown[0]}; the detector's keys: "
                         f"{', '.join(sorted(DETECTOR_DEFAULTS))}")
    dcfg = _data_config(seed)
    novel_names = list(NOVEL_FOLDS[seed % len(NOVEL_FOLDS)])
    base_names = [n for n in dcfg.classes if n not in novel_names]
    data = cache / f"data_s{seed}_{rec['train_images']}_{rec['test_images']}"
    t0 = time.time()
    if not (data / "test.json").is_file():
        counts = write_ovdet_synthetic(data, dcfg, base_names, novel_names, rec["train_images"], rec["test_images"])
        atomic_write(data / "counts.json", json.dumps(counts, indent=2))
    seconds: dict[str, Any] = {"data": round(time.time() - t0, 1)}
    jobs = [dict(readout=r, seed=seed, cache=str(cache), quick=quick, rec=rec, det=det, data=str(data),
                 image_size=dcfg.image_size, run=str(out / r), threads=threads, verbose=verbose,
                 novel_names=novel_names, base_names=base_names) for r in readouts]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as ex:
            done = list(ex.map(_run_readout, jobs))
    else:
        done = [_run_readout(j) for j in jobs]
    results = {r: m for r, (m, _, _) in zip(readouts, done)}
    preds = {r: p for r, (_, p, _) in zip(readouts, done)}
    names, novel_flags = done[0][2]
    seconds["total"] = round(time.time() - t0, 1)
    fig = _figure(out, data, preds, names, novel_flags)
    summary = {"seed": seed, "quick": quick, "recipe": rec, "detector": det, "readouts": results,
               "seconds": seconds, "figure": fig.name, "threads": threads}
    atomic_write(out / "metrics.json", json.dumps(summary, indent=2, default=str))
    return results
