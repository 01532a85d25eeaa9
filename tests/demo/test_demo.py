"""Smoke tests of `lastvit demo` and `lastvit study` on a very small budget (the real budget is measured in
docs/RESULTS.md, not asserted here)."""

import json
import statistics

import pytest

from lastvit.cli import main
from lastvit.study import load_study, run_study, summarise

TINY = ["trainer.max_steps=4", "data.train_size=128", "data.val_size=32", "trainer.val_every=4",
        "trainer.ckpt_every=4", "trainer.progress_bar=false", "data.global_batch=32"]


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--test-images", "48", *TINY]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["readouts"]) == {"cls", "lazystrike"}
    for r in m["readouts"].values():
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["pib"] <= 1.0 and 0.0 <= r["pib_center"] <= r["pib"]
        assert r["num_images"] == 48
        assert 0.0 <= r["score_auroc"] <= 1.0
        assert set(r["masking"]["accuracy"]) == {"high", "low", "random"}
        assert r["masking"]["num_removed"][0] == 0
    assert m["recipes"]["cls"]["model"]["aggregator"] == "cls"
    assert m["recipes"]["lazystrike"]["model"]["aggregator"] == "lazystrike"
    assert m["recipes"]["cls"]["trainer"]["max_steps"] == 4
    for png in ("scores_cls", "scores_lazystrike", "hist_cls", "masking_lazystrike", "norms", "votes"):
        assert (out / f"{png}.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 8 and "Point-in-Box" in html
    printed = capsys.readouterr().out
    assert "PiB, any-overlap (%)" in printed and "report:" in printed and "measured" in printed
    # 4 steps leave both models near chance: the report says the comparison is void and draws no conclusion
    assert m["comparison"]["valid"] is False and set(m["comparison"]["near_chance"]) <= {"cls", "lazystrike"}
    assert "COMPARISON IS VOID" in printed and "COMPARISON IS VOID" in html
    assert "LazyStrike raised" not in printed and "LazyStrike lowered" not in printed
    assert not list(out.glob(".*.tmp"))  # nothing half-written left behind


def test_demo_rejects_bad_override(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "trainer.max_steps"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_study_summary_and_resume(tmp_path, monkeypatch):
    cfg_file = tmp_path / "study.yaml"
    cfg_file.write_text(
        "name: tiny\nseeds: [0, 1]\nreadouts: {lazystrike: {k: 2}}\ntest_images: 32\n"
        "overrides: {trainer.max_steps: 2, data.train_size: 64, data.val_size: 32, data.global_batch: 32,"
        " trainer.val_every: 2, trainer.ckpt_every: 2}\n"
    )
    cfg = load_study(cfg_file)
    res = run_study(cfg, tmp_path / "out", verbose=False)
    assert len(res["runs"]) == 2
    row = res["summary"][0]
    pibs = [r["metrics"]["pib"] for r in res["runs"]]
    assert row["pib"][0] == pytest.approx(statistics.fmean(pibs))
    assert row["pib"][1] == pytest.approx(statistics.stdev(pibs))
    assert res["runs"][0]["metrics"]["num_images"] == 32
    assert "| main | lazystrike | 2 |" in (tmp_path / "out" / "study.md").read_text()

    # finished runs are reused, not retrained
    import lastvit.train as train

    monkeypatch.setattr(train, "fit", lambda cfg: (_ for _ in ()).throw(AssertionError("retrained")))
    again = run_study(cfg, tmp_path / "out", verbose=False)
    assert [r["metrics"]["pib"] for r in again["runs"]] == pibs
    assert summarise(again["runs"])[0]["seeds"] == 2


def test_study_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_study(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [0]\n")
    with pytest.raises(ValueError, match="readouts"):
        load_study(bad)


def test_demo_help_has_no_fixed_durations(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "measured" in text and "about 80 s" not in text and " min on 2 cores" not in text


def test_interpretation_is_void_when_one_twin_is_near_chance():
    from lastvit.demo import _interpret

    base = {"pib": 0.2, "pib_center": 0.1, "score_auroc": 0.5, "norm_block_max": 1.0, "norm_block_median": 1.0,
            "masking": None}
    res = {"cls": {**base, "accuracy": 0.19}, "lazystrike": {**base, "accuracy": 0.9, "pib": 0.8}}
    text = _interpret(res, 6)
    assert "VOID" in text and "the CLS model" in text and "raised" not in text
    res["cls"]["accuracy"] = 0.85
    assert "LazyStrike raised Point-in-Box" in _interpret(res, 6)


def test_study_table_shows_self_supervised_numbers_beside_the_untrained_network():
    from lastvit.study import _table

    def run(seed, knn, knn_u):
        m = {"accuracy": knn, "pib": 0.5, "pib_center": 0.4, "score_auroc": 0.6, "norm_block_max": 9.0,
             "norm_block_median": 3.0, "outliers_last_block": {"outlier_fraction": 0.0}, "knn_top1": knn,
             "knn_top1_untrained": knn_u, "linear_top1": 0.7, "linear_top1_untrained": 0.6, "pib_untrained": 0.3,
             "pib_center_untrained": 0.2, "score_auroc_untrained": None}  # a NaN read back from strict JSON
        return {"variant": "main", "readout": "cls", "seed": seed, "metrics": m}

    rows = summarise([run(0, 0.5, 0.2), run(1, 0.7, 0.4)])
    assert rows[0]["knn_top1_untrained"] == pytest.approx((0.3, statistics.stdev([0.2, 0.4])))
    table = _table(rows)
    assert "kNN untrained (%)" in table and "| main | cls | 60.0 ± 14.1 | 30.0 ± 14.1 |" in table


def test_time_estimate_is_measured_on_this_machine(capsys, monkeypatch):
    import lastvit.demo as demo

    now = [0.0]
    monkeypatch.setattr(demo.time, "time", lambda: now[0])
    eta = demo._Eta("label/cls", runs=2, after=4)

    class Trainer:
        global_step = 0
        estimated_stepping_batches = 120

    t = Trainer()
    for step in range(1, 8):
        t.global_step = step
        now[0] = 0.5 * step  # 0.5 s per step
        eta.on_train_batch_end(t)
    out = capsys.readouterr().out
    assert out.count("s per step") == 1  # printed once, after the first 4 timed steps
    assert "0.50 s per step" in out and "1.0 min to train this readout (120 steps)" in out
    assert "2.0 min of training left for this demo (2 runs" in out
