"""``lastvit analyze``: the paper's diagnostics of lazy aggregation on a dataset.

``lastvit analyze pib|scores|masking|norms|votes|pca|attention --checkpoint CKPT --dataset NAME --root DIR --out DIR``
Each writes ``metrics.json`` (with the config echoed), a per-image (or per-level) CSV and PNG figures into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

#: the diagnostics (each one function of :data:`lastvit.analysis.runs.KINDS`)
KINDS = ("pib", "scores", "masking", "norms", "votes", "pca", "attention")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="diagnostics of lazy aggregation: Point-in-Box, patch scores, masking probe, norms, votes, PCA, attention",
        description="Run one diagnostic of lazy aggregation on a dataset and write metrics.json, CSV rows and PNGs.",
    )
    p.add_argument("kind", choices=KINDS, help="which diagnostic")
    from lastvit.cli._common import add_model_args

    src = add_model_args(p)
    src.add_argument("--k", type=float, help="LazyStrike K (int, or a fraction in (0, 1)) for --aggregator / votes")
    src.add_argument("--source", default="auto", choices=("auto", "cls", "pooled"),
                     help="global representation the patch scores compare with (default auto: the class-token "
                          "output for a cls readout, the pooled token otherwise; the release's PiB evaluator uses "
                          "the class-token output: --source cls); recorded in metrics.json")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", required=True, help="imagenet | voc | coco | synthetic | imagefolder | seg")
    data.add_argument("--root", help="dataset root directory (synthetic: optional)")
    data.add_argument("--ann-dir", default=None,
                      help="annotation folder elsewhere than the reader's default (imagenet: the XML boxes; "
                           "imagefolder: XML boxes; seg: label maps)")
    data.add_argument("--split", default=None, help="dataset split (default: the reader's evaluation split)")
    data.add_argument("--image-size", type=int, default=None, help="evaluation image size (default: the model's)")
    data.add_argument("--resize", type=int, default=None,
                      help="resize the short side to this before the centre crop (default: image-size*256/224; "
                           "synthetic: image-size)")
    data.add_argument("--limit", type=int, default=None, help="use the first N images only")
    data.add_argument("--batch-size", type=int, default=32)
    data.add_argument("--num-workers", type=int, default=0)
    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, help="output directory")
    run.add_argument("--device", default="cpu")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--num-figures", type=int, default=8, help="images shown in the figures")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    opt = p.add_argument_group("diagnostic options")
    opt.add_argument("--single-object", action="store_true", default=None,
                     help="keep only images with exactly one box whose area is < --max-box-area of the image (the "
                          "release's PiB protocol; the default with --dataset imagenet)")
    opt.add_argument("--max-box-area", type=float, default=None,
                     help="with --single-object: skip images whose box covers >= this fraction (default 0.25, the "
                          "release's)")
    opt.add_argument("--all-images", action="store_true",
                     help="--dataset imagenet: keep every image with a box (turn the paper's single-object, "
                          "box < 25%% selection off)")
    opt.add_argument("--fractions", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0",
                     help="masking: comma-separated shares of patches to remove")
    opt.add_argument("--mode", default="pixel", choices=("pixel", "token"), help="masking: pixel fill or token drop")
    opt.add_argument("--fill", default="zero", choices=("zero", "mean", "noise"), help="masking: pixel fill")
    opt.add_argument("--threshold", default="robust", help="norms: 'robust' (median + k*1.4826*MAD) or a number")
    opt.add_argument("--mad-k", type=float, default=5.0, help="norms: k of the robust threshold")
    opt.add_argument("--layer", type=int, default=-1, help="attention: block index (default: last; negative counts "
                                                          "from the last)")
    p.set_defaults(func=run_analyze)


# ----------------------------------------------------------------------------------------------- helpers
def _k(value: float | None) -> int | float | None:
    return None if value is None else (int(value) if value >= 1 else float(value))


def selection(args: argparse.Namespace) -> dict[str, Any]:
    """The image selection: ``--dataset imagenet`` defaults to the paper's (one box, area < 25% of the image)."""
    paper = args.dataset == "imagenet" and not args.all_images
    single = bool(args.single_object) if args.single_object is not None else paper
    if args.all_images and args.single_object:
        raise ValueError("--all-images and --single-object contradict each other; give one")
    area = args.max_box_area if args.max_box_area is not None else (0.25 if single else None)
    return {"single_object": single, "max_box_area": area,
            "rule": (f"one box, area < {area:g} of the image" if single else "every image with a box")
            + (" (the paper's default for imagenet)" if paper and args.single_object is None else "")}


def _load_data(args: argparse.Namespace, model: torch.nn.Module, sel: dict[str, Any]):
    from lastvit.data import build_eval_dataset, collate, skip_empty_batches

    size = args.image_size or int(model.arch.get("img_size", 224))
    resize = args.resize
    if resize is None:  # the release's Resize(256) + CenterCrop(224), scaled; synthetic images are shown whole
        resize = size if args.dataset == "synthetic" else round(size * 256 / 224)
    if args.root is None:
        raise ValueError("--root is required (the dataset directory)")
    opts = {"ann_dir": args.ann_dir} if args.ann_dir else {}
    ds = build_eval_dataset(args.dataset, args.root, split=args.split, image_size=size, resize=resize,
                            single_object=sel["single_object"],
                            max_box_area=1.0 if sel["max_box_area"] is None else sel["max_box_area"],
                            limit=args.limit, **opts)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=False,
                                         num_workers=args.num_workers, collate_fn=collate)
    return ds, skip_empty_batches(loader)  # a batch whose every image failed to decode: skipped (counted by ds)


def _progress(it, args: argparse.Namespace, total: int, desc: str):
    if args.no_progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, unit="batch")


def _skipped(ds: Any) -> dict[str, int]:
    sk = getattr(ds, "skipped", None)
    if sk is None:
        return {}
    if isinstance(sk, dict):
        return {str(k): (len(v) if isinstance(v, list | tuple | set) else int(v)) for k, v in sk.items()}
    if isinstance(sk, int):
        return {"dataset": sk}
    reasons: dict[str, int] = {}
    for item in sk:
        r = item[1] if isinstance(item, list | tuple) and len(item) > 1 else "dataset"
        reasons[str(r)] = reasons.get(str(r), 0) + 1
    return reasons


def _options(args: argparse.Namespace) -> dict[str, Any]:
    try:
        fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    except ValueError:
        raise ValueError(f"--fractions must be comma-separated numbers, got {args.fractions!r}") from None
    try:
        threshold: str | float = float(args.threshold)
    except ValueError:
        threshold = args.threshold
    # the selection itself is the dataset's (build_eval_dataset counts what it leaves out)
    return {"source": args.source, "fractions": fractions, "mode": args.mode, "fill": args.fill, "seed": args.seed,
            "threshold": threshold,
            "mad_k": args.mad_k, "k": _k(args.k), "layer": args.layer, "num_figures": args.num_figures,
            "device": args.device}


# ----------------------------------------------------------------------------------------------- command
def run_analyze(args: argparse.Namespace) -> int:
    from lastvit.analysis.runs import KINDS as RUNS
    from lastvit.analysis.runs import check_layer
    from lastvit.analysis.scores import resolve_source
    from lastvit.cli._common import load_model
    from lastvit.io import to_json, write_csv, write_json

    torch.manual_seed(args.seed)
    out = Path(args.out)
    agg_kw = {"k": _k(args.k)} if args.k is not None and (args.aggregator or "").lower() == "lazystrike" else None
    model, load_report = load_model(args, aggregator_kwargs=agg_kw)
    model = model.to(args.device).eval()
    if args.kind == "attention":
        check_layer(model, args.layer)  # refused before anything is read or written
    sel = selection(args)
    opts = _options(args)
    ds, loader = _load_data(args, model, sel)
    out.mkdir(parents=True, exist_ok=True)
    mean, std = getattr(ds, "mean", None), getattr(ds, "std", None)
    metrics, rows, figs = RUNS[args.kind](model, _progress(loader, args, len(loader), args.kind), out=out, mean=mean,
                                          std=std, **opts)
    reasons = _skipped(ds)
    if args.kind == "pib":
        metrics["num_skipped"] += sum(reasons.values())
        metrics["skipped"].update({f"dataset:{k}": v for k, v in reasons.items()})
        if metrics["num_images"] == 0:
            where = f"annotations in {args.ann_dir}" if args.ann_dir else "the reader's default annotation folder"
            raise ValueError(f"{args.dataset} dataset at {args.root}: no image with a box to score (looked for "
                             f"{where}; skipped: {metrics['skipped'] or 'none'}); point at the boxes with --ann-dir "
                             f"or turn the selection off with --all-images")
        metrics["source"] = resolve_source(model, args.source)
    else:
        metrics.setdefault("dataset_skipped", reasons)
    if args.kind in ("scores", "masking"):
        metrics["source"] = resolve_source(model, args.source)
    csv_name = f"{args.kind}_rows.csv"
    if rows:
        write_csv(out / csv_name, rows)
    cfg = {k: v for k, v in vars(args).items() if k != "func"}
    cfg.update(model_config=model.config() if hasattr(model, "config") else None, dataset_size=len(ds),
               selection=sel)
    result = {"kind": args.kind, "metrics": metrics, "config": cfg, "load": load_report,
              "files": {"rows": csv_name if rows else None, "figures": [Path(f).name for f in figs]}}
    write_json(out / "metrics.json", result)
    headline = {k: v for k, v in metrics.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}
    print(to_json({"kind": args.kind, **headline}, indent=None))
    return 0
