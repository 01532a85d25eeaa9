"""``lastvit convert CKPT --out FILE``: any supported checkpoint -> lastvit's own format (written atomically)."""

from __future__ import annotations

import argparse

from lastvit.cli.inspect import add_checkpoint_options, load_options


def run(args: argparse.Namespace) -> int:
    import warnings

    from lastvit.checkpoints import ArchitectureGuessWarning, build_from_converted, read_checkpoint, save_checkpoint

    opts = load_options(args, aggregator=args.aggregator, num_classes=args.num_classes, visual_only=args.visual_only)
    ckpt = read_checkpoint(args.checkpoint, opts.format, options=opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ArchitectureGuessWarning)  # the guesses are printed below as notes
        model = build_from_converted(ckpt, opts)
    report = model.load_report
    out = save_checkpoint(model, args.out, extra={"converted_from": str(args.checkpoint),
                                                  "source_format": ckpt.format})
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({type(model).__name__}, {n:,} parameters, from {ckpt.format})")
    for note in report.notes:
        print(f"  note: {note}")
    for group, keys in report.skipped.items():
        print(f"  skipped: {group}: {len(keys)}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert a checkpoint of any supported format to lastvit's format",
                              description=__doc__)
    add_checkpoint_options(p)
    p.add_argument("--out", required=True, help="output file (lastvit format; written atomically)")
    p.add_argument("--aggregator", default=None, help="readout to store (default: the file's, else lazystrike)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (0: drop the head)")
    p.add_argument("--visual-only", action="store_true", help="for a whole-CLIP file, keep only the image tower")
    p.set_defaults(func=run)
