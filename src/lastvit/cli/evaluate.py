"""``lastvit evaluate``: downstream evaluations of a checkpoint.

``lastvit evaluate zeroshot-seg | coarse-seg | discovery | classify --checkpoint CKPT --dataset D --root DIR
--out DIR [...]``. Each writes ``metrics.json`` (config echoed) plus per-class / per-image CSV files into ``--out``.
See docs/evaluate.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import torch

from lastvit.io import atomic_write

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------- output helpers
def _atomic_write(path: str, text: str) -> None:
    atomic_write(path, text)


def _clean(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _write_json(path: str, obj: dict) -> None:
    _atomic_write(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def _write_csv(path: str, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    _atomic_write(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------- model / data
def _load_model(args: argparse.Namespace, need_clip: bool = False) -> torch.nn.Module:
    from lastvit.factory import create_model

    kw: dict[str, Any] = {}
    if getattr(args, "aggregator", None):
        kw["aggregator"] = args.aggregator
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            raise FileNotFoundError(f"{args.checkpoint}: no such checkpoint file")
        model = create_model(args.model, checkpoint=args.checkpoint, **kw)
    elif args.model and not need_clip:
        model = create_model(args.model, **kw)
    else:
        raise ValueError("give --checkpoint" + ("" if need_clip else " (or --model for a random-init model)"))
    if need_clip:
        if not (hasattr(model, "encode_text") and hasattr(model, "visual")):
            raise ValueError(f"{args.checkpoint}: zero-shot segmentation needs a whole-CLIP checkpoint "
                             f"(image and text towers); got a {type(model).__name__}")
        return model.eval()
    if not hasattr(model, "forward_tokens"):
        vis = getattr(model, "visual", None)
        if vis is None or not hasattr(vis, "forward_tokens"):
            raise ValueError(f"{args.checkpoint}: the model has no LastViT image tower")
        model = vis
    return model.eval()


def _synthetic_stats(root: str | None) -> tuple[tuple, tuple] | None:
    """The normalisation a synthetic tree was made for (its metrics.json, else SyntheticConfig's defaults), or None
    when ``root`` is not a synthetic tree (models trained on the synthetic benchmark use these, not ImageNet's)."""
    from lastvit.data.synthetic import SyntheticConfig

    if not root or not (os.path.isfile(os.path.join(root, "seg_classes.txt"))
                        or os.path.isdir(os.path.join(root, "Masks"))):
        return None
    cfg = SyntheticConfig()
    mean, std = cfg.mean, cfg.std
    meta = os.path.join(root, "metrics.json")
    if os.path.isfile(meta):
        try:
            with open(meta, encoding="utf-8") as f:
                c = json.load(f).get("config", {})
            mean, std = tuple(c.get("mean", mean)), tuple(c.get("std", std))
        except (OSError, ValueError):
            pass
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _stats(args: argparse.Namespace, is_clip: bool) -> tuple[tuple, tuple]:
    """--mean/--std, else a synthetic tree's own normalisation, else the model family's (CLIP or ImageNet)."""
    from lastvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    syn = _synthetic_stats(getattr(args, "root", None))
    if syn is not None:
        default = syn
    else:
        default = (CLIP_MEAN, CLIP_STD) if is_clip else (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))
    mean = tuple(args.mean) if args.mean else default[0]
    std = tuple(args.std) if args.std else default[1]
    return mean, std


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


# ---------------------------------------------------------------------------------------------- commands
def _run_zeroshot(args: argparse.Namespace) -> int:
    from lastvit.evaluate.presets import SEG_PRESETS, remap_labels
    from lastvit.evaluate.zeroshot_seg import ZeroShotSegConfig, evaluate_zeroshot_seg

    clip = _load_model(args, need_clip=True)
    if args.dataset in SEG_PRESETS:
        pre = SEG_PRESETS[args.dataset]
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
    )
    mean, std = _stats(args, True)
    ds = _dataset(pre["reader"], args.root, args.split or pre["split"], image_size=None, resize=None,
                  mean=mean, std=std, limit=args.limit, **opts)

    def samples():
        for s in _iterate(ds, args, "zeroshot-seg"):
            s = dict(s)
            s["seg"] = remap_labels(torch.as_tensor(s["seg"]), pre["label"])
            yield s

    templates = None
    if args.templates == "plain":
        templates = ["{}"]
    elif args.templates != "imagenet":
        if not os.path.isfile(args.templates):
            raise FileNotFoundError(f"{args.templates}: no such template file")
        with open(args.templates, encoding="utf-8") as f:
            templates = [ln.rstrip("\n") for ln in f if ln.strip()]
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"{args.templates}: every template line needs a '{{}}' placeholder")
    t0 = time.perf_counter()
    res = evaluate_zeroshot_seg(clip, samples(), cfg, device=args.device, templates=templates)
    secs = time.perf_counter() - t0
    out = args.out
    _write_csv(os.path.join(out, "per_class.csv"), res["per_class"])
    _write_csv(os.path.join(out, "per_image.csv"), res["per_image"])
    metrics = {k: v for k, v in res.items() if k not in ("per_image",)}
    metrics.update(seconds=secs, skipped=_skipped(ds), effective=cfg.__dict__, config=_config(args),
                   normalisation={"mean": list(mean), "std": list(std)})
    _write_json(os.path.join(out, "metrics.json"), metrics)
    print(f"zeroshot-seg {args.dataset} ({cfg.variant}): mIoU {res['mIoU']:.2f} over {res['images']} images "
          f"-> {out}")
    return 0


def _run_coarse(args: argparse.Namespace) -> int:
    from lastvit.evaluate.coarse_seg import evaluate_coarse_seg

    model = _load_model(args)
    mean, std = _stats(args, getattr(model, "head_type", "") == "proj")
    opts: dict[str, Any] = {}
    if args.dataset == "voc":
        opts = {"imageset": "Segmentation", "load_seg": True}
    ds = _dataset(args.dataset, args.root, args.split, image_size=args.image_size, resize=args.resize,
                  mean=mean, std=std, limit=args.limit, **opts)
    t0 = time.perf_counter()
    res = evaluate_coarse_seg(model, _iterate(ds, args, "coarse-seg"), rule=args.rule, mass=args.mass,
                              device=args.device, ignore_boundary=not args.count_boundary)
    secs = time.perf_counter() - t0
    _write_csv(os.path.join(args.out, "per_image.csv"), res["per_image"])
    metrics = {k: v for k, v in res.items() if k != "per_image"}
    metrics.update(seconds=secs, skipped=_skipped(ds), config=_config(args),
                   normalisation={"mean": list(mean), "std": list(std)})
    _write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(f"coarse-seg {args.dataset}: Jaccard {res['jaccard']:.2f} over {res['images']} images -> {args.out}")
    return 0


def _run_discovery(args: argparse.Namespace) -> int:
    from lastvit.evaluate.discovery import discover

    model = _load_model(args)
    mean, std = _stats(args, getattr(model, "head_type", "") == "proj")
    opts: dict[str, Any] = {}
    if args.image_list:
        if args.dataset != "coco":
            raise ValueError("--image-list applies to --dataset coco (COCO20k)")
        if not os.path.isfile(args.image_list):
            raise FileNotFoundError(f"{args.image_list}: no such image-list file")
        opts["image_list"] = args.image_list
    if args.dataset == "coco":
        opts["masks"] = False
    if args.dataset == "voc":
        opts["imageset"] = "Main"
    ds = _dataset(args.dataset, args.root, args.split, image_size=args.image_size, resize=args.resize,
                  mean=mean, std=std, limit=args.limit, **opts)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    res = discover(model, _iterate(ds, args, "discovery"), methods=methods, device=args.device,
                   k_patches=args.k_patches, n_std=args.n_std, connectivity=args.connectivity, tau=args.tau)
    rows = []
    first = res[methods[0]]
    for i, sid in enumerate(first.ids):
        row: dict[str, Any] = {"id": sid}
        for m in methods:
            r = res[m]
            row[f"{m}_box"] = " ".join(f"{v:.1f}" for v in r.boxes[i])
            row[f"{m}_hit"] = int(r.hits[i])
        rows.append(row)
    _write_csv(os.path.join(args.out, "per_image.csv"), rows)
    metrics = {"methods": {m: {"corloc": r.corloc, "images": len(r.hits), "images_per_s": r.images_per_s,
                               "seconds": r.seconds} for m, r in res.items()},
               "skipped": _skipped(ds), "device": str(args.device), "config": _config(args),
               "normalisation": {"mean": list(mean), "std": list(std)}}
    _write_json(os.path.join(args.out, "metrics.json"), metrics)
    summary = ", ".join(f"{m} CorLoc {r.corloc:.2f} ({r.images_per_s:.1f} img/s)" for m, r in res.items())
    print(f"discovery {args.dataset}: {summary} -> {args.out}")
    return 0


def _run_classify(args: argparse.Namespace) -> int:
    from lastvit.data import collate
    from lastvit.evaluate.classify import evaluate_head
    from lastvit.evaluate.probe import extract_features, knn_accuracy, linear_probe

    model = _load_model(args)
    mean, std = _stats(args, getattr(model, "head_type", "") == "proj")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = set(modes) - {"head", "knn", "linear"}
    if bad:
        raise ValueError(f"unknown --modes {sorted(bad)}; choose from head, knn, linear")
    ds = _dataset(args.dataset, args.root, args.split, image_size=args.image_size, resize=args.resize,
                  mean=mean, std=std, limit=args.limit)

    def loader(d):
        dl = torch.utils.data.DataLoader(d, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers,
                                         collate_fn=lambda b: collate([s for s in b if s is not None]))
        if args.no_progress:
            return dl
        from tqdm.auto import tqdm

        return tqdm(dl, desc="classify", unit="batch")

    metrics: dict[str, Any] = {"config": _config(args), "skipped": _skipped(ds),
                               "normalisation": {"mean": list(mean), "std": list(std)}}
    rows: list[dict] = []
    if "head" in modes:
        if getattr(model, "head_type", "linear") != "linear" or getattr(model, "num_classes", 0) <= 0:
            raise ValueError(f"{args.checkpoint}: the model has no classification head; use --modes knn,linear")
        r = evaluate_head(model, loader(ds), device=args.device)
        metrics["head"] = {k: v for k, v in r.items() if k != "per_class_top1"}
        rows = [{"label": y, "top1": a} for y, a in r["per_class_top1"].items()]
    if "knn" in modes or "linear" in modes:
        if not args.train_root and not args.train_split:
            raise ValueError("knn / linear probes need training features: give --train-root and/or --train-split")
        tr = _dataset(args.dataset, args.train_root or args.root, args.train_split, image_size=args.image_size,
                      resize=args.resize, mean=mean, std=std, limit=args.train_limit)
        ftr, ytr = extract_features(model, loader(tr), args.device)
        fte, yte = extract_features(model, loader(ds), args.device)
        nc = int(max(ytr.max(), yte.max())) + 1
        if "knn" in modes:
            metrics["knn"] = {"top1": knn_accuracy(ftr, ytr, fte, yte, k=args.knn_k, T=args.knn_t, num_classes=nc),
                              "k": args.knn_k, "T": args.knn_t}
        if "linear" in modes:
            metrics["linear"] = {"top1": linear_probe(ftr, ytr, fte, yte, epochs=args.epochs, lr=args.lr, wd=args.wd,
                                                      num_classes=nc),
                                 "epochs": args.epochs, "lr": args.lr, "wd": args.wd}
        metrics["train_images"], metrics["test_images"] = int(len(ytr)), int(len(yte))
    _write_csv(os.path.join(args.out, "per_class.csv"), rows)
    _write_json(os.path.join(args.out, "metrics.json"), metrics)
    parts = []
    if "head" in metrics:
        parts.append(f"head top1 {metrics['head']['top1']:.2f} top5 {metrics['head']['top5']:.2f}")
    if "knn" in metrics:
        parts.append(f"kNN top1 {metrics['knn']['top1']:.2f}")
    if "linear" in metrics:
        parts.append(f"linear top1 {metrics['linear']['top1']:.2f}")
    print(f"classify {args.dataset}: {', '.join(parts)} -> {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _common(p: argparse.ArgumentParser, dataset_help: str) -> None:
    m = p.add_argument_group("model")
    m.add_argument("--checkpoint", help="model file (any format lastvit reads)")
    m.add_argument("--model", help="architecture name (with --checkpoint: override; alone: random init)")
    m.add_argument("--aggregator", help="override the readout (lazystrike, cls, mean, max, attn)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", required=True, help=dataset_help)
    d.add_argument("--root", required=True, help="dataset root directory")
    d.add_argument("--split", default=None, help="dataset split (default: the reader's / preset's)")
    d.add_argument("--limit", type=int, default=None, help="first N images only")
    d.add_argument("--mean", type=float, nargs=3, default=None,
                   help="normalisation mean (default: a synthetic tree's own, else by model)")
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
    o.add_argument("--variant", default="vanilla", choices=("vanilla", "maskclip", "sclip", "clearclip", "naclip"))
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
    z.set_defaults(func=_run_zeroshot)

    c = sub.add_parser("coarse-seg", help="foreground Jaccard of thresholded patch-score maps (VOC12 val)")
    _common(c, "voc (VOC2012 with SegmentationClass) | seg | synthetic (its foreground masks)")
    o = c.add_argument_group("coarse-seg options")
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
    o.add_argument("--image-size", type=int, default=224)
    o.add_argument("--resize", type=int, default=256)
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
