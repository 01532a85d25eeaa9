"""What ``lastvit evaluate`` and ``lastvit analyze`` share: the model options and loading a model with its report.

:func:`add_model_args` adds ``--checkpoint``, ``--model``, ``--aggregator`` and every loading option of ``inspect`` /
``convert`` (``--num-heads``, ``--text-heads``, ``--arch``, ``--quick-gelu``, ``--no-strict``, ``--allow-pickle``,
``--pos-interp``, ``--format``, ``--dino-branch``, ``--allow-nonfinite``); :func:`load_model` builds the model and
returns it with its load report (a JSON-ready dict for ``metrics.json``: format, key report, notes, architecture
guesses, and the checkpoint's recorded training metadata).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

from torch import nn

__all__ = ["add_model_args", "load_model"]


def add_model_args(parser: argparse.ArgumentParser, *, aggregator: bool = True) -> argparse._ArgumentGroup:
    """Add the model options to ``parser`` (in a "model" group, returned so a command can add its own)."""
    from lastvit.cli.inspect import add_load_options

    g = parser.add_argument_group("model")
    g.add_argument("--checkpoint", help="model file (any format lastvit reads; see `lastvit inspect`)")
    g.add_argument("--model", help="architecture name (with --checkpoint: a preset / timm name supplying what the "
                                   "file lacks; alone: a randomly initialised model)")
    if aggregator:
        g.add_argument("--aggregator", help="override the readout (lazystrike, cls, mean, max, attn)")
    add_load_options(g)
    return g


def _guesses(conv: Any) -> list[str]:
    """The architecture guesses recorded in a converted checkpoint's notes."""
    if callable(getattr(conv, "guesses", None)):
        return list(conv.guesses())
    return [n for n in conv.notes if n.startswith(("num_heads is not stored", "CLIP text heads are not stored"))]


def load_model(args: argparse.Namespace, *, need_clip: bool = False, image_tower: bool = True,
               aggregator_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model of parsed :func:`add_model_args` options (eval mode, on CPU) and its load report.

    ``need_clip``: a whole CLIP (image and text towers) is required. Otherwise, with ``image_tower``, a whole-CLIP
    file gives its image tower (a ``LastViT``). The report: ``{"checkpoint", "format", "load" (loaded / missing /
    unexpected / mismatched / skipped keys, notes), "guesses", "options", "extra" (the ``extra`` a lastvit file
    records: training step, data settings ...)}``; for a random-init ``--model``: ``{"checkpoint": None, "model",
    "random_init": True}``. Errors are one line (``CheckpointError``, ``FileNotFoundError``, ``ValueError``).
    """
    from lastvit.cli.inspect import load_options

    agg = getattr(args, "aggregator", None)
    if args.checkpoint:
        from lastvit.checkpoints import ArchitectureGuessWarning, build_from_converted, read_checkpoint

        if not os.path.isfile(args.checkpoint):
            raise FileNotFoundError(f"{args.checkpoint}: no such checkpoint file")
        fields: dict[str, Any] = {}
        if args.model:
            fields["name"] = args.model
        if agg:
            fields["aggregator"] = agg
        if aggregator_kwargs:
            fields["aggregator_kwargs"] = dict(aggregator_kwargs)
        opts = load_options(args, **fields)
        conv = read_checkpoint(args.checkpoint, opts.format, options=opts)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ArchitectureGuessWarning)
            model = build_from_converted(conv, opts)
        for w in caught:  # the guesses are reported (stderr once, and in metrics.json), never silent
            if issubclass(w.category, ArchitectureGuessWarning):
                print(f"warning: {w.message}", file=sys.stderr, flush=True)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        rep = getattr(model, "load_report", None)
        report: dict[str, Any] = {
            "checkpoint": os.fspath(args.checkpoint),
            "format": conv.format,
            "load": rep.to_dict() if hasattr(rep, "to_dict") else (str(rep) if rep is not None else None),
            "guesses": _guesses(conv),
            "options": {k: v for k, v in vars(opts).items() if k not in ("verbose",)},
            "extra": conv.extra if isinstance(conv.extra, dict) else None,
        }
    elif args.model:
        if need_clip:
            raise ValueError("this needs a whole-CLIP --checkpoint (image and text towers)")
        from lastvit.factory import create_model

        model = create_model(args.model, aggregator=agg, aggregator_kwargs=aggregator_kwargs or None)
        report = {"checkpoint": None, "model": args.model, "random_init": True}
    else:
        raise ValueError("give --checkpoint" + ("" if need_clip else " (or --model for a randomly initialised model)"))
    if need_clip:
        if not (hasattr(model, "encode_text") and hasattr(model, "visual")):
            raise ValueError(f"{args.checkpoint}: this needs a whole-CLIP checkpoint (image and text towers); "
                             f"got a {type(model).__name__}")
        return model.eval(), report
    if image_tower:
        from lastvit.models import as_vit

        try:
            model = as_vit(model)
        except TypeError:
            raise ValueError(f"{args.checkpoint}: the model has no LastViT image tower") from None
    return model.eval(), report
