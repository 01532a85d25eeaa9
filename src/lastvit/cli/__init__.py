"""The ``lastvit`` command. Each module in this package that defines ``register(subparsers)`` adds one
subcommand (``demo``, ``inspect``, ``convert``, ``train``, ``analyze``, ``evaluate`` ...).

Shared behaviour, wired here once for every subcommand:

- **Fast help.** ``lastvit --help`` lists the commands from :data:`COMMANDS` without importing their modules;
  ``lastvit VERB ...`` imports only that verb's module.
- **One live run per output folder.** Every command whose parser has ``--out`` naming a folder (train, study,
  analyze, evaluate, demo, data synth, data check) runs inside :func:`lastvit.rundir.claim_run`; ``--overwrite``
  is added to each of them, ``--resume`` to study (train has its own). ``convert --out`` names one file, written
  atomically, and is not locked.
- **One line per known error.** User errors (``ValueError`` and its subclasses such as ``CheckpointError``,
  ``ConfigError``, ``DataError``; ``OSError`` such as a missing file or an ``--out`` that is a file, under a file or
  read-only; Ctrl-C / SIGTERM) print ``lastvit VERB: error: ...`` on stderr and exit non-zero; ``LASTVIT_DEBUG=1``
  shows the traceback instead.
- **Quiet.** Library warnings a user cannot act on (Lightning's hardware banner and tips, deprecations inside
  libraries, ``weights_only`` defaults) are filtered; ``LASTVIT_DEBUG=1`` shows them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings

#: name -> one-line help, for the command listing (kept equal to each module's ``add_parser(help=...)`` by a test)
COMMANDS: dict[str, str] = {
    "analyze": "diagnostics of lazy aggregation: Point-in-Box, patch scores, masking probe, norms, votes, PCA, "
               "attention",
    "convert": "convert a checkpoint of any supported format to lastvit's format",
    "data": "write the synthetic benchmark to disk, or check a dataset reads",
    "demo": "train CLS and LazyStrike twins on the synthetic benchmark; write a report",
    "evaluate": "downstream evaluations: zero-shot / coarse segmentation, object discovery, classification",
    "inspect": "show a checkpoint's format, architecture, parameters and key report",
    "study": "run the miniature study (readouts x seeds) and write study.md",
    "train": "train a model from a YAML recipe (label supervision, CLIP, DINO) on CPU or GPUs",
}

#: commands whose ``--out`` is a file, not a run folder: not locked
UNLOCKED = frozenset({"convert"})
#: commands that can continue a finished run with ``--resume``
RESUMABLE = frozenset({"train", "study"})

# messages of warnings a user cannot act on (regular expressions matched at the start of the message)
_QUIET_WARNINGS = (
    r".*`weights_only` was not set",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The '\w+_dataloader' does not have many workers",
    r"GPU available but not used",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"Checkpoint directory .* exists and is not empty",
    r".*torch.meshgrid: in an upcoming release",
    r".*You are using `torch.load` with `weights_only=False`",
    r"Found \d+ module\(s\) in eval mode",
    r".*does not have many workers which may be a bottleneck",
    r"Trying to infer the `batch_size` from an ambiguous collection",
)


def _version() -> str:
    from lastvit import __version__

    return __version__


def _base_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="lastvit",
        description="LaSt-ViT (LazyStrike): readouts, training, diagnostics and evaluations for ViTs.",
        epilog="`lastvit COMMAND --help` shows a command's options. LASTVIT_DEBUG=1 shows tracebacks and library "
               "warnings.",
    )
    parser.add_argument("--version", action="version", version=f"lastvit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser, sub


def _command_modules() -> list[str]:
    import pkgutil

    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def _walk(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every parser below it (nested subcommands), each once."""
    seen: dict[int, argparse.ArgumentParser] = {}
    todo = [parser]
    while todo:
        p = todo.pop()
        if id(p) in seen:
            continue
        seen[id(p)] = p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo.extend(a.choices.values())
    return list(seen.values())


def _dests(p: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in p._actions}


def _add_run_options(command: str, parser: argparse.ArgumentParser) -> None:
    """Add ``--overwrite`` (and ``--resume`` where the command can resume) to every parser with a folder ``--out``."""
    if command in UNLOCKED:
        return
    for p in _walk(parser):
        d = _dests(p)
        if "out" not in d:
            continue
        if "overwrite" not in d:
            p.add_argument("--overwrite", action="store_true",
                           help="replace a finished run in --out, deleting the files it wrote first (also: take over "
                                "a lock written on another host)")
        if command in RESUMABLE and "resume" not in d:
            p.add_argument("--resume", action="store_true",
                           help="continue the finished run in --out (an interrupted run, without a completion "
                                "marker, is continued anyway)")


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser (every command registered), or with ``commands`` only those; the others are listed by name
    (their options are not known to that parser)."""
    parser, sub = _base_parser()
    names = _command_modules()
    wanted = names if commands is None else [c for c in names if c in commands]
    for name in names:
        if name in wanted or name not in COMMANDS:  # a module missing from COMMANDS is imported to list it
            mod = importlib.import_module(f"{__name__}.{name}")
            if hasattr(mod, "register"):
                mod.register(sub)
                if name in sub.choices:
                    _add_run_options(name, sub.choices[name])
        elif name in COMMANDS:
            sub.add_parser(name, help=COMMANDS[name], add_help=False)
    return parser


def _find_command(argv: list[str]) -> str | None:
    for tok in argv:
        if tok == "--":
            return None
        if not tok.startswith("-"):
            return tok
    return None


# ------------------------------------------------------------------------------------------------ run folders
def _train_out(args: argparse.Namespace) -> tuple[str | None, bool]:
    from lastvit.train import load_config

    overrides = list(getattr(args, "overrides", []) or [])
    if args.out:
        overrides.append(f"out_dir={args.out}")
    cfg = load_config(args.config, overrides)
    trainer = cfg.get("trainer") or {}
    resume = bool(args.resume) or trainer.get("resume") not in (None, False, "", "false", "False", "no")
    return str(cfg.get("out_dir") or "runs/train"), resume


def _study_out(args: argparse.Namespace) -> tuple[str | None, bool]:
    if args.out:
        return args.out, bool(getattr(args, "resume", False))
    from lastvit.study import load_study

    cfg = load_study(args.config)
    return f"runs/study/{cfg.get('name', 'study')}", bool(getattr(args, "resume", False))


def run_folder(args: argparse.Namespace) -> tuple[str | None, bool]:
    """(the folder this command writes into, or None when it is not locked; whether it resumes)."""
    command = args.command
    if command in UNLOCKED:
        return None, False
    if command == "train":
        return _train_out(args)
    if command == "study":
        return _study_out(args)
    out = getattr(args, "out", None)
    return (str(out) if out else None), bool(getattr(args, "resume", False))


def _command_name(args: argparse.Namespace) -> str:
    parts = [args.command]
    for key in ("kind", "task", "data_command"):
        v = getattr(args, key, None)
        if isinstance(v, str):
            parts.append(v)
    return " ".join(parts)


# ------------------------------------------------------------------------------------------------ quiet + errors
@contextlib.contextmanager
def _quiet():
    """Filter the warnings and info logs a user cannot act on while a command runs (restored afterwards, so an
    in-process caller such as a test keeps its own settings)."""
    if os.environ.get("LASTVIT_DEBUG"):
        yield
        return
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning",
                                               "pytorch_lightning")]
    levels = [lg.level for lg in loggers]
    tip = os.environ.get("LITLOGGER_DISABLE_TIP")
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning,
                                module=r"(torch|timm|lightning|open_clip|torchvision)")
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        os.environ["LITLOGGER_DISABLE_TIP"] = "1"
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
            if tip is None:
                os.environ.pop("LITLOGGER_DISABLE_TIP", None)
            else:
                os.environ["LITLOGGER_DISABLE_TIP"] = tip


def _check_device(args: argparse.Namespace) -> None:
    dev = getattr(args, "device", None)
    if not isinstance(dev, str) or not dev.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"--device {dev}: no CUDA GPU is available here (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu")
    idx = dev.partition(":")[2]
    if idx and (not idx.isdigit() or int(idx) >= torch.cuda.device_count()):
        raise ValueError(f"--device {dev}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def _one_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in msg:
        msg = f"{e.filename}: {msg}"
    return msg.splitlines()[0] if msg else msg


def _is_user_error(e: BaseException) -> bool:
    if isinstance(e, ValueError | OSError):
        return True
    # PIL's DecompressionBombError is a plain Exception; matched by name so PIL is not imported here
    return type(e).__name__ in ("DecompressionBombError", "ConfigError", "CheckpointError", "DataError")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = _find_command(argv)
    parser = build_parser([name] if name else [])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    label = _command_name(args)
    debug = bool(os.environ.get("LASTVIT_DEBUG"))
    with _quiet():
        return _dispatch(args, label, debug)


def _dispatch(args: argparse.Namespace, label: str, debug: bool) -> int:
    try:
        _check_device(args)
        out, resume = run_folder(args)
        if out is None:
            return int(args.func(args) or 0)
        from lastvit.rundir import claim_run, sigterm_received

        with claim_run(out, command=label, resume=resume, overwrite=bool(getattr(args, "overwrite", False)),
                       resumable=args.command in RESUMABLE) as claim:
            rc = int(args.func(args) or 0)
            claim.completed = rc == 0
        if sigterm_received():  # a library (Lightning) handled SIGTERM and returned normally
            print(f"lastvit {label}: terminated (SIGTERM); the run stopped early and is not marked finished",
                  file=sys.stderr)
            return 143
        return rc
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"lastvit {label}: interrupted; complete outputs kept, nothing half-written", file=sys.stderr)
        return 130
    except SystemExit as e:  # SIGTERM during a run (RunInterrupted), or a library's exit
        from lastvit.rundir import RunInterrupted

        if isinstance(e, RunInterrupted) and not debug:
            print(f"lastvit {label}: terminated (SIGTERM); complete outputs kept, nothing half-written",
                  file=sys.stderr)
        raise
    except Exception as e:
        if debug or not _is_user_error(e):
            raise
        print(f"lastvit {label}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
