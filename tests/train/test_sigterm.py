"""SIGTERM during `lastvit train` (as a cluster scheduler sends it) saves a last checkpoint and exits cleanly;
`--resume` then finishes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

SRC = str(Path(__file__).resolve().parents[2] / "src")
STEPS = 400


def _train(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "lastvit.cli", "train", "--config", "tiny_smoke", f"trainer.max_steps={STEPS}",
           "trainer.val_every=200", "trainer.progress_bar=false", f"out_dir={out}", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_saves_last_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    p = _train(out, "trainer.ckpt_every=5")  # the first checkpoint says that training runs
    deadline = time.time() + 240
    while not last.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert last.exists(), "training did not start"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    assert "SIGTERM at step" in err and "--resume" in err
    ck = torch.load(last, map_location="cpu", weights_only=False)
    assert 5 <= ck["global_step"] < STEPS
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()  # nothing claims to be done
    assert not list(out.rglob("*.tmp")) and not (out / ".lastvit.lock").exists()
    r = _train(out, "trainer.ckpt_every=0", "--resume")
    _, err = r.communicate(timeout=600)
    assert r.returncode == 0, err[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["step"] == STEPS
