"""The OV-detection commands (split makers through argparse) and the four full-scale recipes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from lastvit.cli._ovdet import register_data, register_evaluate
from lastvit.detection.splits import OV_COCO_FILES

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "ovdet"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    register_data(sub)
    register_evaluate(sub)
    return p


def test_ovcoco_split_command(tmp_path, capsys):
    from tests.detection.test_data import _coco

    ann, _ = _coco(tmp_path)
    args = _parser().parse_args(["ovcoco-split", "--train", str(ann), "--val", str(ann), "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts[OV_COCO_FILES[0]]["annotations_kept"] == 3
    assert (tmp_path / "o" / OV_COCO_FILES[1]).is_file()


def test_evaluate_command_needs_a_detector_file(tmp_path):
    args = _parser().parse_args(["ovdet", "--checkpoint", str(tmp_path / "none.pt"), "--dataset", "coco",
                                 "--root", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="none.pt: no such detector checkpoint"):
        args.func(args)


@pytest.mark.parametrize("name", ["fvit_vitb16_ovcoco", "fvit_vitl14_ovcoco", "fvit_vitb16_ovlvis",
                                  "fvit_vitl14_ovlvis"])
def test_recipes_resolve_with_clipself_settings(name):
    import yaml

    from lastvit.train.ovdet import resolve_config

    cfg = resolve_config(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()), name)
    o, d, det = cfg["optim"], cfg["data"], cfg["model"]["detector"]
    assert (o["lr"], o["lr_batch"], o["weight_decay"], o["grad_clip"], o["warmup_steps"]) == (1e-4, 64, 0.1, 1.0, 250)
    assert d["global_batch"] == 64 and cfg["trainer"]["accumulate"] * 8 == 64
    coco = "ovcoco" in name
    assert d["image_size"] == {"fvit_vitb16_ovcoco": 640, "fvit_vitl14_ovcoco": 896, "fvit_vitb16_ovlvis": 1024,
                               "fvit_vitl14_ovlvis": 896}[name]
    assert det["bg_weight"] == (0.6 if coco else 0.9)
    assert (det["alpha"], det["beta"]) == (0.1, 0.8 if coco else (0.6 if "b16" in name else 0.4))
    assert cfg["trainer"]["max_epochs"] == (3 if coco else 48)
    assert o["milestones"] == ([] if coco else [32, 44])
    assert det.get("masks", False) == (not coco)
