"""Issue 17.2: one bad batch never stops a run. With --batch-size 1 and one truncated JPEG, every `analyze` kind
and `evaluate classify` finish, and metrics.json counts the file once with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.robustness.corpus import bad_images, voc_xml

import lastvit
from lastvit.checkpoints import save_checkpoint
from lastvit.cli import main
from lastvit.data import SyntheticConfig, SyntheticDataset, write_imagefolder

KINDS = ["pib", "scores", "masking", "norms", "votes", "pca", "attention"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_batch")
    data = root / "data"
    write_imagefolder(SyntheticDataset(SyntheticConfig(), split="val", size=3), data)
    cls = sorted(p for p in (data / "val").iterdir() if p.is_dir())[0]
    raw, (w, h), _ = bad_images(64)["truncated.JPEG"]
    (cls / "val_bad.JPEG").write_bytes(raw)
    (data / "Annotations" / "val" / "val_bad.xml").write_text(voc_xml(w, h, [(cls.name, (1, 1, 50, 50))]))
    Image.fromarray(np.zeros((h, w), np.uint8)).save(data / "Masks" / "val" / "val_bad.png")
    torch.manual_seed(0)
    save_checkpoint(lastvit.create_model("vit_micro_patch8_64", num_classes=10), root / "model.pt")
    return root


def _skips(obj) -> dict[str, int]:
    """Every ``{reason: count}`` found under metrics.json's skip keys."""
    found: dict[str, int] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if "skipped" in k and isinstance(v, dict):
                found.update({str(r): n for r, n in v.items() if isinstance(n, int)})
            else:
                found.update(_skips(v))
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_analyze_survives_an_all_bad_batch(tree: Path, kind: str, capsys):
    out = tree / kind  # --num-figures 4: pca reads every image (it stops after the figures' images)
    rc = main(["analyze", kind, "--checkpoint", str(tree / "model.pt"), "--dataset", "synthetic", "--root",
               str(tree / "data"), "--out", str(out), "--batch-size", "1", "--no-progress", "--num-figures", "4"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    skips = _skips(m)
    assert any("undecodable image" in r and n == 1 for r, n in skips.items()), skips


def test_evaluate_classify_survives_an_all_bad_batch(tree: Path, capsys):
    out = tree / "classify"
    rc = main(["evaluate", "classify", "--checkpoint", str(tree / "model.pt"), "--dataset", "synthetic", "--root",
               str(tree / "data"), "--out", str(out), "--batch-size", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert _skips(json.loads((out / "metrics.json").read_text())) == {"undecodable image": 1}
