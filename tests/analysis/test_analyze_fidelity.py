"""Point-in-Box fidelity (issue 14.4) and `lastvit analyze` refusals (issue 17.4/17.6), through the CLI entry point."""

import json
import shutil

import pytest
import torch

import lastvit
from lastvit.analysis import point_in_box
from lastvit.analysis.pib import PiBMeter, box_cells
from lastvit.checkpoints import save_checkpoint
from lastvit.cli import build_parser, main
from lastvit.cli.analyze import selection
from lastvit.data import SyntheticConfig, SyntheticDataset, write_imagefolder


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    write_imagefolder(SyntheticDataset(SyntheticConfig(), split="val", size=5), root / "data")
    torch.manual_seed(0)
    save_checkpoint(lastvit.create_model("vit_micro_patch8_64", num_classes=10, aggregator="lazystrike"),
                    root / "model.pt")
    torch.manual_seed(0)
    save_checkpoint(lastvit.create_model("vit_micro_patch8_64", num_classes=10, aggregator="cls", depth=2),
                    root / "two_blocks.pt")
    return root


def _analyze(tree, kind, out, *extra, ckpt="model.pt", data="data", dataset="synthetic"):
    return main(["analyze", kind, "--checkpoint", str(tree / ckpt), "--dataset", dataset, "--root",
                 str(tree / data), "--out", str(out), "--no-progress", "--num-figures", "2", *extra])


def test_box_edge_just_below_a_cell_boundary_is_mapped_in_float64():
    # x2 = 48 - 1e-6 ends inside column 2 (cells of 16 px); float32 rounds it to 48.0, which would cover column 3
    x2 = 48.0 - 1e-6
    assert float(torch.tensor(x2, dtype=torch.float32)) == 48.0  # the rounding the old float32 path suffered
    box = torch.tensor([[0.0, 0.0, x2, x2]], dtype=torch.float64)
    cells = box_cells(box, (4, 4), (16, 16))
    assert cells[:3, :3].all() and not cells[3].any() and not cells[:, 3].any()
    scores = torch.zeros(1, 4, 4)
    scores[0, 3, 3] = 1.0  # argmax in the cell the box does not reach
    assert not bool(point_in_box(scores, [box], patch_size=16)["hit_any"][0])
    scores = torch.zeros(1, 4, 4)
    scores[0, 2, 2] = 1.0
    assert bool(point_in_box(scores, [box], patch_size=16)["hit_any"][0])
    # a plain Python list keeps its float64 value too
    corner = torch.zeros(1, 4, 4)
    corner[0, 3, 3] = 1.0
    assert not bool(point_in_box(corner, [[[0.0, 0.0, x2, x2]]], patch_size=16)["hit_any"][0])


def test_pib_meter_select_then_update_equals_update():
    scores = torch.rand(4, 4, 4)
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 60.0, 60.0]]),
             torch.tensor([[10.0, 10.0, 30.0, 40.0], [0.0, 0.0, 5.0, 5.0]])]
    a = PiBMeter(patch_size=16, max_box_area=0.25, single_object=True)
    a.update(scores, boxes, image_size=(64, 64))
    b = PiBMeter(patch_size=16, max_box_area=0.25, single_object=True)
    keep = b.select(boxes, (64, 64))
    assert keep == [0]
    b.update(scores[keep], [boxes[i] for i in keep], image_size=(64, 64), selected=True)
    assert a.compute() == b.compute() and a.rows == b.rows
    assert a.compute()["skipped"] == {"large_box": 1, "multi_object": 1, "no_boxes": 1}
    assert a.rows[0]["id"] == "0"


def test_an_undecodable_image_is_counted_once(tree, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tree / "data", data)
    victim = sorted((data / "val").rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:40])  # a truncated PNG
    out = tmp_path / "out"
    assert main(["analyze", "pib", "--checkpoint", str(tree / "model.pt"), "--dataset", "synthetic", "--root",
                 str(data), "--out", str(out), "--no-progress"]) == 0  # the default batch size
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["num_images"] == 4 and m["num_skipped"] == 1
    assert sum(v for k, v in m["skipped"].items() if k.startswith("dataset:")) == 1


def test_metrics_json_names_the_token_the_scores_compare_with(tree, tmp_path):
    assert _analyze(tree, "pib", tmp_path / "auto") == 0
    assert json.loads((tmp_path / "auto" / "metrics.json").read_text())["metrics"]["source"] == "pooled"
    assert _analyze(tree, "pib", tmp_path / "cls", "--source", "cls") == 0
    assert json.loads((tmp_path / "cls" / "metrics.json").read_text())["metrics"]["source"] == "cls"


def _args(*argv):
    return build_parser(["analyze"]).parse_args(["analyze", "pib", "--out", "x", *argv])


def test_imagenet_defaults_to_the_papers_selection_with_a_flag_to_turn_it_off():
    assert selection(_args("--dataset", "imagenet")) | {"rule": None} == {
        "single_object": True, "max_box_area": 0.25, "rule": None}
    assert selection(_args("--dataset", "imagenet", "--all-images"))["single_object"] is False
    assert selection(_args("--dataset", "imagenet", "--all-images"))["max_box_area"] is None
    assert selection(_args("--dataset", "voc"))["single_object"] is False
    assert selection(_args("--dataset", "voc", "--single-object"))["max_box_area"] == 0.25
    with pytest.raises(ValueError, match="contradict"):
        selection(_args("--dataset", "imagenet", "--all-images", "--single-object"))


def test_no_scored_image_is_an_error_naming_where_it_looked_and_ann_dir_points_elsewhere(tree, tmp_path, capsys):
    out = tmp_path / "none"
    # an image folder without annotations next to it: images are read, none has a box
    rc = _analyze(tree, "pib", out, "--split", "val", dataset="imagefolder")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "no image with a box" in err and str(tree / "data") in err
    assert "--ann-dir" in err and not (out / "metrics.json").exists()
    ok = tmp_path / "ann"
    assert _analyze(tree, "pib", ok, "--split", "val", "--ann-dir", str(tree / "data" / "Annotations" / "val"),
                    dataset="imagefolder") == 0
    assert json.loads((ok / "metrics.json").read_text())["metrics"]["num_images"] == 5


@pytest.mark.parametrize("layer", ["99", "2", "-3"])
def test_attention_layer_out_of_range_is_refused(tree, tmp_path, capsys, layer):
    out = tmp_path / "att"
    rc = _analyze(tree, "attention", out, "--layer", layer, ckpt="two_blocks.pt")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"--layer {layer}" in err and "2 blocks" in err
    assert not (out / "metrics.json").exists()


def test_attention_layer_negative_in_range_runs(tree, tmp_path):
    assert _analyze(tree, "attention", tmp_path / "a", "--layer", "-2", ckpt="two_blocks.pt") == 0
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["metrics"]["layer"] == -2


def test_pca_title_does_not_overlap_the_images():
    from lastvit.viz.figures import pca_figure

    fig = pca_figure(torch.zeros(4, 3, 16, 16), torch.rand(4, 2, 2, 3), title="PCA of patch features")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    r = canvas.get_renderer()
    title = fig._suptitle.get_window_extent(r)
    top_of_images = max(ax.get_window_extent(r).y1 for ax in fig.axes)
    assert title.y0 >= top_of_images
    assert title.y1 <= fig.bbox.y1


def test_no_image_found_is_an_error_naming_where_it_looked(tree, tmp_path, capsys):
    data = tmp_path / "empty"
    (data / "val").mkdir(parents=True)
    shutil.copy(tree / "data" / "classes.txt", data / "classes.txt")
    out = tmp_path / "out"
    rc = _analyze(tree, "pib", out, data=str(data))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(data / "val") in err and "no images" in err
    assert not (out / "metrics.json").exists()
