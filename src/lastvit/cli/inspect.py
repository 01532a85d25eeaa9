"""``lastvit inspect CKPT``: format, inferred architecture, parameter count, key report and notes of a checkpoint."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_load_options(p: argparse.ArgumentParser) -> None:
    """The model-loading options of every command that reads a checkpoint (``inspect``, ``convert``; ``evaluate``
    and ``analyze`` through ``cli._common``). :func:`load_options` turns them into a ``LoadOptions``."""
    from lastvit.checkpoints import FORMATS, POS_INTERP

    p.add_argument("--format", default="auto", help=f"auto (default) or one of: {', '.join(FORMATS)}")
    p.add_argument("--dino-branch", choices=("teacher", "student"), default="teacher",
                   help="branch of a DINO training checkpoint (default: teacher)")
    p.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                   help="activation of CLIP towers (default: QuickGELU for OpenAI files, GELU for open_clip)")
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads (not stored in weights; default width/64, reported as a guess)")
    p.add_argument("--text-heads", type=int, default=None, help="CLIP text-tower heads (default width/64)")
    p.add_argument("--arch", default=None, metavar="NAME_OR_JSON",
                   help="open_clip model name (e.g. ViT-B-16, read from open_clip's bundled configs) or model-config "
                        "JSON: supplies the head counts (and activation) the weights do not record")
    p.add_argument("--pos-interp", choices=POS_INTERP, default=None,
                   help="position-embedding resampling at other input sizes (default: the file's family)")
    p.add_argument("--allow-pickle", dest="allow_pickle", action="store_true", default=False,
                   help="unpickle Python objects beyond the allow-list of harmless types "
                        "(torch.load(weights_only=False): can run code; only for files you trust)")
    p.add_argument("--no-pickle", dest="allow_pickle", action="store_false",
                   help="refuse files that need full unpickling (the default)")
    p.add_argument("--allow-nonfinite", action="store_true", help="load NaN / Inf weights instead of refusing them")
    p.add_argument("--no-strict", dest="strict", action="store_false",
                   help="allow a partial load (missing / unexpected / mis-shaped keys are reported)")


def load_options(args: argparse.Namespace, **fields: Any):
    """The :class:`lastvit.checkpoints.LoadOptions` of parsed :func:`add_load_options` arguments (plus ``fields``)."""
    from lastvit.checkpoints import LoadOptions

    return LoadOptions(format=args.format, strict=args.strict, dino_branch=args.dino_branch,
                       quick_gelu=args.quick_gelu, num_heads=args.num_heads, text_heads=args.text_heads,
                       arch=args.arch, pos_interp=args.pos_interp, allow_pickle=args.allow_pickle,
                       allow_nonfinite=args.allow_nonfinite, **fields)


def add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``inspect`` and ``convert``: the checkpoint and :func:`add_load_options`."""
    p.add_argument("checkpoint", metavar="CKPT", help="a local checkpoint file")
    add_load_options(p)


def _fmt_arch(arch: dict[str, Any]) -> str:
    keys = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "class_token",
            "reg_tokens", "no_embed_class", "pre_norm", "act", "norm_eps", "init_values", "family", "eva", "proj_bias")
    return ", ".join(f"{k}={arch[k]}" for k in keys if k in arch)


def _guesses(notes: list[str]) -> list[str]:
    """The architecture-guess lines among ``notes`` (``ConvertedCheckpoint.guesses()`` for a checkpoint)."""
    from lastvit.checkpoints.records import GUESS_PREFIXES

    return [n for n in notes if n.startswith(GUESS_PREFIXES)]


def run(args: argparse.Namespace) -> int:
    import warnings

    from lastvit.checkpoints import FORMATS, ArchitectureGuessWarning, build_from_converted, read_checkpoint

    opts = load_options(args, visual_only=True)
    ckpt = read_checkpoint(args.checkpoint, opts.format, options=opts)
    # Build the image tower from the file and load it: proves the weights fit (strict unless --no-strict).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ArchitectureGuessWarning)  # printed below as "guess:" lines instead
        model = build_from_converted(ckpt, opts)
    report = model.load_report
    guesses = ckpt.guesses()
    if args.json:
        out = ckpt.summary()
        out["arch"] = getattr(model, "arch", out["arch"])
        out["load"] = report.to_dict() if hasattr(report, "to_dict") else str(report)
        out["model_params"] = sum(p.numel() for p in model.parameters())
        out["guesses"] = guesses
        print(json.dumps(out, indent=2, default=str))
        return 0
    arch = getattr(model, "arch", ckpt.arch)
    print(f"checkpoint: {ckpt.path}")
    print(f"format:     {ckpt.format} - {FORMATS.get(ckpt.format, '')}")
    print(f"model:      {type(model).__name__}")
    if arch:
        print(f"arch:       {_fmt_arch(arch)}")
    if arch and "pos_interp" in arch:
        print(f"pos_interp: {arch['pos_interp']} (position-embedding resampling at other input sizes)")
    for g in guesses:
        print(f"guess:      {g}")
    print(f"head:       {ckpt.head[0]}" + (f" ({ckpt.head[1]})" if ckpt.head[0] != "none" else ""))
    readout = getattr(model, "aggregator_name", None) or (ckpt.readout[0] if ckpt.readout else None)
    if readout:
        kw = getattr(model, "aggregator_kwargs", None) or (ckpt.readout[1] if ckpt.readout else {})
        print(f"readout:    {readout} {kw if kw else ''}".rstrip())
    n_model = sum(p.numel() for p in model.parameters())
    line = f"params:     {n_model:,} in the model; file tensors: {ckpt.num_params():,}"
    if ckpt.num_params("encoder"):
        line += f" (encoder {ckpt.num_params('encoder'):,}, head {ckpt.num_params('head'):,})"
    if ckpt.clip is not None:
        line += f"; text tower {ckpt.num_params('text'):,}"
    print(line)
    if ckpt.clip is not None:
        cfg = ckpt.clip.get("config", {})
        print("clip text:  " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    print("\n".join(str(report).splitlines()[1:]))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="show a checkpoint's format, architecture, parameters and key report",
                              description=__doc__)
    add_checkpoint_options(p)
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    p.set_defaults(func=run)
