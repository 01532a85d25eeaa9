"""``lastvit train --config NAME_OR_PATH [key.path=value ...] [--resume]``."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML recipe (label supervision, CLIP, DINO) on CPU or GPUs",
        description="Train from a YAML recipe. Overrides are dotted keys with YAML values, e.g. "
        "trainer.devices=8 trainer.num_nodes=4 trainer.max_steps=100 model.aggregator=cls. See docs/training.md.",
    )
    p.add_argument("--config", required=True,
                   help="a packaged recipe name (label_synthetic, text_synthetic, self_synthetic, micro_synthetic, "
                        "tiny_smoke) or a YAML file (configs/imagenet/vit_b16.yaml, ...)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, values parsed as YAML")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out_dir>/checkpoints/last.ckpt (same as trainer.resume=true)")
    p.add_argument("--out", default=None, help="output folder (same as out_dir=...)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lastvit.train import fit, load_config

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.resume:
        overrides.append("trainer.resume=true")
    cfg = load_config(args.config, overrides)
    result = fit(cfg)
    metrics = {k: v for k, v in (result.get("metrics") or {}).items() if isinstance(v, int | float)}
    print(f"lastvit train: done -> {result['out_dir']}  {json.dumps(metrics)}")
    return 0
