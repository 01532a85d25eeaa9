"""benchmarks/gpu_check.sh --device cpu --smoke: every section runs and the one JSON has its structure (no timing
is asserted: speed lives in benchmarks/)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("tests", "train", "discovery", "pib", "study")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHON=sys.executable)
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--smoke", "--out",
                        str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    f = out / "gpu_check.json"
    assert f.is_file(), f"gpu_check.sh wrote no JSON (rc {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    r = json.loads(f.read_text())
    r["_returncode"] = p.returncode
    r["_stderr"] = p.stderr[-3000:]
    return r


def _finite_positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_every_section_ran_and_passed(report):
    assert list(report["sections"]) == list(SECTIONS)
    failed = {k: v.get("error") or v.get("output_tail") or v for k, v in report["sections"].items() if not v["ok"]}
    assert not failed, failed
    assert report["ok"] is True and report["_returncode"] == 0, report["_stderr"]
    assert report["smoke"] is True and report["machine"]["device"] == "cpu"
    assert all(_finite_positive(v["seconds"]) for v in report["sections"].values())


def test_gpu_tests_section_ran_the_device_tests(report):
    t = report["sections"]["tests"]
    names = {c["name"].split("[")[0] for c in t["cases"]}
    assert {"test_lazystrike_on_device_equals_cpu", "test_autocast_same_selection_on_separated_tokens",
            "test_autocast_model_scores_finite_and_close", "test_fused_attention_is_used_and_matches_math"} <= names
    assert t["counts"]["passed"] == len(t["cases"]) and t["counts"]["skipped"] == 0


def test_train_section_is_a_ddp_bf16_run(report):
    t = report["sections"]["train"]
    assert t["process_group_backend"] == "gloo" and t["world_size"] == 1  # NCCL on CUDA
    assert t["precision"] == "bf16-mixed" and t["overrides"]["trainer.strategy"] == "ddp"
    assert t["steps"] == t["overrides"]["trainer.max_steps"]
    assert _finite_positive(t["steps_per_s_mean"]) and _finite_positive(t["steps_per_s_median"])
    assert 0.0 <= t["final_val_top1"] <= 100.0 and t["fused_attn"] is True


def test_discovery_section_has_fps_for_every_method_and_batching(report):
    d = report["sections"]["discovery"]
    for m in ("lazystrike", "lost", "tokencut"):
        assert _finite_positive(d["methods"][m]["fps_batch1"]) and _finite_positive(d["methods"][m]["fps_batched"])
    assert _finite_positive(d["forward_only"]["fps_batch1"]) and d["batched_size"] > 1
    assert d["lazystrike_over_lost_batch1"] == pytest.approx(
        d["methods"]["lazystrike"]["fps_batch1"] / d["methods"]["lost"]["fps_batch1"])
    assert d["batched_boxes_equal_batch1"] == {"lazystrike": True, "lost": True, "tokencut": True}


def test_pib_and_study_sections(report):
    p = report["sections"]["pib"]
    assert _finite_positive(p["pib_over_bare"]) and p["pib_images_scored"] == p["batch"] * p["batches"]
    s = report["sections"]["study"]
    assert s["ran"] is True and s["runs"] == 1 and s["paradigm"] == "self"
    assert s["config"].endswith("synthetic_self.yaml") and 0.0 <= s["summary"][0]["accuracy"] <= 1.0
