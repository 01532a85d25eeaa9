"""The CLI's shared behaviour: one line per known error, quiet runs, a --help that imports no subcommand."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lastvit
from lastvit.checkpoints import save_checkpoint
from lastvit.cli import COMMANDS, build_parser, main
from lastvit.data import SyntheticConfig, SyntheticDataset, write_imagefolder

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("test_rundir.py")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def _one_line(capsys, verb: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"lastvit {verb}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_errors")
    write_imagefolder(SyntheticDataset(SyntheticConfig(num_classes=2, image_size=64), split="val", size=2),
                      root / "data")
    torch.manual_seed(0)
    save_checkpoint(lastvit.create_model("vit_micro_patch8_64", num_classes=2), root / "model.pt")
    (root / "a_file").write_text("not a folder")
    from tests.robustness.test_rundir import TINY as RECIPE

    (root / "tiny.yaml").write_text(RECIPE.format(out=root / "unused", steps=2))
    (root / "bad_type.yaml").write_text(RECIPE.format(out=root / "unused", steps="ten"))
    return root


def _argv(tree: Path, verb: str, out: Path) -> tuple[list[str], str]:
    ck, data = str(tree / "model.pt"), str(tree / "data")
    return {
        "analyze": (["analyze", "pib", "--checkpoint", ck, "--dataset", "synthetic", "--root", data, "--out",
                     str(out), "--no-progress"], "analyze pib"),
        "evaluate": (["evaluate", "classify", "--checkpoint", ck, "--dataset", "synthetic", "--root", data,
                      "--out", str(out), "--no-progress"], "evaluate classify"),
        "train": (["train", "--config", str(tree / "tiny.yaml"), "--out", str(out)], "train"),
        "data synth": (["data", "synth", "--out", str(out), "--size", "2"], "data synth"),
        "demo": (["demo", "--quick", "--out", str(out)], "demo"),
        "convert": (["convert", ck, "--out", str(out / "model.pt")], "convert"),
    }[verb]


@pytest.mark.parametrize("verb", ["analyze", "evaluate", "train", "data synth", "demo", "convert"])
@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_out_that_is_a_file_or_under_one_is_one_line(tree: Path, verb: str, where: str, capsys):
    out = tree / "a_file" if where == "is_a_file" else tree / "a_file" / "sub"
    if verb == "convert" and where == "is_a_file":
        out = tree / "a_file" / "deeper"  # convert's --out is a file: "under a file" twice
    argv, label = _argv(tree, verb, out)
    assert main(argv) != 0
    line = _one_line(capsys, label)
    assert str(tree / "a_file") in line
    assert (tree / "a_file").read_text() == "not a folder"


def test_a_wrong_type_in_the_recipe_is_one_line(tree: Path, capsys):
    assert main(["train", "--config", str(tree / "bad_type.yaml"), "--out", str(tree / "t")]) != 0
    assert "max_steps" in _one_line(capsys, "train")


def test_cuda_without_a_gpu_is_one_line(tree: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    argv, label = _argv(tree, "analyze", tmp_path / "o")
    assert main([*argv, "--device", "cuda"]) != 0
    assert "--device cuda: no CUDA GPU is available here" in _one_line(capsys, label)
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_commands_table_matches_the_modules():
    """The fast top-level listing (no module imported) shows what each module registers."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert helps == COMMANDS
    for name in COMMANDS:
        assert hasattr(importlib.import_module(f"lastvit.cli.{name}"), "register")


def test_every_folder_out_gets_overwrite_and_resume_where_resumable():
    parser = build_parser()
    seen = []
    todo = [("", parser)]
    while todo:
        path, p = todo.pop()
        dests = {a.dest for a in p._actions}
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += [(f"{path} {n}".strip(), c) for n, c in a.choices.items()]
        if "out" in dests and path:
            seen.append(path)
            assert ("overwrite" in dests) == (path != "convert"), path
            if path.split()[0] in ("train", "study"):
                assert "resume" in dests, path
    assert {"train", "study", "demo", "analyze", "data synth", "evaluate classify", "convert"} <= set(seen)


def test_help_imports_no_subcommand_module():
    code = ("import sys; from lastvit.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "print(sorted(m for m in sys.modules if m.startswith('lastvit.cli.')))")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert all(name in r.stdout for name in COMMANDS)


def test_train_is_quiet(tree: Path, tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "lastvit.cli", "train", "--config", str(tree / "tiny.yaml"),
                        "--out", str(tmp_path / "t")], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for noise in ("GPU available", "TPU available", "LeafSpec", "weights_only", "litlogger", "Warning"):
        assert noise not in r.stderr + r.stdout, noise
    assert r.stdout.strip().startswith("lastvit train: done ->")


def test_a_finished_folder_is_refused_then_replaced_with_overwrite(tmp_path: Path, capsys):
    out = tmp_path / "synth"
    argv = ["data", "synth", "--out", str(out), "--size", "2", "--image-size", "32"]
    assert main(argv) == 0
    first = sorted(p.name for p in (out / "val").rglob("*.png"))
    capsys.readouterr()
    assert main(argv) != 0
    line = _one_line(capsys, "data synth")
    assert f"--out {out} holds a finished run" in line and "--overwrite" in line and "--resume" not in line
    assert main([*argv, "--overwrite", "--seed", "1"]) == 0
    assert sorted(p.name for p in (out / "val").rglob("*.png")) == first and (out / ".lastvit-done.json").is_file()
    assert "replacing a finished run" in capsys.readouterr().err


def test_an_unknown_readout_option_and_an_unquoted_mapping_are_one_line(tmp_path: Path, capsys):
    assert main(["train", "--config", "tiny_smoke", "model.aggregator_kwargs={k: 7, bogus: 1}",
                 "--out", str(tmp_path / "a")]) != 0
    assert "has no option 'bogus'" in _one_line(capsys, "train")
    # what the shell makes of an unquoted `model.aggregator_kwargs={k: 7}`: two words
    assert main(["train", "--config", "tiny_smoke", "model.aggregator_kwargs={k:", "7}",
                 "--out", str(tmp_path / "b")]) != 0
    assert "must be quoted as one shell word" in _one_line(capsys, "train")
