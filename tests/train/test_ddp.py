"""Two CPU processes (DDP, gloo) train like one process with the same global batch, and validation metrics are
exact over a val set split unevenly across the ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from lastvit import create_model
from lastvit.data import SyntheticConfig, SyntheticDataset
from lastvit.train import fit, load_config

RECIPE = "tiny_smoke"
# 21 val images: rank 0 gets 11, rank 1 gets 10 (batches of 8: [8, 3] and [8, 2])
OVERRIDES = ["trainer.max_steps=6", "trainer.val_every=6", "trainer.ckpt_every=0", "data.val_size=21",
             "data.global_batch=16"]


def test_ddp_two_processes_match_one_process(tmp_path):
    out2 = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path("src").resolve()), os.environ.get("PYTHONPATH", "")])}
    worker = Path(__file__).with_name("ddp_worker.py")
    r = subprocess.run([sys.executable, str(worker), str(out2), RECIPE, *OVERRIDES], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "MEMBER: 2/2" in r.stdout + r.stderr  # Lightning started two ranks
    ddp = json.loads((out2 / "metrics.json").read_text())
    assert ddp["config"]["trainer"]["devices"] == 2 and ddp["metrics"]["step"] == 6

    one = fit(load_config(RECIPE, [*OVERRIDES, f"out_dir={tmp_path / 'one'}"]))
    assert one["metrics"]["val/n"] == ddp["metrics"]["val/n"] == 21

    # same training: DDP averages per-rank mean gradients of equal 8-sample halves == the 16-sample mean
    a = torch.load(out2 / "model.pt", map_location="cpu", weights_only=False)["state_dict"]
    b = one["model"].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)

    # the DDP metrics equal the global metrics of its own model over the whole val set
    model = create_model(checkpoint=str(out2 / "model.pt")).eval()
    ds = SyntheticDataset(SyntheticConfig(num_classes=4, image_size=32), split="val", size=21, seed=0)
    batch = ds.batch(list(range(21)))
    with torch.no_grad():
        logits = model(batch["image"])
    labels = torch.as_tensor(batch["label"])
    top1 = 100.0 * (logits.argmax(1) == labels).sum().item() / 21
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert abs(ddp["metrics"]["val/top1"] - top1) < 1e-9
    assert abs(ddp["metrics"]["val/loss"] - loss) < 1e-4
    assert abs(ddp["metrics"]["val/top1"] - one["metrics"]["val/top1"]) < 1e-9
