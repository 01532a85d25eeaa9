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


def test_a_study_names_its_recipe_and_an_empty_readout_keeps_the_recipes_k(tmp_path, monkeypatch):
    import lastvit.paradigms as paradigms
    from lastvit.study import load_study, run_study

    seen = []

    def fake_run_one(paradigm, readout, **kw):
        cfg = paradigms.paradigm_recipe(paradigm, readout, out=str(kw["out"]), seed=kw["seed"],
                                        overrides=kw["overrides"], readout_kwargs=kw["readout_kwargs"],
                                        recipe=kw["recipe"])
        seen.append(cfg)
        m = dict.fromkeys(("accuracy", "pib", "pib_center", "score_auroc", "norm_block_max", "norm_block_median"),
                          0.5)
        return {"metrics": {**m, "outliers_last_block": {"outlier_fraction": 0.0}}}

    monkeypatch.setattr(paradigms, "run_one", fake_run_one)
    cfg = load_study(STUDIES / "synthetic_self_ssl.yaml")
    cfg["seeds"] = [0]
    run_study(cfg, tmp_path, verbose=False)
    by = {c["model"]["aggregator"]: c for c in seen}
    assert by["lazystrike"]["model"]["aggregator_kwargs"] == {"k": 0.125}  # the recipe's own K, not LazyStrike's 1
    assert by["lazystrike"]["data"]["synthetic"]["pattern_style"] == "flip_invariant"  # self_synthetic_ssl's data
    assert by["lazystrike"]["dino"]["use_bn_in_head"] is True and by["cls"]["eval"]["enabled"] is False
