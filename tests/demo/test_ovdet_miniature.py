"""The CPU miniature end to end at smoke-test size (the CLIPs pre-placed in its cache)."""

from __future__ import annotations

import json
import warnings

import torch

from lastvit.ovdet_miniature import NOVEL_FOLDS, run_ovdet_miniature

torch.set_num_threads(1)


def test_miniature_writes_metrics_per_readout_and_figure(tmp_path, tiny_text_clips):
    cache = tmp_path / "cache"
    tiny_text_clips(cache, seed=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = run_ovdet_miniature(tmp_path / "out", 1, quick=True, cache=cache, verbose=False,
                                  overrides={"steps": 2, "train_images": 16, "test_images": 8, "batch": 4})
    # the frozen CLIP is in eval mode by design: Lightning's warning about it is not shown
    assert not [w for w in seen if "in eval mode" in str(w.message)]
    assert set(res) == {"cls", "lazystrike"}
    for readout in res:
        m = json.loads((tmp_path / "out" / readout / "metrics.json").read_text())
        for k in ("novel_ap50", "base_ap50", "novel_mask_ap", "novel_rpn_recall", "oracle_box_accuracy"):
            assert k in m and (m[k] != m[k] or 0.0 <= m[k] <= 1.0)  # a fraction, or nan without novel GT
        assert m["novel_classes"] == list(NOVEL_FOLDS[1])
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["readouts"].keys() == res.keys() and summary["seed"] == 1
    assert (tmp_path / "out" / "detections.png").stat().st_size > 0
    counts = json.loads(next(cache.glob("data_s1_*")).joinpath("counts.json").read_text())
    assert counts["train"]["novel_annotations_dropped"] > 0  # novel objects are unannotated in training
