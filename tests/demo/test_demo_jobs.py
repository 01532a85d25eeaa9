"""``lastvit demo --jobs``: the twins trained in parallel processes give bit for bit the numbers of the same runs in
turn at the same per-run thread count; the run folder, its completion marker and errors stay as in a sequential
run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lastvit.cli import main
from lastvit.demo import plan_jobs, run_demo

SRC = str(Path(__file__).resolve().parents[2] / "src")
TINY = {"trainer.max_steps": 6, "data.train_size": 128, "data.val_size": 32, "trainer.val_every": 6,
        "trainer.ckpt_every": 6, "trainer.progress_bar": False, "data.global_batch": 32}


def _numbers(m):
    return json.loads(json.dumps(m["readouts"]))


def test_parallel_twins_equal_sequential_twins_bit_for_bit(tmp_path):
    import torch

    seq = run_demo(tmp_path / "seq", quick=True, test_images=40, overrides=TINY, verbose=False, jobs=1, threads=1)
    par = run_demo(tmp_path / "par", quick=True, test_images=40, overrides=TINY, verbose=False, jobs=2, threads=1)
    assert par["timings"]["jobs"] == 2 and seq["timings"]["jobs"] == 1
    assert par["timings"]["threads_per_job"] == seq["timings"]["threads_per_job"] == 1
    assert _numbers(par) == _numbers(seq)  # every metric, exactly (floats compared by value)
    for agg in ("cls", "lazystrike"):
        a = torch.load(tmp_path / "seq" / agg / "model.pt", weights_only=False)["state_dict"]
        b = torch.load(tmp_path / "par" / agg / "model.pt", weights_only=False)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parallel_demo_through_the_cli_claims_the_folder_and_marks_every_file(tmp_path, capsys):
    out = tmp_path / "demo"
    over = [f"{k}={json.dumps(v)}" for k, v in TINY.items()]
    assert main(["demo", "--out", str(out), "--test-images", "32", "--jobs", "2", "--threads", "1", *over]) == 0
    printed = capsys.readouterr().out
    assert "2 parallel processes, 1 thread each" in printed and "report:" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["readouts"]) == {"cls", "lazystrike"} and m["timings"]["jobs"] == 2
    assert not (out / ".lastvit.lock").exists()
    done = (out / ".lastvit-done.json").read_text()
    assert "cls/model.pt" in done and "lazystrike/model.pt" in done  # the jobs' files belong to the run
    assert main(["demo", "--out", str(out), "--jobs", "2", *over]) == 2  # a finished run is not overwritten


def test_a_failing_parallel_twin_raises_what_a_sequential_run_raises(tmp_path):
    bad = {**TINY, "model.name": "vit_no_such_model"}
    with pytest.raises(Exception) as seq:
        run_demo(tmp_path / "seq", quick=True, test_images=8, overrides=bad, verbose=False, jobs=1)
    with pytest.raises(Exception) as par:
        run_demo(tmp_path / "par", quick=True, test_images=8, overrides=bad, verbose=False, jobs=2, threads=1)
    assert type(par.value) is type(seq.value) and str(par.value) == str(seq.value)
    assert not (tmp_path / "par" / "metrics.json").exists()


def test_plan_jobs_defaults():
    assert plan_jobs(2, cores=2) == (2, 1)
    assert plan_jobs(2, cores=8) == (2, 4)
    assert plan_jobs(2, cores=1) == (1, None)  # one core: in turn, torch's own thread setting
    assert plan_jobs(2, jobs=1, cores=8) == (1, None)
    assert plan_jobs(2, jobs=5, cores=8) == (2, 4)
    assert plan_jobs(2, jobs=2, threads=3, cores=2) == (2, 3)
    with pytest.raises(ValueError, match="--jobs"):
        plan_jobs(2, jobs=0)
    with pytest.raises(ValueError, match="--threads"):
        plan_jobs(2, threads=0)


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads child processes from /proc")
def test_sigterm_stops_the_parallel_jobs_and_leaves_no_finished_run(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    over = {**TINY, "trainer.max_steps": 2000, "trainer.ckpt_every": 5, "trainer.val_every": 1000}
    cmd = [sys.executable, "-m", "lastvit.cli", "demo", "--out", str(out), "--jobs", "2", "--threads", "1",
           *(f"{k}={json.dumps(v)}" for k, v in over.items())]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lasts = [out / agg / "checkpoints" / "last.ckpt" for agg in ("cls", "lazystrike")]
    deadline = time.time() + 300
    while not all(f.exists() for f in lasts) and p.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert all(f.exists() for f in lasts), "the two jobs did not both start training"
    kids = _children(p.pid)
    assert len(kids) >= 2
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=180)
    assert p.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM)" in err
    deadline = time.time() + 30
    while any(_alive(k) for k in kids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(k) for k in kids)  # no job outlives the demo
    assert not (out / ".lastvit.lock").exists() and not (out / ".lastvit-done.json").exists()
    assert not (out / "metrics.json").exists()


def test_available_cores_respects_omp_num_threads(monkeypatch):
    from lastvit.demo import available_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    n = available_cores()
    assert n >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert available_cores() == 1 and plan_jobs(2) == (1, None)  # one thread asked for: the twins in turn
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert available_cores() == n
