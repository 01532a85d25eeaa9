"""``lastvit evaluate``: downstream evaluations of a checkpoint.

``lastvit evaluate zeroshot-seg | coarse-seg | discovery | classify --checkpoint CKPT --dataset D --root DIR
--out DIR [...]``. Each writes ``metrics.json`` (strict JSON: the config echoed, the model's load report, the
evaluation transform and where it came from) plus per-class / per-image CSV files into ``--out``. This module
only parses arguments and calls :mod:`lastvit.evaluate`; see docs/evaluate.md.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from typing import Any

import torch

from lastvit.cli._common import add_model_args, load_model
from lastvit.evaluate.dense import VARIANTS
from lastvit.io import write_csv, write_json


# ---------------------------------------------------------------------------------------------- helpers
def _stats(args: argparse.Namespace, model: Any, extra: dict | None) -> tuple[tuple, tuple, str]:
    """--mean/--std, else :func:`lastvit.data.default_normalisation` (checkpoint, synthetic tree, model family)."""
    from lastvit.data.transforms import default_normalisation

    norm = default_normalisation(model, getattr(args, "root", None), extra=extra)
    mean = tuple(args.mean) if args.mean else norm.mean
    std = tuple(args.std) if args.std else norm.std
    source = "user" if (args.mean or args.std) else norm.source
    return mean, std, source


def _dataset(name: str, root: str, split: str | None, *, image_size: int | None, resize: int | None,
             mean: tuple, std: tuple, limit: int | None, **opts: Any):
    from lastvit.data import build_eval_dataset

    if root is None:
        raise ValueError("--root is required")
    kw = dict(image_size=image_size, resize=resize, limit=limit, mean=mean, std=std, **opts)
    if split is not None:
        kw["split"] = split
    return build_eval_dataset(name, root, **kw)


def _iterate(ds, args: argparse.Namespace, desc: str) -> Iterator[dict]:
    """Samples of ``ds`` in order, bad files skipped (counted by the reader), with a progress bar."""
    workers = int(getattr(args, "num_workers", 0) or 0)
    if workers > 0:  # decode in worker processes, one sample at a time, order kept
        it = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers)
    else:
        it = (ds[i] for i in range(len(ds)))
    if not args.no_progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(ds), desc=desc, unit="img")
    for s in it:
        if s is not None:
            yield s
        elif workers > 0:  # the reader counted it inside a worker process: count it here
            ds.skipped["unreadable file (worker)"] += 1


def _skipped(ds) -> dict:
    return {str(k): int(v) for k, v in dict(getattr(ds, "skipped", {}) or {}).items()}


def _config(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"}


def _templates(spec: str) -> list[str] | None:
    """``imagenet`` (None: the evaluator's default, the 80 CLIP templates), ``plain`` (the bare class name), a
    shipped template-list name, or a file of ``{}`` lines."""
    from lastvit.evaluate.zeroshot import load_templates

    if spec == "imagenet":
        return None
    if spec == "plain":
        return ["{}"]
    if not os.path.isfile(spec):
        try:
            return load_templates(spec)
        except (FileNotFoundError, OSError):
            raise FileNotFoundError(f"{spec}: no such template file (or shipped template list)") from None
    with open(spec, encoding="utf-8") as f:
        templates = [ln.rstrip("\n") for ln in f if ln.strip()]
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"{spec}: every template line needs a '{{}}' placeholder")
    return templates


# ---------------------------------------------------------------------------------------------- commands
def _run_zeroshot(args: argparse.Namespace) -> int:
    from lastvit.evaluate.presets import SEG_PRESETS, remap_labels, seg_preset
    from lastvit.evaluate.zeroshot_seg import ZeroShotSegConfig, evaluate_zeroshot_seg

    clip, report = load_model(args, need_clip=True)
    if args.dataset in SEG_PRESETS:
        pre = seg_preset(args.dataset, args.root, args.split)
    elif args.dataset == "seg":
        if not args.classnames:
            raise ValueError("--dataset seg needs --classnames (a shipped list name or a file)")
        pre = dict(reader="seg", split=None, opts={}, classnames=args.classnames, background=None,
                   label="reduce_zero" if args.reduce_zero_label else None, short_side=336)
    else:
        raise ValueError(f"unknown dataset {args.dataset!r}; use one of {sorted(SEG_PRESETS)} or 'seg'")
    opts = dict(pre["opts"])
    for key in ("img_dir", "ann_dir", "split_file", "img_suffix", "seg_suffix"):
        v = getattr(args, key)
        if v is not None:
            opts[key] = v
    cfg = ZeroShotSegConfig(
        classnames=args.classnames or pre["classnames"],
        variant=args.variant,
        short_side=(args.short_side or None) if args.short_side is not None else pre["short_side"],
        crop=args.crop, stride=args.stride,
        logit_scale=args.logit_scale if args.logit_scale is not None else pre.get("logit_scale", 40.0),
        prob_thd=args.prob_thd if args.prob_thd is not None else pre.get("prob_thd", 0.0),
        area_thd=args.area_thd if args.area_thd is not None else pre.get("area_thd"),
        synonyms=args.synonyms,
        background=args.background if args.background is not None else pre["background"],
        gaussian_std=args.gaussian_std,
        pamr_steps=args.pamr_steps if args.pamr_steps is not None else pre.get("pamr_steps", 0),
    )
    mean, std, nsrc = _stats(args, clip, report.get("extra"))
    ds = _dataset(pre["reader"], args.root, args.split or pre["split"], image_size=None, resize=None,
                  mean=mean, std=std, limit=args.limit, **opts)

    def samples():
        for s in _iterate(ds, args, "zeroshot-seg"):
            s = dict(s)
            s["seg"] = remap_labels(torch.as_tensor(s["seg"]), pre["label"])
            yield s

    templates = _templates(args.templates)
    t0 = time.perf_counter()
    res = evaluate_zeroshot_seg(clip, samples(), cfg, device=args.device, templates=templates)
    secs = time.perf_counter() - t0
    out = args.out
    write_csv(os.path.join(out, "per_class.csv"), res["per_class"])
    write_csv(os.path.join(out, "per_image.csv"), res["per_image"])
    metrics = {k: v for k, v in res.items() if k not in ("per_image",)}
    metrics.update(seconds=secs, skipped=_skipped(ds), effective=cfg.__dict__, config=_config(args),
                   normalisation={"mean": list(mean), "std": list(std)}, normalisation_source=nsrc,
                   load_report=report)
    write_json(os.path.join(out, "metrics.json"), metrics)
    print(f"zeroshot-seg {args.dataset} ({cfg.variant}): mIoU {res['mIoU']:.2f} over {res['images']} images "
          f"-> {out}")
    return 0


def _run_coarse(args: argparse.Namespace) -> int:
    from lastvit.evaluate.coarse_seg import evaluate_coarse_seg

    model, report = load_model(args)
    mean, std, nsrc = _stats(args, model, report.get("extra"))
    layout = {k: getattr(args, k) for k in ("img_dir", "ann_dir", "split_file", "img_suffix", "seg_suffix")
              if getattr(args, k) is not None}
    if layout and args.dataset != "seg":
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in layout)} apply to --dataset seg only")
    opts: dict[str, Any] = dict(layout)
    if args.dataset == "voc":
        opts = {"imageset": "Segmentation", "load_seg": True}
    ds = _dataset(args.dataset, args.root, args.split, image_size=args.image_size, resize=args.resize,
                  mean=mean, std=std, limit=args.limit, **opts)
    t0 = time.perf_counter()
    res = evaluate_coarse_seg(model, _iterate(ds, args, "coarse-seg"), rule=args.rule, mass=args.mass,
                              device=args.device, ignore_boundary=not args.count_boundary)
    secs = time.perf_counter() - t0
    write_csv(os.path.join(args.out, "per_image.csv"), res["per_image"])
    metrics = {k: v for k, v in res.items() if k != "per_image"}
    metrics.update(seconds=secs, skipped=_skipped(ds), config=_config(args),
                   normalisation={"mean": list(mean), "std": list(std)}, normalisation_source=nsrc,
                   load_report=report)
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(f"coarse-seg {args.dataset}: Jaccard per image {res['jaccard']:.2f}, per object "
          f"{res['jaccard_per_object']:.2f} ({res['objects']} objects) over {res['images']} images -> {args.out}")
    return 0


def _run_discovery(args: argparse.Namespace) -> int:
    from lastvit.evaluate.discovery import coco_reader_options, discover

    model, report = load_model(args)
    mean, std, nsrc = _stats(args, model, report.get("extra"))
    opts: dict[str, Any] = {}
    if args.image_list:
        if args.dataset != "coco":
            raise ValueError("--image-list applies to --dataset coco (COCO20k)")
        if not os.path.isfile(args.image_list):
            raise FileNotFoundError(f"{args.image_list}: no such image-list file")
        opts["image_list"] = args.image_list
    if args.dataset == "coco":
        opts["masks"] = False
        opts.update(coco_reader_options(args.coco_protocol))
    if args.dataset == "voc":
        opts["imageset"] = "Main"
    ds = _dataset(args.dataset, args.root, args.split, image_size=args.image_size, resize=args.resize,
                  mean=mean, std=std, limit=args.limit, **opts)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    res = discover(model, _iterate(ds, args, "discovery"), methods=methods, device=args.device,
                   k_patches=args.k_patches, n_std=args.n_std, connectivity=args.connectivity, tau=args.tau,
                   batch_size=args.batch_size, solver=args.eig_solver)
    rows = []
    first = res[methods[0]]
    for i, sid in enumerate(first.ids):
        row: dict[str, Any] = {"id": sid}
        for m in methods:
            r = res[m]
            row[f"{m}_box"] = " ".join(f"{v:.1f}" for v in r.boxes[i])
            row[f"{m}_hit"] = int(r.hits[i])
        rows.append(row)
    write_csv(os.path.join(args.out, "per_image.csv"), rows)
    metrics = {"methods": {m: {"corloc": r.corloc, "images": len(r.hits), "images_per_s": r.images_per_s,
                               "seconds": r.seconds} for m, r in res.items()},
               "skipped": _skipped(ds), "device": str(args.device), "config": _config(args),
               "normalisation": {"mean": list(mean), "std": list(std)}, "normalisation_source": nsrc,
               "load_report": report}
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    summary = ", ".join(f"{m} CorLoc {r.corloc:.2f} ({r.images_per_s:.1f} img/s)" for m, r in res.items())
    print(f"discovery {args.dataset}: {summary} -> {args.out}")
    return 0


def _run_classify(args: argparse.Namespace) -> int:
    from lastvit.data.transforms import eval_settings
    from lastvit.evaluate.classify import MODES, classification

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = sorted(set(modes) - set(MODES))
    if bad:
        raise ValueError(f"unknown --modes {bad}; choose from {', '.join(MODES)}")
    if ("knn" in modes or "linear" in modes) and not args.train_root and not args.train_split:
        raise ValueError("knn / linear probes need training features: give --train-root and/or --train-split")
    model, report = load_model(args)
    ev = eval_settings(model, args.dataset, args.root, extra=report.get("extra"), image_size=args.image_size,
                       resize=args.resize, mean=args.mean, std=args.std)
    ds = _dataset(args.dataset, args.root, args.split, image_size=ev.image_size, resize=ev.resize,
                  mean=ev.mean, std=ev.std, limit=args.limit)
    tr = None
    if "knn" in modes or "linear" in modes:
        tr = _dataset(args.dataset, args.train_root or args.root, args.train_split, image_size=ev.image_size,
                      resize=ev.resize, mean=ev.mean, std=ev.std, limit=args.train_limit)
    res = classification(model, ds, tr, modes, batch_size=args.batch_size, num_workers=args.num_workers,
                         device=args.device, knn_k=args.knn_k, knn_t=args.knn_t, epochs=args.epochs, lr=args.lr,
                         wd=args.wd, progress=not args.no_progress)
    rows = res.pop("per_class", [])
    metrics: dict[str, Any] = {"config": _config(args), **res, "skipped": _skipped(ds),
                               "normalisation": {"mean": list(ev.mean), "std": list(ev.std)},
                               "eval_transform": ev.to_dict(), "load_report": report}
    if tr is not None:
        metrics["train_skipped"] = _skipped(tr)
    write_csv(os.path.join(args.out, "per_class.csv"), rows)
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    parts = []
    if "head" in metrics:
        parts.append(f"head top1 {metrics['head']['top1']:.2f} top5 {metrics['head']['top5']:.2f}")
    if "knn" in metrics:
        parts.append(f"kNN top1 {metrics['knn']['top1']:.2f}")
    if "linear" in metrics:
        parts.append(f"linear top1 {metrics['linear']['top1']:.2f}")
    print(f"classify {args.dataset}: {', '.join(parts)} (CenterCrop {ev.image_size}: {ev.sources['image_size']}; "
          f"Resize {ev.resize}: {ev.sources['resize']}) -> {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _common(p: argparse.ArgumentParser, dataset_help: str) -> None:
    add_model_args(p)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", required=True, help=dataset_help)
    d.add_argument("--root", required=True, help="dataset root directory")
    d.add_argument("--split", default=None, help="dataset split (default: the reader's / preset's)")
    d.add_argument("--limit", type=int, default=None, help="first N images only")
    d.add_argument("--mean", type=float, nargs=3, default=None,
                   help="normalisation mean (default: the checkpoint's, else a synthetic tree's own, else by "
                        "model: CLIP or ImageNet)")
    d.add_argument("--std", type=float, nargs=3, default=None, help="normalisation std (default: as --mean)")
    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--device", default="cpu")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--num-workers", type=int, default=0, help="image-decoding worker processes")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="downstream evaluations: zero-shot / coarse segmentation, "
                              "object discovery, classification",
                              description="Downstream evaluations; each writes metrics.json and CSV files to --out.")
    sub = p.add_subparsers(dest="task", metavar="TASK", required=True)

    z = sub.add_parser("zeroshot-seg", help="training-free zero-shot semantic segmentation with a CLIP checkpoint")
    _common(z, "voc21 | voc20 | context60 | context59 | coco_stuff171 | coco_object | cityscapes | ade20k | seg")
    o = z.add_argument_group("zero-shot options")
    o.add_argument("--classnames", help="shipped list name or class-name file (default: the preset's)")
    o.add_argument("--variant", default="vanilla", choices=VARIANTS,
                   help="dense features of the last block (docs/evaluate.md): " + " | ".join(VARIANTS))
    o.add_argument("--short-side", type=int, default=None, help="resize short side (0: native; default: preset's)")
    o.add_argument("--crop", type=int, default=224)
    o.add_argument("--stride", type=int, default=112)
    o.add_argument("--logit-scale", type=float, default=None)
    o.add_argument("--prob-thd", type=float, default=None)
    o.add_argument("--area-thd", type=float, default=None)
    o.add_argument("--synonyms", default="max", choices=("max", "mean"))
    o.add_argument("--templates", default="imagenet",
                   help="'imagenet' (the 80 CLIP templates), 'plain' (the bare name) or a file of '{}' lines")
    o.add_argument("--background", dest="background", action="store_true", default=None)
    o.add_argument("--no-background", dest="background", action="store_false")
    o.add_argument("--gaussian-std", type=float, default=5.0, help="naclip neighbourhood prior std")
    o.add_argument("--img-dir"), o.add_argument("--ann-dir"), o.add_argument("--split-file")
    o.add_argument("--img-suffix"), o.add_argument("--seg-suffix")
    o.add_argument("--reduce-zero-label", action="store_true", help="--dataset seg: 0 -> ignore, c -> c-1")
    o.add_argument("--pamr-steps", type=int, default=None, help="PAMR refinement steps (0: off; default: preset's)")
    z.set_defaults(func=_run_zeroshot)

    c = sub.add_parser("coarse-seg", help="foreground Jaccard of thresholded patch-score maps (VOC12 val)",
                       description="Coarse segmentation (paper Table 6): both candidate protocols, per-image and "
                                   "per-object Jaccard, are reported (docs/evaluate.md).")
    _common(c, "voc (VOC2012 with SegmentationClass) | seg (--img-dir / --ann-dir) | synthetic (its foreground masks)")
    o = c.add_argument_group("coarse-seg options")
    o.add_argument("--img-dir", help="--dataset seg: image folder under --root")
    o.add_argument("--ann-dir", help="--dataset seg: label-map folder under --root (0 background, 255 ignore)")
    o.add_argument("--split-file", help="--dataset seg: file listing the image ids")
    o.add_argument("--img-suffix", help="--dataset seg: image file suffix (default .jpg)")
    o.add_argument("--seg-suffix", help="--dataset seg: label-map file suffix (default .png)")
    o.add_argument("--rule", default="mass", choices=("mass", "mean", "mean_std"))
    o.add_argument("--mass", type=float, default=0.6)
    o.add_argument("--image-size", type=int, default=None, help="center-crop size (default: native image)")
    o.add_argument("--resize", type=int, default=None, help="short-side resize before the crop")
    o.add_argument("--count-boundary", action="store_true", help="count VOC 255 pixels as foreground (DINO code)")
    c.set_defaults(func=_run_coarse)

    d = sub.add_parser("discovery", help="single-object discovery (LazyStrike rule, LOST, TokenCut), CorLoc")
    _common(d, "voc (VOC07/VOC12 trainval: --split trainval) | coco (COCO20k: --image-list)")
    o = d.add_argument_group("discovery options")
    o.add_argument("--methods", default="lazystrike,lost",
                   help="comma list of lazystrike, lazystrike-largest, lost, tokencut")
    o.add_argument("--image-list", help="COCO20k file list")
    o.add_argument("--coco-protocol", default="lost", choices=("lost", "float"),
                   help="COCO20k ground truth: lost (the official protocol: boxes rounded to integers, crowd-only "
                        "images count as misses) | float (float boxes, crowd-only images left out)")
    o.add_argument("--batch-size", type=int, default=1,
                   help="same-size images per forward pass (the boxes are those of batch 1)")
    o.add_argument("--eig-solver", default="lanczos", choices=("lanczos", "dense", "generalized"),
                   help="TokenCut's eigensolver for the second-smallest eigenvector (identical partitions)")
    o.add_argument("--k-patches", type=int, default=100)
    o.add_argument("--n-std", type=float, default=1.0)
    o.add_argument("--connectivity", type=int, default=4, choices=(4, 8))
    o.add_argument("--tau", type=float, default=0.2)
    o.add_argument("--image-size", type=int, default=None, help="center-crop size (default: native image)")
    o.add_argument("--resize", type=int, default=None)
    d.set_defaults(func=_run_discovery)

    k = sub.add_parser("classify", help="top-1/top-5 with the model's head; kNN / linear probe on frozen features")
    _common(k, "imagenet | imagefolder | synthetic")
    o = k.add_argument_group("classification options")
    o.add_argument("--modes", default="head", help="comma list of head, knn, linear")
    o.add_argument("--image-size", type=int, default=None,
                   help="center-crop size (default: the checkpoint's recorded size, else the model's img_size)")
    o.add_argument("--resize", type=int, default=None,
                   help="short-side resize before the crop (default: the checkpoint's, else image-size / 0.875; "
                        "synthetic: image-size)")
    o.add_argument("--batch-size", type=int, default=64)
    o.add_argument("--train-root", help="training set root for kNN / linear probe (default: --root)")
    o.add_argument("--train-split", help="training split for kNN / linear probe")
    o.add_argument("--train-limit", type=int, default=None)
    o.add_argument("--knn-k", type=int, default=20)
    o.add_argument("--knn-t", type=float, default=0.07)
    o.add_argument("--epochs", type=int, default=100)
    o.add_argument("--lr", type=float, default=1.0)
    o.add_argument("--wd", type=float, default=0.0)
    k.set_defaults(func=_run_classify)

    from lastvit.cli._ovdet import register_evaluate  # ovdet commands (lastvit.cli._ovdet)

    register_evaluate(sub)
