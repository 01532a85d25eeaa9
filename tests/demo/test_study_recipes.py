from pathlib import Path

import pytest
import torch

import lastvit
from lastvit.train import load_config

STUDIES = Path(__file__).resolve().parents[2] / "configs" / "studies"
EXPECTED = {
    "patch16_imagenet.yaml": ("vit_base_patch16_224", {}),
    "patch28_imagenet.yaml": ("vit_base_patch28_224", {}),
    "window_none_imagenet.yaml": ("vit_small_patch16_224", {}),
    "window_1_5_9_11_imagenet.yaml": ("vit_small_patch16_224", {"window_size": 4, "window_layers": [0, 4, 8, 10]}),
    "window_all_imagenet.yaml": ("vit_small_patch16_224", {"window_size": 4, "window_layers": None}),
    "patch8_synthetic.yaml": ("vit_micro_patch8_64", {}),
    "patch16_synthetic.yaml": ("vit_micro_patch8_64", {"patch_size": 16}),
    "window_none_synthetic.yaml": ("vit_micro_patch8_64", {}),
    "window_some_synthetic.yaml": ("vit_micro_patch8_64", {"window_size": 2, "window_layers": [0, 2]}),
    "window_all_synthetic.yaml": ("vit_micro_patch8_64", {"window_size": 2, "window_layers": None}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_study_recipe_loads_with_the_train_schema(name):
    cfg = load_config(STUDIES / name, ["data.root=/nonexistent"] if "imagenet" in name else [])
    model_name, arch = EXPECTED[name]
    assert cfg["model"]["name"] == model_name and cfg["model"]["aggregator"] == "cls"
    assert (cfg["model"].get("arch") or {}) == arch


def test_synthetic_window_recipes_build_models_that_differ_only_in_attention():
    models = {}
    for name in ("window_none_synthetic.yaml", "window_some_synthetic.yaml", "window_all_synthetic.yaml"):
        m = load_config(STUDIES / name)["model"]
        torch.manual_seed(0)
        models[name] = lastvit.create_model(m["name"], aggregator="cls", num_classes=10, **(m.get("arch") or {}))
    x = torch.randn(1, 3, 64, 64)
    ref = models["window_none_synthetic.yaml"]
    outs = {}
    for name, mdl in models.items():
        mdl.load_state_dict(ref.state_dict())
        with torch.no_grad():
            outs[name] = mdl.eval()(x)
    assert not torch.allclose(outs["window_some_synthetic.yaml"], outs["window_none_synthetic.yaml"], atol=1e-4)
    assert not torch.allclose(outs["window_all_synthetic.yaml"], outs["window_some_synthetic.yaml"], atol=1e-4)
