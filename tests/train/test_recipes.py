"""Recipes as data: packaged YAML loaded by name, benchmarks by name, the readout as an override."""

from pathlib import Path

import pytest
import yaml

from lastvit.data.synthetic import SyntheticConfig
from lastvit.recipes import RECIPE_DIR, ConfigError, list_recipes, load_benchmark, load_recipe
from lastvit.train import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SYNTHETIC = ("label_synthetic", "text_synthetic", "self_synthetic")


def test_packaged_recipes_are_listed_and_load_by_name():
    assert set(SYNTHETIC) | {"tiny_smoke", "micro_synthetic"} <= set(list_recipes())
    assert load_recipe("label_synthetic")["task"] == "classify"
    assert load_recipe("text_synthetic")["task"] == "clip"
    assert load_recipe("self_synthetic")["task"] == "dino"


@pytest.mark.parametrize("name", SYNTHETIC)
def test_the_three_paradigms_share_the_one_demo_benchmark(name):
    bench = load_benchmark("synthetic_demo")
    raw = yaml.safe_load((RECIPE_DIR / f"{name}.yaml").read_text())
    assert raw["data"]["synthetic"] == "synthetic_demo"  # named, not copied
    cfg = load_recipe(name)
    assert cfg["data"]["synthetic"] == bench
    c = SyntheticConfig(**cfg["data"]["synthetic"])
    assert (c.num_classes, c.image_size, c.clutter) == (bench["num_classes"], bench["image_size"], bench["clutter"])
    assert "variants" not in cfg


def test_no_recipe_file_writes_a_benchmark_out():
    bench = load_benchmark("synthetic_demo")
    files = [*RECIPE_DIR.glob("*.yaml"), *CONFIGS.rglob("*.yaml")]
    assert files
    for f in files:
        raw = yaml.safe_load(f.read_text()) or {}
        synth = (raw.get("data") or {}).get("synthetic")
        if isinstance(synth, dict):
            assert {k: synth.get(k) for k in bench} != bench, f"{f} copies the synthetic_demo benchmark"


def test_readout_override_drops_the_old_readouts_options():
    lazy = load_recipe("text_synthetic")
    assert lazy["model"]["aggregator"] == "lazystrike" and lazy["model"]["aggregator_kwargs"] == {"k": 0.125}
    cls = load_recipe("text_synthetic", ["model.aggregator=cls"])
    assert cls["model"]["aggregator"] == "cls" and cls["model"]["aggregator_kwargs"] == {}
    same = load_recipe("text_synthetic", ["model.aggregator=lazystrike"])
    assert same["model"]["aggregator_kwargs"] == {"k": 0.125}  # unchanged readout keeps its options
    k1 = load_recipe("text_synthetic", ["model.aggregator=mean", "model.aggregator=lazystrike",
                                        "model.aggregator_kwargs.k=1"])
    assert k1["model"]["aggregator_kwargs"] == {"k": 1}
    # the override changes the copy only
    assert load_recipe("text_synthetic")["model"]["aggregator_kwargs"] == {"k": 0.125}


def test_overrides_and_variants():
    cfg = load_recipe("label_synthetic", ["data.synthetic.seed=3", "trainer.max_steps=7"])
    assert cfg["data"]["synthetic"]["seed"] == 3 and cfg["trainer"]["max_steps"] == 7
    full = load_recipe("label_synthetic")
    quick = load_recipe("label_synthetic", variant="quick")
    assert quick["trainer"]["max_steps"] < full["trainer"]["max_steps"]
    assert quick["data"]["train_size"] < full["data"]["train_size"]
    # the caller's overrides come after the variant's
    assert load_recipe("label_synthetic", ["trainer.max_steps=5"], variant="quick")["trainer"]["max_steps"] == 5
    with pytest.raises(ConfigError, match="no variant 'slow'"):
        load_recipe("label_synthetic", variant="slow")
    # a benchmark named by an override is expanded too
    assert load_recipe("micro_synthetic", ["data.synthetic=synthetic_demo"])["data"]["synthetic"] == \
        load_benchmark("synthetic_demo")


def test_unknown_names_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nosuch: no such recipe file or packaged recipe; packaged: .*"
                                                "label_synthetic"):
        load_recipe("nosuch")
    with pytest.raises(FileNotFoundError, match="missing.yaml: no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown benchmark 'nosuch'"):
        load_recipe("micro_synthetic", ["data.synthetic=nosuch"])
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: a recipe must be a YAML mapping"):
        load_recipe(p)


def test_a_path_loads_like_a_name(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text((RECIPE_DIR / "tiny_smoke.yaml").read_text())
    assert load_recipe(p) == load_recipe("tiny_smoke")


@pytest.mark.parametrize("readout", [[], ["model.aggregator=cls"]])
@pytest.mark.parametrize("name", ["label_synthetic", "micro_synthetic", "tiny_smoke",
                                  "configs/imagenet/vit_b16.yaml"])
def test_classify_recipes_resolve_for_both_readouts(name, readout):
    extra = ["data.root=/data/imagenet"] if "imagenet" in name else []
    cfg = load_config(name, [*readout, *extra])
    assert cfg["model"]["aggregator"] == ("cls" if readout else "lazystrike")
    if readout:
        assert cfg["model"]["aggregator_kwargs"] == {}


@pytest.mark.parametrize("readout", [[], ["model.aggregator=cls"]])
@pytest.mark.parametrize("name,task", [("text_synthetic", "clip"), ("self_synthetic", "dino"),
                                       ("configs/clip/vit_b16_openai_finetune.yaml", "clip"),
                                       ("configs/dino/vit_s16_imagenet.yaml", "dino")])
def test_clip_and_dino_recipes_resolve_for_both_readouts(name, task, readout):
    cfg = load_config(name, readout)
    assert cfg["task"] == task and cfg["model"]["aggregator"] == ("cls" if readout else "lazystrike")
    if readout:
        assert cfg["model"]["aggregator_kwargs"] == {}
    else:
        assert cfg["model"]["aggregator_kwargs"].get("k")
    assert cfg["data"]["global_batch"] > 0


def test_a_cls_recipe_does_not_inherit_the_tasks_default_k():
    from lastvit.train.dino import DEFAULTS, resolve_config

    assert DEFAULTS["model"]["aggregator_kwargs"]  # the task default carries a K for LazyStrike
    cfg = resolve_config({"model": {"aggregator": "cls"}})
    assert cfg["model"]["aggregator_kwargs"] == {}
    assert resolve_config({"model": {"aggregator": "lazystrike"}})["model"]["aggregator_kwargs"] == \
        DEFAULTS["model"]["aggregator_kwargs"]


def test_no_readout_twin_files():
    names = [p.stem for p in [*CONFIGS.rglob("*.yaml"), *RECIPE_DIR.glob("*.yaml")]]
    assert names
    twins = [n for n in names if n.endswith(("_cls", "_lazystrike"))]
    assert twins == [], f"readout twins (make the readout an override): {twins}"


@pytest.mark.parametrize("name", list_recipes())
def test_every_packaged_recipe_resolves_and_builds_for_both_readouts(name):
    from lastvit.train import build

    for readout in ([], ["model.aggregator=cls"]):
        cfg = load_config(name, [*readout, "data.train_size=64", "data.val_size=16"])
        if cfg["task"] in ("classify", "clip", "dino"):
            module, _ = build(cfg)
            assert module.model is not None
