"""``lastvit data``: write the synthetic benchmark to disk, or check that a dataset reads.

``lastvit data synth --out DIR [--splits val test] [--size N] [--image-size 64] [--clutter 8] ...``
writes an ImageFolder tree with ILSVRC-style XML boxes, mask PNGs, captions.csv, classes.txt, a preview PNG
and ``metrics.json`` (config echoed, per-split and per-class counts).

``lastvit data check NAME --root DIR [--split S] [--single-object] [--decode] [--out DIR]`` builds the
dataset with :func:`lastvit.data.build_eval_dataset` and prints images, classes and skip reasons
(``--decode`` also decodes every image).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from lastvit.io import write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="write the synthetic benchmark to disk, or check a dataset reads",
                              description="Data utilities: 'synth' writes the synthetic benchmark as an ImageFolder "
                                          "tree; 'check' reads a dataset and reports what was skipped.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    s = sub.add_parser("synth", help="write the synthetic benchmark as an ImageFolder tree (+XML boxes, masks)")
    s.add_argument("--out", required=True, help="output root")
    s.add_argument("--splits", nargs="+", default=["val"], choices=("train", "val", "test"))
    s.add_argument("--size", type=int, default=None, help="images per split (default: the config's split size)")
    from lastvit.data.synthetic import SyntheticConfig

    d = SyntheticConfig()  # the defaults are the config's own (written once, in lastvit.data.synthetic)
    s.add_argument("--num-classes", type=int, default=d.num_classes)
    s.add_argument("--image-size", type=int, default=d.image_size)
    s.add_argument("--min-size", type=float, default=d.min_size)
    s.add_argument("--max-size", type=float, default=d.max_size)
    s.add_argument("--clutter", type=int, default=d.clutter)
    s.add_argument("--texture", type=float, default=d.texture)
    s.add_argument("--no-gradient", action="store_true")
    s.add_argument("--multi-object", type=int, default=d.multi_object)
    s.add_argument("--colour-jitter", type=float, default=d.colour_jitter)
    s.add_argument("--pattern", type=float, default=d.pattern,
                   help="class-specific stripe texture on the object, 0-1 (--demo sets the demo's value)")
    s.add_argument("--demo", action="store_true",
                   help="the demo's benchmark (the packaged definition synthetic_demo: classes, image size, "
                        "object sizes, clutter and pattern); overrides those options")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_synth)

    c = sub.add_parser("check", help="build a dataset with build_eval_dataset and report skip reasons")
    c.add_argument("name", choices=("imagenet", "voc", "coco", "synthetic", "imagefolder", "seg"))
    c.add_argument("--root", required=True)
    c.add_argument("--split", default=None)
    c.add_argument("--single-object", action="store_true")
    c.add_argument("--max-box-area", type=float, default=0.25)
    c.add_argument("--limit", type=int, default=None)
    c.add_argument("--decode", action="store_true", help="decode every image (finds truncated files)")
    c.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="reader option (e.g. ann_dir=..., img_dir=..., reduce_zero_label=true); repeatable")
    c.add_argument("--out", default=None, help="write metrics.json here")
    c.set_defaults(func=_check)

    from lastvit.cli._ovdet import register_data  # ovdet commands (lastvit.cli._ovdet)

    register_data(sub)


def _write_json(path: Path, obj: Any) -> None:
    write_json(path, obj)


def _synth(args: argparse.Namespace) -> int:
    from torchvision.utils import draw_bounding_boxes, make_grid

    from lastvit.data import SyntheticConfig, SyntheticDataset, write_imagefolder
    from lastvit.data.synthetic import _atomic_write_bytes, _png_bytes

    knobs = dict(num_classes=args.num_classes, image_size=args.image_size, min_size=args.min_size,
                 max_size=args.max_size, clutter=args.clutter, pattern=args.pattern)
    if args.demo:  # the packaged benchmark definition every demo recipe names
        from lastvit.recipes import load_benchmark

        knobs.update(load_benchmark("synthetic_demo"))
    cfg = SyntheticConfig(**knobs, texture=args.texture, gradient=not args.no_gradient,
                          multi_object=args.multi_object, colour_jitter=args.colour_jitter, seed=args.seed)
    out = Path(args.out)
    counts: dict[str, Any] = {}
    for split in args.splits:
        ds = SyntheticDataset(cfg, split, size=args.size)
        write_imagefolder(ds, out)
        labels = Counter()
        for start in range(0, len(ds), 1024):
            g = ds.generate_batch(range(start, min(len(ds), start + 1024)))
            labels.update(ds.classes[int(c)] for c in g["labels"])
        counts[split] = {"images": len(ds), "per_class": dict(sorted(labels.items()))}
        print(f"{split}: {len(ds)} images -> {out / split}")
    g = SyntheticDataset(cfg, args.splits[0], size=args.size).generate_batch(range(min(16, args.size or 16)))
    tiles = [draw_bounding_boxes((im * 255).round().to(torch.uint8), b[None], colors="lime")
             for im, b in zip(g["images"], g["boxes"])]
    grid = make_grid(torch.stack(tiles), nrow=4, padding=2).permute(1, 2, 0).numpy()
    _atomic_write_bytes(out / "preview.png", _png_bytes(grid))
    _write_json(out / "metrics.json", {"command": "data synth", "config": cfg.to_dict(), "splits": counts})
    return 0


def _parse_opt(items: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"--opt {it!r}: expected KEY=VALUE")
        k, v = it.split("=", 1)
        low = v.lower()
        opts[k] = True if low == "true" else False if low == "false" else int(v) if v.isdigit() else v
    return opts


def _check(args: argparse.Namespace) -> int:
    from lastvit.data import build_eval_dataset

    ds = build_eval_dataset(args.name, args.root, split=args.split, image_size=None, resize=None,
                            single_object=args.single_object, max_box_area=args.max_box_area, limit=args.limit,
                            **_parse_opt(args.opt))
    n_boxes = sum(len(r.get("boxes") or []) for r in ds.records)
    if args.decode:
        for i in range(len(ds)):
            ds[i]
    res = {"command": "data check", "config": vars(args) | {"func": None}, "images": ds.num_images,
           "classes": len(ds.classes), "boxes": n_boxes, "skipped": dict(ds.skipped), "fixed": dict(ds.fixed)}
    print(f"{args.name} at {args.root}: {ds.num_images} images, {len(ds.classes)} classes, {n_boxes} boxes")
    for reason, n in sorted(ds.skipped.items()):
        print(f"  skipped {n:6d}  {reason}")
    for reason, n in sorted(ds.fixed.items()):
        print(f"  fixed   {n:6d}  {reason}")
    if args.out:
        _write_json(Path(args.out) / "metrics.json", res)
    return 0
