"""`lastvit demo --paradigm text|self` and the shared per-paradigm runner on a tiny budget."""

import json

import pytest
import torch

from lastvit import create_model
from lastvit.analysis.suite import diagnose
from lastvit.cli import main
from lastvit.data.synthetic import SyntheticConfig, SyntheticDataset
from lastvit.paradigms import paradigm_recipe
from lastvit.study import run_study

TEXT_TINY = ["trainer.max_steps=3", "data.train_size=64", "data.val_size=32", "data.global_batch=32",
             "optim.warmup_steps=1", "trainer.progress_bar=false"]
SELF_TINY = ["trainer.max_epochs=1", "trainer.max_steps=2", "data.train_size=64", "data.val_size=32",
             "data.global_batch=32", "trainer.progress_bar=false"]


@pytest.mark.parametrize("paradigm,tiny,acc_name", [("text", TEXT_TINY, "zero-shot top-1"),
                                                    ("self", SELF_TINY, "kNN top-1")])
def test_demo_paradigm_end_to_end(tmp_path, capsys, paradigm, tiny, acc_name):
    out = tmp_path / paradigm
    assert main(["demo", "--paradigm", paradigm, "--out", str(out), "--test-images", "40", *tiny]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["paradigm"] == paradigm and set(m["readouts"]) == {"cls", "lazystrike"}
    for name, r in m["readouts"].items():
        assert r["accuracy_name"] == acc_name
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["pib_center"] <= r["pib"] <= 1.0
        assert r["num_images"] == 40 and r["masking"] is None  # the masking probe needs the model's own head
        assert m["recipes"][name]["model"]["aggregator"] == name
        assert m["recipes"][name]["task"] == ("clip" if paradigm == "text" else "dino")
    assert m["recipes"]["lazystrike"]["model"]["aggregator_kwargs"] == {"k": 0.125}
    if paradigm == "self":  # every self-supervised number beside the same network untrained
        for r in m["readouts"].values():
            for k in ("knn_top1", "linear_top1", "pib", "pib_center", "score_auroc"):
                assert 0.0 <= r[f"{k}_untrained"] <= 1.0
            assert r["accuracy"] == r["knn_top1"] and 0.0 <= r["linear_top1"] <= 1.0
        assert "untrained" in (out / "report.html").read_text()
        # it says plainly that the recipe that learns does not fit the demo's budget, and where it is
        assert "beyond the demo" in (out / "report.html").read_text()
        assert "configs/studies/synthetic_self_ssl.yaml" in (out / "report.html").read_text()
    assert not (out / "masking_cls.png").exists() and (out / "votes.png").stat().st_size > 1000
    assert acc_name in (out / "report.html").read_text()
    assert acc_name in capsys.readouterr().out


def test_paradigm_recipe_sets_seed_readout_and_rejects_unknown():
    cfg = paradigm_recipe("text", "lazystrike", out="x", seed=3, overrides={"trainer.max_steps": 7},
                          readout_kwargs={"k": 5})
    assert cfg["trainer"]["seed"] == 3 and cfg["data"]["data_seed"] == 3 and cfg["data"]["synthetic"]["seed"] == 3
    assert cfg["trainer"]["max_steps"] == 7 and cfg["model"]["aggregator_kwargs"] == {"k": 5}
    assert paradigm_recipe("self", "cls", out="x")["model"]["aggregator_kwargs"] == {}
    with pytest.raises(ValueError, match="unknown paradigm 'vision'"):
        paradigm_recipe("vision", "cls", out="x")
    with pytest.raises(ValueError, match="unknown paradigm"):
        paradigm_recipe("", "cls", out="x")


def test_demo_all_rejects_overrides(tmp_path, capsys):
    assert main(["demo", "--paradigm", "all", "--out", str(tmp_path), "trainer.max_steps=2"]) == 2
    assert "one paradigm" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_diagnose_uses_the_given_classifier(tmp_path):
    ds = SyntheticDataset(SyntheticConfig(num_classes=4, image_size=32, seed=1), "test", size=24)
    model = create_model("vit_micro_patch8_64", img_size=32, num_classes=4, aggregator="lazystrike",
                         aggregator_kwargs={"k": 2})
    labels = torch.as_tensor(ds.batch(list(range(24)))["label"])

    def always_two(pooled):
        return torch.nn.functional.one_hot(torch.full((pooled.shape[0],), 2), 4).float()

    r = diagnose(model, ds, num_images=24, predict=always_two, masking=False)
    assert r.metrics["accuracy"] == pytest.approx(float((labels == 2).float().mean()))
    assert r.metrics["masking"] is None and r.features.shape == (24, model.embed_dim)
    assert torch.equal(r.labels, labels)
    assert diagnose(model, ds, num_images=24, predict=None, masking=False).metrics["accuracy"] is None


def test_study_text_paradigm(tmp_path):
    cfg = {"name": "t", "paradigm": "text", "seeds": [0], "readouts": {"cls": {}}, "test_images": 16,
           "overrides": {"trainer.max_steps": 2, "data.train_size": 64, "data.val_size": 32,
                         "data.global_batch": 32}}
    res = run_study(cfg, tmp_path, verbose=False)
    assert res["runs"][0]["paradigm"] == "text"
    assert res["runs"][0]["metrics"]["accuracy_name"] == "zero-shot top-1"
    assert "zero-shot top-1" in (tmp_path / "study.md").read_text()
    with pytest.raises(ValueError, match="paradigm must be one of"):
        run_study({**cfg, "paradigm": "vision"}, tmp_path / "bad", verbose=False)


def test_demo_all_runs_every_paradigm_and_summarises(tmp_path, monkeypatch):
    import lastvit.demo as demo
    from lastvit.paradigms import ACCURACY_NAMES

    calls = []

    def fake(out, paradigm, **kw):
        calls.append((paradigm, out, kw["quick"], kw["overrides"]))
        acc = {"label": 0.9, "text": 0.8, "self": 0.2}[paradigm]
        r = lambda a, p: {"accuracy": a, "pib": p, "accuracy_name": ACCURACY_NAMES[paradigm]}
        return {"paradigm": paradigm, "readouts": {"cls": r(acc, 0.1), "lazystrike": r(acc + 0.05, 0.5)}}

    monkeypatch.setattr(demo, "_run_paradigm", fake)
    res = demo.run_demo(tmp_path, paradigm="all", quick=True, verbose=False)
    assert [c[0] for c in calls] == ["label", "text", "self"]
    assert [c[1] for c in calls] == [tmp_path / p for p in ("label", "text", "self")]
    assert all(c[2] is True and c[3] is None for c in calls)
    md = (tmp_path / "summary.md").read_text()
    assert "| text | zero-shot top-1 | 80.0 | 85.0 | 10.0 | 50.0 |" in md
    assert "| self | kNN top-1 | 20.0 | 25.0 | 10.0 | 50.0 |" in md
    assert set(res["paradigms"]) == {"label", "text", "self"}


def test_untrained_baseline_is_the_network_training_starts_from(tmp_path):
    """With a zero learning rate, DINO training leaves the network as it was built (up to the EMA's float rounding,
    ~1e-8); untrained_model must equal it (same seed, same readout), and a different seed must not."""
    from lastvit.paradigms import untrained_model
    from lastvit.train import fit

    over = {"trainer.max_epochs": 1, "trainer.max_steps": 1, "data.train_size": 32, "data.val_size": 16,
            "data.global_batch": 16, "trainer.progress_bar": False, "optim.lr": 0.0, "optim.min_lr": 0.0}
    cfg = paradigm_recipe("self", "lazystrike", out=str(tmp_path / "r"), seed=5, overrides=over)
    base = untrained_model(cfg)
    trained = fit(cfg)["model"]
    ref = trained.state_dict()
    assert base.aggregator_name == trained.aggregator_name == "lazystrike"
    assert max((v - ref[k]).abs().max().item() for k, v in base.state_dict().items()) < 1e-6
    other = untrained_model(paradigm_recipe("self", "lazystrike", out=str(tmp_path / "o"), seed=6, overrides=over))
    assert max((v - ref[k]).abs().max().item() for k, v in other.state_dict().items()) > 1e-3
