"""`lastvit demo --paradigm ovdet` and `lastvit study` with `paradigm: ovdet` (paper Table 5 in miniature)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lastvit.cli import main
from lastvit.demo import ovdet_verdict
from lastvit.study import OVDET_KEYS, run_ovdet_study, summarise_ovdet


def test_demo_paradigm_ovdet_through_the_cli(tmp_path, tiny_text_clips):
    out = tmp_path / "demo"
    tiny_text_clips(out / "cache", seed=2)
    assert main(["demo", "--paradigm", "ovdet", "--quick", "--seed", "2", "--out", str(out), "--jobs", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["readouts"]) == {"cls", "lazystrike"} and m["seed"] == 2
    for r in m["readouts"].values():
        assert {"novel_ap50", "base_ap50", "novel_mask_ap", "novel_rpn_recall", "oracle_box_accuracy"} <= set(r)
        assert r["novel_classes"] == ["disk", "square"]  # seed 2's novel pair
    report = (out / "report.md").read_text()
    assert "novel AP50" in report and "chance" in report and (out / "detections.png").stat().st_size > 0
    # a finished demo folder is not silently overwritten
    assert main(["demo", "--paradigm", "ovdet", "--quick", "--seed", "2", "--out", str(out)]) != 0


def test_ovdet_study_summarises_every_seed_and_reuses_finished_ones(tmp_path):
    vals = {0: (0.10, 0.30), 1: (0.20, 0.50)}  # seed -> (CLS, LazyStrike) novel AP50
    for seed, (c, z) in vals.items():
        per = {r: {k: v for k in OVDET_KEYS} for r, v in (("cls", c), ("lazystrike", z))}
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "metrics.json").write_text(json.dumps({"readouts": per}))
    cfg = yaml.safe_load((Path(__file__).parents[2] / "configs" / "studies" / "ovdet_synthetic.yaml").read_text())
    cfg["seeds"] = [0, 1]  # both finished: nothing is trained
    res = run_ovdet_study(cfg, tmp_path, verbose=False)
    rows = {r["readout"]: r for r in res["summary"]}
    assert rows["cls"]["seeds"] == 2 and rows["cls"]["novel_ap50"][0] == pytest.approx(0.15)
    assert rows["lazystrike"]["novel_ap50"] == pytest.approx((0.40, 0.1414213562), rel=1e-6)
    assert "| lazystrike | 2 | 40.0 ± 14.1 |" in res["table"]
    assert json.loads((tmp_path / "study.json").read_text())["summary"][0]["readout"] == "cls"


def test_summarise_ovdet_keeps_a_missing_number_as_nan():
    rows = summarise_ovdet({0: {"cls": {"novel_ap50": None}}})
    assert rows[0]["novel_ap50"][0] != rows[0]["novel_ap50"][0]  # nan, not 0


def test_ovdet_verdict_names_the_readouts_near_chance():
    chance = 1 / 6
    acc = lambda *v: {r: {"oracle_box_accuracy": a} for r, a in zip(("cls", "lazystrike"), v)}
    assert ovdet_verdict(acc(0.40, 0.48), chance) == ""
    one = ovdet_verdict(acc(0.241, 0.48), chance)  # 24.1% < 2 x 16.7%: only the CLS branch
    assert one.startswith("The frozen CLIP branch of cls is near chance") and "cls 24.1%" in one
    assert "lazystrike 48.0%" in one and "WEAK" not in one
    both = ovdet_verdict(acc(0.20, 0.30), chance)
    assert both.startswith("THE COMPARISON IS WEAK") and "cls 20.0%, lazystrike 30.0%" in both


def test_demo_ovdet_passes_overrides_and_test_images_to_the_miniature(tmp_path, monkeypatch):
    import lastvit.ovdet_miniature as mini

    seen = {}

    def fake(out, seed, **kw):
        seen.update(kw, seed=seed)
        m = {k: 0.5 for k in OVDET_KEYS} | {"novel_classes": ["ring", "star"],
                                              "base_classes": ["disk", "square", "triangle", "cross"]}
        return {"cls": m, "lazystrike": m}

    monkeypatch.setattr(mini, "run_ovdet_miniature", fake)
    out = tmp_path / "d"
    argv = ["demo", "--paradigm", "ovdet", "--seed", "1", "--test-images", "7", "--out", str(out), "--jobs", "1",
            "steps=3", "detector.fpn_dim=16"]
    assert main(argv) == 0
    assert seen["overrides"] == {"steps": 3, "detector.fpn_dim": 16, "test_images": 7} and seen["seed"] == 1
    assert "Overrides of the miniature's settings: steps=3, detector.fpn_dim=16, test_images=7." in (
        out / "report.md").read_text()


def test_demo_ovdet_rejects_an_unknown_setting_in_one_line(tmp_path, capsys):
    assert main(["demo", "--paradigm", "ovdet", "--quick", "--out", str(tmp_path / "d"), "bogus=1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown miniature override 'bogus'" in err[0] and "detector.<key>" in err[0]
    assert not list((tmp_path / "d").glob("cache/data_*"))  # refused before any data is written
    assert main(["demo", "--paradigm", "ovdet", "--quick", "--out", str(tmp_path / "e"), "detector.fpn_dims=8"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "detector.fpn_dims" in err[0] and "fpn_dim," in err[0]
    assert not list((tmp_path / "e").glob("cache/*"))
