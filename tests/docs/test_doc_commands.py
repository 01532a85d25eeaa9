"""Documented commands cannot rot: every ``lastvit ...`` line in a code block of README.md and docs/*.md parses
with today's CLI (flags, choices, recipes), and the cheap ones run on synthetic data and a tiny checkpoint.

A documented line is a synopsis: ``[--opt X]`` parts are kept (their brackets dropped), ``a|b`` and ``{a,b}`` take
their first alternative, upper-case placeholders (``CKPT``, ``N``, ``DIR``) become a value of the option's type,
``...`` stands for options shown on an earlier line (those lines only have their flags checked), ``$VAR`` /
``${VAR}`` are names the prose defines (such lines are parsed, their recipes not loaded), and ``# ...`` is a
comment. Commands that need real datasets or checkpoints are parsed only; recipes are loaded (no data is read).
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclass
class DocCommand:
    file: str
    line: int
    text: str
    argv: list[str]
    elided: bool  # the line has "..." standing for options shown elsewhere

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def _strip_comment(line: str) -> str:
    out, quote = [], None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).strip()


def _synopsis_tokens(text: str) -> list[str]:
    # optional parts: "[--opt X]" is kept without its brackets, "[key=value ...]" / "[same options]" is dropped
    text = re.sub(r"\[([^\[\]]*)\]", lambda m: f" {m.group(1)} " if m.group(1).strip().startswith("-") else " ",
                  text)
    toks = []
    for tok in shlex.split(text):
        if tok.startswith("{") and tok.endswith("}"):
            tok = tok[1:-1].split(",")[0]
        elif "|" in tok and not tok.startswith(("'", '"')):
            tok = tok.split("|")[0]
        toks.append(tok)
    return toks


def doc_commands() -> list[DocCommand]:
    found = []
    for f in DOCS:
        text = f.read_text()
        for m in re.finditer(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
            start = text[: m.start(1)].count("\n") + 1
            lines = m.group(1).split("\n")
            i = 0
            while i < len(lines):
                n0, line = i, lines[i]
                while line.rstrip().endswith("\\") and i + 1 < len(lines):  # shell continuation
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
                line = _strip_comment(line.strip().removeprefix("$ "))
                line = re.sub(r"^(\w+=\S+\s+)+", "", line)  # leading VAR=value environment settings
                if not line.startswith("lastvit "):
                    continue
                toks = _synopsis_tokens(line)[1:]
                found.append(DocCommand(f.name, start + n0, line, [t for t in toks if t != "..."],
                                        "..." in toks))
    return found


COMMANDS = doc_commands()


def _parser() -> argparse.ArgumentParser:
    from lastvit.cli import build_parser

    return build_parser()


def _leaf(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub)parser an argv ends in, and the argv after its name."""
    p, rest = parser, list(argv)
    while True:
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            return p, rest
        idx = next((i for i, t in enumerate(rest) if not t.startswith("-")), None)
        if idx is None or rest[idx] not in sub.choices:
            raise AssertionError(f"unknown command {rest[idx] if idx is not None else ''!r} "
                                 f"(known: {sorted(sub.choices)})")
        p, rest = sub.choices[rest[idx]], rest[idx + 1:]


def _fill(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Replace placeholders by a value of the option's type (``--num-classes N`` -> ``--num-classes 1``)."""
    leaf, _ = _leaf(parser, argv)
    opts = {s: a for a in leaf._actions for s in a.option_strings}
    out = []
    for i, tok in enumerate(argv):
        prev = opts.get(argv[i - 1]) if i else None
        if PLACEHOLDER.match(tok) and prev is not None and prev.nargs != 0:
            if prev.choices:
                tok = str(next(iter(prev.choices)))
            elif prev.type is int:
                tok = "1"
            elif prev.type is float:
                tok = "0.5"
        out.append(tok)
    return out


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = _parser()
    argv = _fill(parser, argv)
    try:
        return parser.parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"argparse rejected {argv} (exit {e.code})") from None


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.id for c in COMMANDS])
def test_documented_command_parses(cmd: DocCommand, capsys):
    parser = _parser()
    if cmd.elided:  # only its flags and subcommand names can be checked
        leaf, rest = _leaf(parser, cmd.argv)
        known = {s for a in leaf._actions for s in a.option_strings}
        unknown = [t for t in rest if t.startswith("--") and t.split("=")[0] not in known]
        assert not unknown, f"{cmd.id}: {cmd.text!r} uses unknown option(s) {unknown}"
        return
    shell_vars = any("$" in t for t in cmd.argv)  # ${FAM}, $CKPT: names the prose defines; parse only
    args = _parse([re.sub(r"\$\{?(\w+)\}?", r"\1", t) for t in cmd.argv])
    if shell_vars:
        return
    if args.command == "train":  # the recipe and its overrides must load (no data is read)
        from lastvit.cli import run_folder  # noqa: F401  (the same resolution the CLI does)
        from lastvit.train import load_config

        overrides = list(getattr(args, "overrides", []) or [])
        load_config(args.config, overrides)
    if args.command == "study":
        from lastvit.study import load_study

        load_study(args.config)
    capsys.readouterr()


def test_docs_have_commands():
    verbs = {c.argv[0] for c in COMMANDS if c.argv}
    assert {"demo", "inspect", "convert", "train", "analyze", "evaluate", "data", "study"} <= verbs


# --------------------------------------------------------------------------------------------- cheap runs
@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    import lastvit
    from lastvit.checkpoints import save_checkpoint
    from lastvit.data import SyntheticConfig, SyntheticDataset, write_imagefolder

    d = tmp_path_factory.mktemp("doc_assets")
    torch.manual_seed(0)
    save_checkpoint(lastvit.create_model("vit_micro_patch8_64", num_classes=10), d / "model.pt")
    write_imagefolder(SyntheticDataset(SyntheticConfig(), split="val", size=4), d / "synth")
    return {"ckpt": d / "model.pt", "root": d / "synth", "tmp": d}


def _runnable(cmd: DocCommand) -> bool:
    a = cmd.argv
    if cmd.elided or not a:
        return False
    if any(PLACEHOLDER.match(t) and p in MODEL_OPTIONS for p, t in zip(a, a[1:], strict=False)):
        return False  # a synopsis of model options (--format F, --num-heads H): parsed, not run
    if a[0] in ("inspect", "convert"):
        return True
    if a[:2] == ["data", "synth"]:
        return True
    if a[:2] == ["data", "check"]:
        return len(a) > 2 and a[2] == "synthetic"
    return a[0] == "analyze" and "--dataset" in a[:-1] and a[a.index("--dataset") + 1] == "synthetic"


MODEL_OPTIONS = ("--arch", "--format", "--num-heads", "--text-heads", "--aggregator")
RUNS = [c for c in COMMANDS if _runnable(c)]


def _substitute(argv: list[str], assets: dict[str, Path], n: int) -> list[str]:
    out = []
    for i, tok in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if prev == "--out":
            tok = str(assets["tmp"] / f"out{n}" / Path(tok).name)
        elif prev == "--root":
            tok = str(assets["root"])
        elif prev == "--checkpoint" or (i == 1 and argv[0] in ("inspect", "convert")):
            tok = str(assets["ckpt"])
        out.append(tok)
    if argv[:2] == ["data", "synth"]:
        out += ["--size", "4"]
    return out


@pytest.mark.parametrize("cmd", RUNS, ids=[c.id for c in RUNS])
def test_cheap_documented_command_runs(cmd: DocCommand, assets: dict[str, Path], capsys):
    from lastvit.cli import main

    argv = _fill(_parser(), _substitute(cmd.argv, assets, RUNS.index(cmd)))
    if argv[0] == "analyze":
        argv.append("--no-progress")
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 0, f"{cmd.id}: {' '.join(argv)} -> exit {rc}: {err}"
    assert "Traceback" not in err


def _all_verbs() -> list[list[str]]:
    parser = _parser()
    paths, todo = [], [([], parser)]
    while todo:
        path, p = todo.pop()
        if path:
            paths.append(path)
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += [([*path, n], c) for n, c in a.choices.items()]
    return sorted(paths)


@pytest.mark.parametrize("verb", _all_verbs(), ids=[" ".join(v) for v in _all_verbs()])
def test_help_of_every_verb(verb: list[str], capsys):
    from lastvit.cli import main

    with pytest.raises(SystemExit) as e:
        main([*verb, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: lastvit {' '.join(verb)}")
