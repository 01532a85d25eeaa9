"""``lastvit demo``: CLS vs LazyStrike on the embedded synthetic benchmark, ending in report.html."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train CLS and LazyStrike twins on the synthetic benchmark; write a report",
                       description="Trains the same small ViT twice (CLS readout, LazyStrike) on the embedded "
                                   "synthetic benchmark and compares them on the held-out split: accuracy, "
                                   "Point-in-Box, score distributions, masking probe, norms, vote maps.")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--paradigm", default="label", choices=["label", "text", "self", "ovdet", "all"],
                   help="supervision: label (default), text (CLIP on the captions), self (DINO), or all three in "
                        "turn; ovdet: open-vocabulary detection (F-ViT) on the frozen text-supervised twins, paper "
                        "Table 5 in miniature; after the first 20 steps of each run the demo prints the time per step "
                        "measured on this machine and the training time it predicts, and at the end the measured total")
    p.add_argument("--quick", action="store_true", help="a short run (the recipe's quick variant: fewer steps and "
                                                        "images; its time is measured and printed like the full run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-images", type=int, default=None,
                   help="held-out images to evaluate (default 1000, 256 with --quick; ovdet: 500, 32 with --quick)")
    p.add_argument("--jobs", type=int, default=None,
                   help="twins trained at once, each in its own process (default: one per twin, at most one per "
                        "core, OMP_NUM_THREADS capping the cores; 1 trains them in turn in this process)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: cores // jobs when parallel, torch's own setting with one "
                        "job); a run's numbers depend on this count, not on --jobs")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe overrides, e.g. trainer.max_steps=500 model.name=vit_mini_patch8_64; for ovdet "
                        "the miniature's settings, e.g. steps=300 train_images=1000 detector.fpn_dim=64")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import yaml

    from lastvit.demo import run_demo

    overrides = {}
    for o in args.overrides:
        if "=" not in o:
            raise ValueError(f"override {o!r} is not KEY=VALUE")
        k, v = o.split("=", 1)
        overrides[k] = yaml.safe_load(v)
    if overrides and args.paradigm == "all":
        raise ValueError("recipe overrides need one paradigm (the three recipes have different keys)")
    run_demo(args.out, paradigm=args.paradigm, quick=args.quick, seed=args.seed, test_images=args.test_images,
             overrides=overrides, jobs=args.jobs, threads=args.threads)
    return 0
