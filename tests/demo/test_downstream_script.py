"""scripts/downstream_synthetic.py on a tiny text-supervised study: every evaluation runs and is summarised."""

import json
import runpy
import sys
from pathlib import Path

import pytest

from lastvit.study import run_study

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "downstream_synthetic.py"


def test_downstream_script_on_a_tiny_study(tmp_path, monkeypatch, capsys):
    cfg = {"name": "t", "paradigm": "text", "seeds": [0, 1], "readouts": {"lazystrike": {"k": 2}},
           "test_images": 8, "overrides": {"trainer.max_steps": 1, "data.train_size": 32, "data.val_size": 16,
                                            "data.global_batch": 16}}
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
