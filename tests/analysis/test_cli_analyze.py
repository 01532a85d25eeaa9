import csv
import json

import pytest
import torch

import lastvit
from lastvit.analysis import evaluate_pib
from lastvit.checkpoints import save_checkpoint
from lastvit.cli import main
from lastvit.data import SyntheticConfig, SyntheticDataset, build_eval_dataset, collate, write_imagefolder


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    write_imagefolder(SyntheticDataset(SyntheticConfig(), split="val", size=6), root / "data")
    torch.manual_seed(0)
    model = lastvit.create_model("vit_micro_patch8_64", num_classes=10, aggregator="lazystrike")
    save_checkpoint(model, root / "model.pt")
    return root


def _run(tree, kind, *extra):
    out = tree / kind
    rc = main(["analyze", kind, "--checkpoint", str(tree / "model.pt"), "--dataset", "synthetic", "--root",
               str(tree / "data"), "--out", str(out), "--batch-size", "4", "--no-progress", "--num-figures", "2",
               *extra])
    assert rc == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_analyze_pib_end_to_end_matches_library(tree):
    out, res = _run(tree, "pib")
    m = res["metrics"]
    assert {"pib", "pib_center", "pib_mask", "num_images", "num_skipped", "skipped"} <= set(m)
    assert m["num_images"] == 6 and m["num_skipped"] == 0
    assert res["config"]["dataset"] == "synthetic" and res["config"]["model_config"]["aggregator"] == "lazystrike"
    with open(out / "pib_rows.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["id"] for r in rows) == [f"val_{i:06d}" for i in range(6)]
    # the same numbers from the library on the same files
    model = lastvit.create_model(checkpoint=str(tree / "model.pt"))
    ds = build_eval_dataset("synthetic", tree / "data", image_size=64, resize=64, max_box_area=1.0)
    loader = torch.utils.data.DataLoader(ds, batch_size=6, collate_fn=collate)
    ref, ref_rows = evaluate_pib(model, loader)
    assert m["pib"] == pytest.approx(ref["pib"]) and m["pib_center"] == pytest.approx(ref["pib_center"])
    assert [int(r["hit_any"]) for r in rows] == [r["hit_any"] for r in ref_rows]
    assert (out / "pib_overlays.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    # deterministic: a second run writes the same metrics
    _, again = _run(tree, "pib", "--overwrite")  # a finished run is replaced only with --overwrite
    assert again["metrics"] == m


@pytest.mark.parametrize("kind,extra,key,png", [
    ("scores", [], "auroc", "score_hist.png"),
    ("masking", ["--fractions", "0,0.5", "--mode", "token"], "accuracy", "masking_curves.png"),
    ("norms", ["--threshold", "150"], "last_block", "norm_hist.png"),
    ("votes", [], "vote_share_fg", "vote_maps.png"),
    ("pca", [], "pca_fg_fraction", "pca.png"),
    ("attention", [], "attn_fg_share", "cls_attention.png"),
])
def test_analyze_other_kinds_write_outputs(tree, kind, extra, key, png):
    out, res = _run(tree, kind, *extra)
    assert key in res["metrics"] and res["kind"] == kind
    assert (out / png).read_bytes()[:4] == b"\x89PNG"
    if kind == "masking":
        assert res["metrics"]["num_removed"] == [0, 32] and set(res["metrics"]["accuracy"]) == {"high", "low", "random"}
    if kind == "norms":
        assert res["metrics"]["last_block"]["threshold"] == 150.0


def test_analyze_bad_input_is_one_line(tree, capsys):
    rc = main(["analyze", "pib", "--checkpoint", str(tree / "missing.pt"), "--dataset", "synthetic", "--root",
               str(tree / "data"), "--out", str(tree / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "missing.pt" in err and len(err.splitlines()) == 1
    rc = main(["analyze", "pib", "--checkpoint", str(tree / "model.pt"), "--dataset", "synthetic", "--root",
               str(tree / "nowhere"), "--out", str(tree / "y")])
    assert rc == 2 and "nowhere" in capsys.readouterr().err
