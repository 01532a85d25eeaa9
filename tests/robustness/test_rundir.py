"""One live run per output folder (lastvit.rundir.claim_run), wired into every command with a folder --out."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lastvit.rundir import DONE_NAME, LOCK_NAME, RunDirError, RunInterrupted, claim_run

ROOT = Path(__file__).resolve().parents[2]
TINY = """\
task: classify
out_dir: {out}
model:
  name: vit_micro_patch8_64
  arch: {{img_size: 32, embed_dim: 32, depth: 1, num_heads: 2}}
  aggregator: lazystrike
data:
  kind: synthetic
  synthetic: {{num_classes: 4, image_size: 32}}
  train_size: 64
  val_size: 24
  global_batch: 16
optim: {{lr: 1.0e-3, weight_decay: 0.05}}
trainer: {{accelerator: cpu, devices: 1, max_steps: {steps}, log_every: 2, val_every: 5, ckpt_every: 5, seed: 0,
           progress_bar: false}}
"""


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _enter(out: Path, **kw) -> None:
    with claim_run(out, **kw):
        pass


def _write_lock(out: Path, **info) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                             "command": "analyze pib", **info}))


def test_a_live_run_refuses_a_second_and_the_lock_goes_on_exit(tmp_path: Path):
    out = tmp_path / "run"
    with claim_run(out, command="analyze pib") as claim:
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["command"] == "analyze pib" and info["started"]
        with pytest.raises(RunDirError, match=rf"{out} is in use by a live run \(pid {os.getpid()}"):
            _enter(out, command="analyze pib")
        assert (out / LOCK_NAME).is_file()  # the refused claim left the live lock alone
        assert claim.notes == []
    assert not (out / LOCK_NAME).exists()
    done = json.loads((out / DONE_NAME).read_text())
    assert done["command"] == "analyze pib" and done["finished"]


def test_a_failed_run_removes_its_lock_and_writes_no_marker(tmp_path: Path):
    out = tmp_path / "run"
    with pytest.raises(KeyError), claim_run(out, command="evaluate classify"):
        raise KeyError("boom")
    assert not (out / LOCK_NAME).exists() and not (out / DONE_NAME).exists()
    with claim_run(out, command="evaluate classify") as claim:  # an unfinished run's folder is reused
        claim.completed = False  # a command that returned non-zero: no marker either
    assert not (out / DONE_NAME).exists()


def test_stale_lock_is_taken_over_with_a_note(tmp_path: Path, capsys):
    out = tmp_path / "run"
    dead = _dead_pid()
    _write_lock(out, pid=dead)
    with claim_run(out, command="analyze pib") as claim:
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert any(f"took over a stale lock in {out} (pid {dead}" in n for n in claim.notes)
    assert f"note: took over a stale lock in {out}" in capsys.readouterr().err


def test_reused_pid_is_stale(tmp_path: Path):
    out = tmp_path / "run"
    _write_lock(out, pid=os.getpid(), proc_start="1")  # this PID is alive but started at another time
    if not Path(f"/proc/{os.getpid()}/stat").is_file():
        pytest.skip("no /proc: process start times cannot be compared on this system")
    with claim_run(out, command="analyze pib") as claim:
        pass
    assert claim.notes and "stale" in claim.notes[0]


def test_another_hosts_lock_needs_overwrite(tmp_path: Path):
    out = tmp_path / "run"
    _write_lock(out, host="some-other-node")
    with pytest.raises(RunDirError, match="locked by a run on another host .*some-other-node.*--overwrite"):
        _enter(out, command="train")
    with claim_run(out, command="train", overwrite=True) as claim:
        assert json.loads((out / LOCK_NAME).read_text())["host"] == socket.gethostname()
    assert "some-other-node" in claim.notes[0]


@pytest.mark.parametrize("marker", [DONE_NAME, "metrics.json"])
def test_finished_run_resume_overwrite_or_refuse(tmp_path: Path, marker: str):
    out = tmp_path / "run"
    out.mkdir()
    (out / marker).write_text("{}")
    with pytest.raises(RunDirError, match=rf"{out} holds a finished run \({marker}\): pass --resume .* or "
                                          r"--overwrite"), claim_run(out, command="train"):
        pass
    with pytest.raises(RunDirError, match=r"pass --overwrite to replace it"):  # no --resume offered
        _enter(out, command="analyze pib", resume=True, resumable=False)
    assert not (out / LOCK_NAME).exists()
    with claim_run(out, command="train", resume=True) as claim:
        assert claim.resumed and (out / marker).is_file()
    (out / DONE_NAME).unlink()
    (out / "metrics.json").write_text("{}")
    with claim_run(out, command="analyze pib", overwrite=True) as claim:
        assert not (out / "metrics.json").exists()  # the old result is gone before the new run writes
    assert "replacing a finished run" in claim.notes[0]


def test_out_that_is_a_file_or_under_a_file(tmp_path: Path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(RunDirError, match=rf"--out {f} is a file, not a folder"), claim_run(f, command="demo"):
        pass
    with pytest.raises(RunDirError, match=rf"--out {f}/sub is under {f}, which is a file"):
        _enter(f / "sub", command="demo")


def test_read_only_out(tmp_path: Path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    out = ro / "run"
    if os.access(ro, os.W_OK):  # root writes into read-only folders; sysfs refuses new folders to everyone
        out = Path("/sys/lastvit-read-only-test/run")
    try:
        with pytest.raises(RunDirError, match="is not writable"), claim_run(out, command="demo"):
            pass
    finally:
        ro.chmod(0o700)


def test_sigterm_in_a_claimed_run_raises_and_unlocks(tmp_path: Path):
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted) as ei, claim_run(out, command="analyze pib"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert ei.value.code == 143
    assert not (out / LOCK_NAME).exists() and not (out / DONE_NAME).exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def _lastvit(*args: str) -> list[str]:
    return [sys.executable, "-m", "lastvit.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def test_second_train_into_a_live_out_is_refused(tmp_path: Path):
    """Issue 16, done when: a second training run into the --out of a live one is refused at once."""
    out = tmp_path / "run"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.format(out=tmp_path / "unused", steps=100000))
    first = subprocess.Popen(_lastvit("train", "--config", str(cfg), "--out", str(out)), env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / LOCK_NAME
        for _ in range(1200):  # wait for the first run to hold the folder (not a timing assertion)
            if lock.is_file() and lock.read_text().strip():
                break
            assert first.poll() is None, first.communicate()[1]
            time.sleep(0.1)
        assert json.loads(lock.read_text())["pid"] == first.pid
        second = subprocess.run(_lastvit("train", "--config", str(cfg), "--out", str(out)), env=_env(),
                                capture_output=True, text=True, timeout=300)
        assert first.poll() is None  # refused while the first is still running
        assert second.returncode != 0
        err = second.stderr.strip().splitlines()
        assert "Traceback" not in second.stderr
        assert err[-1].startswith(f"lastvit train: error: --out {out} is in use by a live run (pid {first.pid}")
        # the overrides' form of the folder (out_dir=...) is the same folder
        third = subprocess.run(_lastvit("train", "--config", str(cfg), f"out_dir={out}"), env=_env(),
                               capture_output=True, text=True, timeout=300)
        assert third.returncode != 0 and "is in use by a live run" in third.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            first.kill()
            first.communicate()
    assert first.returncode != 0
    assert not (out / LOCK_NAME).exists()  # SIGTERM removed the lock
    assert not (out / DONE_NAME).exists()  # and the interrupted run is not marked finished


def test_overwrite_removes_what_the_finished_run_wrote_and_nothing_else(tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("the user's file, there before the run")
    with claim_run(out, command="data synth"):
        (out / "val" / "a").mkdir(parents=True)
        (out / "val" / "a" / "x.png").write_bytes(b"1")
        (out / "metrics.json").write_text("{}")
    assert json.loads((out / DONE_NAME).read_text())["files"] == ["metrics.json", "val/a/x.png"]
    with claim_run(out, command="data synth", overwrite=True) as claim:
        assert not (out / "val").exists() and not (out / "metrics.json").exists()
        assert (out / "notes.txt").read_text().startswith("the user's file")
        (out / "val" / "b").mkdir(parents=True)
        (out / "val" / "b" / "y.png").write_bytes(b"2")
    assert "its 2 files removed" in claim.notes[0]
    assert json.loads((out / DONE_NAME).read_text())["files"] == ["val/b/y.png"]
    with claim_run(out, command="train", resume=True):  # a resumed run's list keeps what the first one wrote
        (out / "more.txt").write_text("3")
    assert json.loads((out / DONE_NAME).read_text())["files"] == ["more.txt", "val/b/y.png"]
