"""The shipped synthetic YAML recipes are the demo's recipes (lastvit.paradigms), so `lastvit train` on them
reproduces `lastvit demo --paradigm ...` runs."""

from pathlib import Path

import pytest
import yaml

from lastvit.paradigms import paradigm_recipe

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("synthetic", "text", "aggregator_kwargs"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("paradigm,folder", [("text", "clip"), ("self", "dino")])
@pytest.mark.parametrize("readout", ["cls", "lazystrike"])
def test_synthetic_yaml_equals_the_demo_recipe(paradigm, folder, readout):
    shipped = yaml.safe_load((CONFIGS / folder / f"synthetic_{readout}.yaml").read_text())
    demo = paradigm_recipe(paradigm, readout, out=shipped["out_dir"], seed=0)
    a, b = _flat(shipped), _flat(demo)
    for key in ("data.data_seed", "trainer.seed", "trainer.progress_bar"):  # defaults the YAML leaves out
        b.pop(key, None)
    b["data.synthetic"] = {k: v for k, v in b["data.synthetic"].items() if k != "seed"}
    if paradigm == "self":  # the YAML keeps DINO's own kNN / linear probes; the demo runs its diagnostics instead
        a = {k: v for k, v in a.items() if not k.startswith("eval.")}
        b = {k: v for k, v in b.items() if not k.startswith("eval.")}
    assert a == b
