"""Commands of the OV-detection area, registered into ``lastvit data`` and ``lastvit evaluate``:

* ``lastvit data ovcoco-split --train ANN --val ANN --out DIR`` (the OVR-CNN split, 48 base / 17 novel);
* ``lastvit data ovlvis-split --train ANN --out DIR`` (LVIS train without rare annotations, all categories);
* ``lastvit evaluate ovdet --checkpoint model.pt --dataset coco|lvis --root ROOT [--ann FILE] [--images DIR]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["register_data", "register_evaluate"]


def register_data(sub: argparse._SubParsersAction) -> None:
    """Add ``ovcoco-split`` and ``ovlvis-split`` to the ``lastvit data`` actions."""
    c = sub.add_parser("ovcoco-split", help="write the OV-COCO split (OVR-CNN: 48 base / 17 novel) from COCO 2017")
    c.add_argument("--train", required=True, help="instances_train2017.json")
    c.add_argument("--val", required=True, help="instances_val2017.json")
    c.add_argument("--out", required=True, help="output folder (instances_train2017_seen_2_65_cat.json, "
                                                "instances_val2017_all_2.json)")
    c.set_defaults(func=_ovcoco)
    lv = sub.add_parser("ovlvis-split", help="write LVIS v1 train without rare annotations (all 1203 categories)")
    lv.add_argument("--train", required=True, help="lvis_v1_train.json")
    lv.add_argument("--out", required=True, help="output folder (lvis_v1_train_seen_1203_cat.json, "
                                                 "lvis_v1_train_cat_norare_info.json)")
    lv.set_defaults(func=_ovlvis)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _ovcoco(args: argparse.Namespace) -> int:
    from lastvit.detection.splits import make_ov_coco_split

    _print(make_ov_coco_split(args.train, args.val, args.out))
    return 0


def _ovlvis(args: argparse.Namespace) -> int:
    from lastvit.detection.splits import make_ov_lvis_split

    _print(make_ov_lvis_split(args.train, args.out))
    return 0


def register_evaluate(sub: argparse._SubParsersAction) -> None:
    """Add ``ovdet`` to the ``lastvit evaluate`` tasks."""
    e = sub.add_parser("ovdet", help="open-vocabulary detection: OV-COCO box AP50 novel/base, LVIS mask APr, "
                                     "novel RPN recall, oracle-box accuracy of a trained F-ViT")
    e.add_argument("--checkpoint", required=True, help="model.pt written by 'lastvit train' (task ovdet)")
    e.add_argument("--dataset", required=True, choices=("coco", "lvis"))
    e.add_argument("--root", required=True, help="COCO 2017 root (train2017/, val2017/, annotations/)")
    e.add_argument("--ann", default=None, help="val annotations (default: ROOT/annotations/"
                                               "instances_val2017_all_2.json or lvis_v1_val.json)")
    e.add_argument("--images", default=None, help="image folder (default: ROOT/val2017 for coco, ROOT for lvis)")
    e.add_argument("--clip", default=None, help="the frozen CLIP file (default: the path the checkpoint records)")
    e.add_argument("--ensemble", choices=("fvit", "fvlm", "none"), default=None)
    e.add_argument("--alpha", type=float, default=None)
    e.add_argument("--beta", default=None, help="novel ensemble weight; a comma list sweeps it (0.4,0.6,0.8)")
    e.add_argument("--vlm-temperature", type=float, default=None)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--limit", type=int, default=None, help="first N images only")
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", default=None, help="write metrics.json here")
    e.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from lastvit.detection.evaluate import evaluate_ovdet
    from lastvit.io import atomic_write
    from lastvit.train.ovdet import load_detector

    root = Path(args.root)
    if args.ann:
        ann = Path(args.ann)
    elif args.dataset == "coco":
        ann = root / "annotations" / "instances_val2017_all_2.json"
    else:
        ann = root / "annotations" / "lvis_v1_val.json"
    images = Path(args.images) if args.images else (root / "val2017" if args.dataset == "coco" else root)
    model, _ = load_detector(args.checkpoint, clip_path=args.clip)
    model.to(args.device)
    rh = model.roi_heads
    if args.ensemble:
        rh.ensemble = args.ensemble
    if args.alpha is not None:
        rh.alpha = float(args.alpha)
    if args.vlm_temperature is not None:
        rh.vlm_temperature = float(args.vlm_temperature)
    betas = [float(b) for b in str(args.beta).split(",")] if args.beta else [rh.beta]
    results = {}
    for b in betas:
        rh.beta = b
        r = evaluate_ovdet(model, ann, images, batch_size=args.batch_size, max_images=args.limit)
        r.update(alpha=rh.alpha, beta=b, ensemble=rh.ensemble, vlm_temperature=rh.vlm_temperature)
        results[f"beta={b}"] = r
        keys = ("novel_ap50", "base_ap50", "all_ap50", "mask_APr", "mask_AP", "novel_rpn_recall",
                "oracle_box_accuracy")
        print(f"beta {b}: " + "  ".join(f"{k} {100 * r[k]:.1f}" for k in keys if k in r))
    out = results if len(results) > 1 else next(iter(results.values()))
    if args.out:
        atomic_write(Path(args.out) / "metrics.json", json.dumps({"checkpoint": args.checkpoint, "dataset":
                                                                  args.dataset, "annotations": str(ann),
                                                                  "metrics": out}, indent=2, default=str))
    return 0
