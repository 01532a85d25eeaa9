"""Schedule values, parameter groups, recipe loading and overrides."""

from __future__ import annotations

import math

import pytest
import torch

from lastvit import create_model
from lastvit.train import ConfigError, load_config, lr_factor, param_groups, per_device_batch
from lastvit.train.optim import build_optimizer, build_scheduler, no_decay_names


def test_lr_factor_known_values():
    # total 1000 steps, warm-up 1% (10 steps) from 0.1x, cosine 1 -> 0.001
    c = lambda w: 0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * w))
    assert lr_factor(0, 1000) == pytest.approx(0.1)
    # half-way through the warm-up: mean of 0.1 and the cosine at 1%
    assert lr_factor(5, 1000) == pytest.approx(0.5 * 0.1 + 0.5 * c(0.01))
    assert lr_factor(10, 1000) == pytest.approx(c(0.01))
    assert lr_factor(500, 1000) == pytest.approx(0.5005)
    assert lr_factor(1000, 1000) == pytest.approx(0.001)
    assert lr_factor(250, 1000, warmup_frac=0.0) == pytest.approx(0.001 + 0.999 * 0.5 * (1 + math.sqrt(0.5)))


def test_scheduler_drives_optimizer_lr():
    model = torch.nn.Linear(2, 2)
    ocfg = {"lr": 1e-3, "weight_decay": 0.3, "betas": [0.9, 0.95], "warmup_frac": 0.1, "warmup_factor": 0.1,
            "min_lr_factor": 0.001}
    opt = build_optimizer(model, ocfg)
    sched = build_scheduler(opt, 100, ocfg)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[5] == pytest.approx(1e-3 * (0.05 + 0.5 * (0.001 + 0.999 * 0.5 * (1 + math.cos(0.1 * math.pi)))))
    assert lrs[50] == pytest.approx(1e-3 * 0.5005)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    assert max(lrs) <= 1e-3 and lrs[-1] < 2e-6


def test_param_groups_no_decay_on_norms_biases_tokens():
    m = create_model("vit_micro_patch8_64", num_classes=5, reg_tokens=2, depth=1, aggregator="attn")
    groups = param_groups(m, 0.3)
    decay = {id(p) for p in groups[0]["params"]}
    names = dict(m.named_parameters())
    assert groups[0]["weight_decay"] == 0.3 and groups[1]["weight_decay"] == 0.0
    for n in ("encoder.pos_embed", "encoder.cls_token", "encoder.reg_token", "encoder.norm.weight",
              "encoder.norm.bias", "encoder.blocks.0.norm1.weight", "encoder.blocks.0.attn.qkv.bias", "head.bias",
              "encoder.patch_embed.proj.bias"):
        assert id(names[n]) not in decay, n
    for n in ("encoder.blocks.0.attn.qkv.weight", "encoder.blocks.0.mlp.fc1.weight", "head.weight",
              "encoder.patch_embed.proj.weight"):
        assert id(names[n]) in decay, n
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(names)
    assert set(no_decay_names(m)) == {n for n, p in names.items() if id(p) not in decay}


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_load_config_overrides_are_yaml_typed(tmp_path):
    cfg = load_config("tiny_smoke",
                      ["trainer.devices=2", "model.aggregator_kwargs={k: 7}", "optim.lr=2e-3", "out_dir=/x/y",
                       "trainer.resume=auto", "data.flip=false"])
    assert cfg["trainer"]["devices"] == 2 and cfg["model"]["aggregator_kwargs"] == {"k": 7}
    assert cfg["optim"]["lr"] == 2e-3 and cfg["out_dir"] == "/x/y" and cfg["data"]["flip"] is False
    assert cfg["optim"]["betas"] == [0.9, 0.95]  # default filled in
    assert per_device_batch(cfg) == 8


def test_release_recipes_match_the_release():
    for name in ("vit_b16_lazystrike", "vit_b16_cls"):  # the readout is an override of the one recipe
        readout = [] if "lazy" in name else ["model.aggregator=cls"]
        cfg = load_config("configs/imagenet/vit_b16.yaml", ["data.root=/data/imagenet", "trainer.devices=8",
                                                            "trainer.num_nodes=4", *readout])
        o, d, t = cfg["optim"], cfg["data"], cfg["trainer"]
        assert (o["lr"], o["weight_decay"], o["betas"]) == (1e-3, 0.3, [0.9, 0.95])
        assert (o["warmup_frac"], o["warmup_factor"], o["min_lr_factor"]) == (0.01, 0.1, 0.001)
        assert d["global_batch"] == 4096 and t["max_epochs"] == 100 and t["precision"] == "bf16-mixed"
        assert (d["img_size"], d["resize"]) == (224, 256)
        assert per_device_batch(cfg) == 128
        assert cfg["model"]["aggregator"] == ("lazystrike" if "lazy" in name else "cls")


def test_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not divisible"):
        load_config("tiny_smoke", ["trainer.devices=3"])
    p = _write(tmp_path, "task: classify\nmodel: {name: vit_micro_patch8_64, colour: red}\ntrainer: {max_steps: 1}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: unknown key model\.'colour'"):
        load_config(p)
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config("tiny_smoke", ["trainer.devices"])
    with pytest.raises(ConfigError, match="task must be"):
        load_config(_write(tmp_path, "task: segment\n"))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_devices_must_be_a_number():
    with pytest.raises(ConfigError, match="trainer.devices must be a positive number"):
        load_config("tiny_smoke", ["trainer.devices=auto"])
    cfg = load_config("tiny_smoke", ["trainer.devices=[0, 1]", "trainer.accumulate=2"])
    assert per_device_batch(cfg) == 4


def test_values_keep_the_type_of_their_default(tmp_path):
    with pytest.raises(ConfigError, match="tiny_smoke: trainer.max_steps must be a number, got 'ten'"):
        load_config("tiny_smoke", ["trainer.max_steps=ten"])
    with pytest.raises(ConfigError, match="data.flip must be true or false"):
        load_config("tiny_smoke", ["data.flip=3"])
    p = _write(tmp_path, "task: classify\nmodel: {name: vit_micro_patch8_64}\noptim: {lr: 1e-3}\n"
                         "trainer: {max_steps: 4}\n")
    cfg = load_config(p)  # YAML 1.1 reads 1e-3 as a string: it is the number it looks like
    assert cfg["optim"]["lr"] == 1e-3 and isinstance(cfg["optim"]["lr"], float)
    assert load_config("tiny_smoke", ["trainer.resume=auto"])["trainer"]["resume"] == "auto"
