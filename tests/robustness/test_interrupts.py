"""Ctrl-C, SIGTERM and SIGKILL during `analyze` and `evaluate`: no half-written output, and the next run proceeds."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import lastvit
from lastvit.checkpoints import save_checkpoint
from lastvit.data import SyntheticConfig, SyntheticDataset, write_imagefolder
from lastvit.rundir import DONE_NAME, LOCK_NAME

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupt")
    write_imagefolder(SyntheticDataset(SyntheticConfig(), split="val", size=300), root / "data")
    torch.manual_seed(0)
    save_checkpoint(lastvit.create_model("vit_micro_patch8_64", num_classes=10), root / "model.pt")
    return root


def _cmd(tree: Path, verb: str, out: Path, *extra: str) -> list[str]:
    common = ["--checkpoint", str(tree / "model.pt"), "--dataset", "synthetic", "--root", str(tree / "data"),
              "--out", str(out), "--no-progress", *extra]
    # batch 1: a run long enough (hundreds of forward passes) to be interrupted mid-way even on a fast, idle machine
    args = ["analyze", "masking", "--batch-size", "1", *common] if verb == "analyze" else \
        ["evaluate", "classify", "--batch-size", "1", *common]
    return [sys.executable, "-m", "lastvit.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def _default_signals() -> None:
    """The child starts with the default SIGINT / SIGTERM dispositions, as from a shell: an ignored signal in the
    test process (left by another test or by the runner) is inherited through exec and would make it deaf."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start_and_signal(cmd: list[str], out: Path, sig: int) -> subprocess.CompletedProcess:
    """Start ``cmd``, wait until it holds ``out``, let it run a moment and send ``sig``. On a machine fast enough
    to finish in that moment (or to be finishing when the signal lands), try again with a shorter moment (the last: at
    once, after the lock appears)."""
    for delay in (1.0, 0.3, 0.0):
        p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=_default_signals)
        try:
            lock = out / LOCK_NAME
            while not (lock.is_file() and lock.read_text().strip()):  # the run holds the folder: past parsing
                assert p.poll() is None, p.communicate()[1]
                time.sleep(0.02)
            time.sleep(delay)  # into the run: model loaded, images being read (not a timing assertion)
            if p.poll() is not None:  # finished already: start over in a clean folder, interrupt sooner
                p.communicate()
                shutil.rmtree(out)
                continue
            p.send_signal(sig)
            stdout, stderr = p.communicate(timeout=180)
            if (out / "metrics.json").exists():  # the signal came as the run was ending: its work was done
                shutil.rmtree(out)
                continue
            return subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
    raise AssertionError("the run always ended before it could be interrupted")


def _assert_nothing_half_written(out: Path) -> None:
    for f in out.iterdir():
        assert not f.name.endswith(".tmp"), f"temporary file left: {f}"
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".csv":
            rows = list(csv.reader(f.open()))
            assert rows and len({len(r) for r in rows}) == 1, f"ragged CSV {f}"
        elif f.suffix == ".png":
            with Image.open(f) as im:
                im.load()


def _assert_complete_rerun(cmd: list[str], out: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([*cmd, "--limit", "8"], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m and (out / DONE_NAME).is_file() and not (out / LOCK_NAME).exists()
    _assert_nothing_half_written(out)
    return r


@pytest.mark.parametrize("verb,sig,code,word", [
    ("analyze", signal.SIGINT, 130, "interrupted"),
    ("evaluate", signal.SIGTERM, 143, "terminated (SIGTERM)"),
])
def test_interrupt_leaves_complete_outputs_and_no_lock(tree: Path, tmp_path: Path, verb: str, sig: int, code: int,
                                                      word: str):
    out = tmp_path / "out"
    cmd = _cmd(tree, verb, out)
    r = _start_and_signal(cmd, out, sig)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"lastvit {verb} ") and word in r.stderr
    assert not (out / LOCK_NAME).exists() and not (out / DONE_NAME).exists()
    assert not (out / "metrics.json").exists()  # the run ended before its result: none, not a partial one
    _assert_nothing_half_written(out)
    _assert_complete_rerun(cmd, out)


def test_killed_run_leaves_a_stale_lock_that_the_next_run_takes_over(tree: Path, tmp_path: Path):
    out = tmp_path / "out"
    cmd = _cmd(tree, "analyze", out)
    r = _start_and_signal(cmd, out, signal.SIGKILL)
    assert r.returncode == -signal.SIGKILL
    dead = json.loads((out / LOCK_NAME).read_text())["pid"]  # SIGKILL cannot be caught: the lock stays
    _assert_nothing_half_written(out)
    again = _assert_complete_rerun(cmd, out)
    assert f"took over a stale lock in {out} (pid {dead}" in again.stderr
