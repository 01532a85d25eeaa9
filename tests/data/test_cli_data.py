"""``lastvit data synth`` / ``lastvit data check`` end to end on a tiny tree."""

from __future__ import annotations

import json
from pathlib import Path

from lastvit.cli import main


def test_data_synth_then_check(tmp_path: Path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(out), "--splits", "val", "test", "--size", "6",
                 "--num-classes", "4", "--multi-object", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["num_classes"] == 4 and m["splits"]["val"]["images"] == 6
    assert sum(m["splits"]["test"]["per_class"].values()) == 6
    assert (out / "preview.png").is_file() and len(list((out / "Masks" / "test").glob("*.png"))) == 6
    assert len((out / "captions.csv").read_text().splitlines()) == 1 + 12  # header + both splits kept
    capsys.readouterr()
    assert main(["data", "check", "synthetic", "--root", str(out), "--split", "val", "--decode",
                 "--out", str(tmp_path / "chk")]) == 0
    assert "6 images, 4 classes" in capsys.readouterr().out
    chk = json.loads((tmp_path / "chk" / "metrics.json").read_text())
    assert chk["images"] == 6 and chk["skipped"] == {} and chk["boxes"] >= 6
    # a user error is one line on stderr and exit code 2
    assert main(["data", "check", "imagenet", "--root", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_data_synth_demo_preset_matches_the_demo_test_split(tmp_path: Path):
    import numpy as np
    from PIL import Image

    from lastvit.data import SyntheticConfig, SyntheticDataset
    from lastvit.paradigms import paradigm_recipe

    bench = paradigm_recipe("label", "lazystrike", out="x")["data"]["synthetic"]  # what the demo trains on
    bench = {k: v for k, v in bench.items() if k != "seed"}

    out = tmp_path / "syn"
    assert main(["data", "synth", "--demo", "--out", str(out), "--splits", "test", "--size", "3", "--seed", "2"]) == 0
    cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert bench and bench["pattern"] > 0
    for k, v in bench.items():
        assert cfg[k] == v
    assert cfg["seed"] == 2
    ds = SyntheticDataset(SyntheticConfig(**bench, seed=2), "test", size=3)
    ref = (ds.generate_batch([1])["images"][0] * 255).round().byte().permute(1, 2, 0).numpy()
    label = ds.classes[int(ds.generate_batch([1])["labels"][0])]
    files = sorted((out / "test" / label).glob("*.png"))
    disk = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    assert any(np.abs(d.astype(int) - ref.astype(int)).max() <= 1 for d in disk)
