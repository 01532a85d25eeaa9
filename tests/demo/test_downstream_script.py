"""scripts/downstream_synthetic.py on a tiny text-supervised study: every evaluation runs and is summarised."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lastvit.data import SyntheticConfig, SyntheticDataset
from lastvit.recipes import load_benchmark
from lastvit.study import run_study

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "downstream_synthetic.py"


def test_downstream_script_on_a_tiny_study(tmp_path, monkeypatch, capsys):
    cfg = {"name": "t", "paradigm": "text", "seeds": [0, 1], "readouts": {"lazystrike": {"k": 2}},
           "test_images": 8, "overrides": {"trainer.max_steps": 1, "data.train_size": 32, "data.val_size": 16,
                                            "data.global_batch": 16, "data.synthetic.clutter": 0}}
    run_study(cfg, tmp_path, verbose=False)
    monkeypatch.setattr(sys, "argv", ["downstream_synthetic.py", "--study", str(tmp_path), "--images", "6"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    d = json.loads((tmp_path / "downstream.json").read_text())
    runs = d["runs"]["main/lazystrike"]
    assert [r["seed"] for r in runs] == [0, 1]
    for r in runs:
        assert set(r) == {"seed", "corloc_lazystrike", "corloc_lazystrike_largest", "corloc_lost", "coarse_jaccard",
                          "coarse_binary_miou", "zeroshot_miou"}
        assert all(0.0 <= r[k] <= 100.0 for k in r if k != "seed")
    mean, std = d["summary"]["main/lazystrike"]["corloc_lost"]
    assert mean == pytest.approx((runs[0]["corloc_lost"] + runs[1]["corloc_lost"]) / 2)
    per_image = (tmp_path / "main" / "lazystrike_seed1" / "downstream" / "discovery" / "per_image.csv")
    assert len(per_image.read_text().splitlines()) == 1 + 6
    assert "| main/lazystrike | 2 |" in (tmp_path / "downstream.md").read_text()
    # the trees are the runs' own benchmark (clutter 0 here), not the packaged default
    trees = sorted((tmp_path / "_trees").iterdir())
    assert [t.name.split("_")[0] for t in trees] == ["seed0", "seed1"]
    ns = runpy.run_path(str(SCRIPT))
    bench = ns["benchmark_of"](tmp_path / "main" / "lazystrike_seed1", 1)
    assert bench["clutter"] == 0 and bench["seed"] == 1

    def first_image(cfg):
        g = SyntheticDataset(SyntheticConfig(**cfg), "test", size=6).generate_batch(range(1))
        return (g["images"][0].permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)

    on_disk = np.asarray(Image.open(next((trees[1] / "test").rglob("test_000000.png"))).convert("RGB"))
    assert np.array_equal(on_disk, first_image(bench))
    assert not np.array_equal(on_disk, first_image({**load_benchmark("synthetic_demo"), "seed": 1}))

    # --untrained: the same evaluations of each run's starting network, beside the trained rows
    monkeypatch.setattr(sys, "argv", ["downstream_synthetic.py", "--study", str(tmp_path), "--images", "6",
                                      "--untrained"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    d2 = json.loads((tmp_path / "downstream.json").read_text())
    assert d2["runs"]["main/lazystrike"] == runs  # the trained evaluations are reused, unchanged
    base = d2["runs"]["main/lazystrike (untrained)"]
    assert [r["seed"] for r in base] == [0, 1] and set(base[0]) == set(runs[0])
    assert (tmp_path / "main" / "lazystrike_seed0" / "downstream_untrained" / "coarse" / "metrics.json").is_file()
    run0 = tmp_path / "main" / "lazystrike_seed0"
    a, b = ns["_untrained"](run0).state_dict(), ns["_untrained"](run0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # rebuilt the same way every time
    trained = torch.load(run0 / "model.pt", map_location="cpu", weights_only=False)["state_dict"]
    assert any(not torch.equal(a[k], trained[k]) for k in a if k in trained)  # and it is not the trained one
