"""DINO for LaSt-ViT: EMA teacher, centring, loss by hand, training steps, export/re-import, multi-crop, K per crop."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from lastvit import create_model
from lastvit.aggregate import LazyStrike
from lastvit.data.multicrop import BatchMultiCrop
from lastvit.models.dino import (
    DINOHead,
    DINOLoss,
    MultiCropWrapper,
    WeightNormLinear,
    ema_update,
)
from lastvit.train import fit as run_fit
from lastvit.train.dino import DINOModule, export_dino_checkpoint, resolve_config, save_teacher
from lastvit.train.optim import cosine_schedule


def fit(cfg, out_dir):
    return run_fit({**cfg, "task": "dino", "out_dir": str(out_dir)})

TINY = {
    "model": {"name": "vit_micro_patch8_64", "arch": {"depth": 2, "embed_dim": 48, "num_heads": 3},
              "drop_path_rate": 0.0},
    "dino": {"out_dim": 32, "hidden_dim": 64, "bottleneck_dim": 16},
    "crops": {"n_local": 2},
    "data": {"global_batch": 8},
    "trainer": {"max_epochs": 2},
}


def _cfg(**over):
    cfg = json.loads(json.dumps(TINY))
    for sec, vals in over.items():
        cfg.setdefault(sec, {}).update(vals)
    return cfg


def _crops(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 64, 64, generator=g) for _ in range(2)] + \
        [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)]


def test_teacher_is_ema_of_student_after_a_step():
    torch.manual_seed(0)
    m = DINOModule(_cfg(dino={"freeze_last_layer": 0}))
    m.make_schedules(4)
    m.schedules["momentum"][:] = 0.75
    m.schedules["lr"][:] = 1e-3
    t0 = [p.detach().clone() for p in m.teacher.parameters()]
    # teacher starts as a copy of the student
    for a, b in zip(t0, m.student.parameters()):
        assert torch.equal(a, b)
    opt = m.configure_optimizers()
    logs = m.train_step(_crops(), epoch=0, it=0, optimizer=opt)
    assert logs["momentum"] == 0.75
    s1 = [p.detach().clone() for p in m.student.parameters()]
    changed = 0
    for t_old, s_new, t_new in zip(t0, s1, m.teacher.parameters()):
        torch.testing.assert_close(t_new, 0.75 * t_old + 0.25 * s_new, rtol=0, atol=1e-6)
        assert not t_new.requires_grad and t_new.grad is None
        changed += int(not torch.equal(t_new, t_old))
    assert changed > 10  # the student moved, so did the teacher


def test_ema_update_known_values():
    t, s = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        t.weight.copy_(torch.tensor([[1.0, 2.0]]))
        t.bias.fill_(4.0)
        s.weight.copy_(torch.tensor([[3.0, -2.0]]))
        s.bias.fill_(0.0)
    ema_update(t, s, 0.9)
    torch.testing.assert_close(t.weight, torch.tensor([[1.2, 1.6]]))
    torch.testing.assert_close(t.bias, torch.tensor([3.6]))


def test_centre_update_by_hand():
    loss = DINOLoss(3, ncrops=2, center_momentum=0.9)
    loss.center.copy_(torch.tensor([[1.0, -1.0, 0.5]]))
    t = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]])
    loss(torch.zeros(4, 3), t, epoch=0)
    torch.testing.assert_close(loss.center, torch.tensor([[0.9 + 0.1 * 2.0, -0.9 + 0.1 * 1.0, 0.45 + 0.1 * 1.0]]))


def _softmax(v, temp):
    e = [math.exp(x / temp) for x in v]
    return [x / sum(e) for x in e]


def test_loss_equals_hand_computation():
    # 3 crops (2 global + 1 local), batch 2, 3 prototypes; teacher temperature warm-up 0.04 -> 0.07 over 3 epochs
    s = torch.tensor([[0.1, 0.5, -0.2], [1.0, 0.0, 0.3],    # crop 0
                      [0.2, -0.4, 0.9], [0.0, 0.2, 0.1],    # crop 1
                      [-0.3, 0.8, 0.4], [0.5, 0.5, -1.0]])  # crop 2
    t = torch.tensor([[0.3, 0.1, 0.0], [0.2, 0.9, -0.1],
                      [0.0, 0.4, 0.6], [-0.5, 0.0, 0.5]])
    c = [0.05, -0.1, 0.02]
    loss = DINOLoss(3, ncrops=3, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3,
                    epochs=10, student_temp=0.1, center_momentum=0.9)
    loss.center.copy_(torch.tensor([c]))
    assert loss.teacher_temp(1) == pytest.approx(0.055)
    got = loss(s, t, epoch=1)
    tt, st, b = 0.055, 0.1, 2
    total, terms = 0.0, 0
    for iq in range(2):
        for v in range(3):
            if v == iq:
                continue
            ce = 0.0
            for n in range(b):
                q = _softmax([t[iq * b + n, j].item() - c[j] for j in range(3)], tt)
                p = _softmax([s[v * b + n, j].item() for j in range(3)], st)
                ce += -sum(qj * math.log(pj) for qj, pj in zip(q, p))
            total += ce / b
            terms += 1
    assert terms == 4
    assert got.item() == pytest.approx(total / terms, rel=1e-5)


def test_schedules():
    sched = cosine_schedule(1.0, 0.0, epochs=2, iters_per_epoch=5, warmup_epochs=1)
    assert len(sched) == 10
    assert sched[:5].tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert sched[5:].tolist() == pytest.approx([0.5 * (1 + math.cos(math.pi * i / 5)) for i in range(5)])
    m = DINOModule(_cfg(optim={"lr": 0.001, "warmup_epochs": 1}, data={"global_batch": 512}))
    sch = m.make_schedules(3)
    assert sch["lr"].max() == pytest.approx(0.002)  # lr * 512 / 256
    assert sch["momentum"][0] == pytest.approx(0.996) and sch["momentum"][-1] < 1.0
    assert sch["wd"][0] == pytest.approx(0.04)


def test_weight_norm_layer_matches_torch_and_head_keys():
    with warnings.catch_warnings():  # torch's legacy weight_norm is the reference (deprecated, still exact)
        warnings.simplefilter("ignore", FutureWarning)
        ref = torch.nn.utils.weight_norm(torch.nn.Linear(5, 7, bias=False))
    ours = WeightNormLinear(5, 7)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5)
    torch.testing.assert_close(ours(x), ref(x))
    head = DINOHead(12, 7, hidden_dim=16, bottleneck_dim=5)
    assert sorted(head.state_dict()) == sorted(
        ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias",
         "last_layer.weight_g", "last_layer.weight_v"])
    assert not head.last_layer.weight_g.requires_grad
    assert torch.equal(head.last_layer.weight_g, torch.ones(7, 1))


def test_training_steps_reduce_loss_on_fixed_batch():
    torch.manual_seed(0)
    m = DINOModule(_cfg(dino={"freeze_last_layer": 0}, optim={"lr": 0.05, "warmup_epochs": 0}))
    m.make_schedules(100)
    opt = m.configure_optimizers()
    crops = _crops(b=4, seed=1)
    losses = [m.train_step(crops, epoch=0, it=i, optimizer=opt)["loss"] for i in range(8)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.1, losses


def test_freeze_last_layer_in_first_epoch():
    torch.manual_seed(0)
    m = DINOModule(_cfg(dino={"freeze_last_layer": 1, "norm_last_layer": False}))
    m.make_schedules(4)
    m.schedules["lr"][:] = 1e-2
    opt = m.configure_optimizers()
    v0 = m.student.head.last_layer.weight_v.detach().clone()
    m.train_step(_crops(), epoch=0, it=0, optimizer=opt)
    assert torch.equal(m.student.head.last_layer.weight_v, v0)
    m.train_step(_crops(), epoch=1, it=4, optimizer=opt)
    assert not torch.equal(m.student.head.last_layer.weight_v, v0)


def test_multicrop_shapes_and_per_crop_k():
    aug = BatchMultiCrop(global_size=48, local_size=24, n_local=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    x = torch.rand(5, 3, 64, 64)
    crops = aug(x, torch.Generator().manual_seed(0))
    assert [tuple(c.shape) for c in crops] == [(5, 3, 48, 48)] * 2 + [(5, 3, 24, 24)] * 3
    again = aug(x, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(crops, again))
    for c in crops:  # normalised from [0, 1]
        assert c.min() >= -2.0 - 1e-5 and c.max() <= 2.0 + 1e-5
    # a constant image stays constant under crop / flip / resize
    flat = torch.full((2, 3, 64, 64), 0.3)
    torch.testing.assert_close(aug.resized_crop(flat, 24, (0.05, 0.4)), torch.full((2, 3, 24, 24), 0.3))

    torch.manual_seed(0)
    bb = create_model("vit_micro_patch8_64", num_classes=0, head="none", aggregator_kwargs={"k": 0.25}, depth=1)
    w = MultiCropWrapper(bb, torch.nn.Identity())
    g, loc = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)
    pooled = w.pooled([g, loc])
    _, pg = bb.split(bb.encode(g))
    _, pl = bb.split(bb.encode(loc))
    assert pg.shape[1] == 64 and pl.shape[1] == 16
    torch.testing.assert_close(pooled[:2], LazyStrike(k=16)(pg))  # 0.25 * 64 patches
    torch.testing.assert_close(pooled[2:], LazyStrike(k=4)(pl))  # 0.25 * 16 patches
    assert not torch.allclose(pooled[2:], LazyStrike(k=16)(pl))
    # a separate K for the local crops
    m = DINOModule(_cfg(model={"local_aggregator_kwargs": {"k": 2}}))
    b = m.student.backbone
    _, pl = b.split(b.encode(loc))
    torch.testing.assert_close(m.student.pooled([g, loc])[2:], LazyStrike(k=2)(pl))
    _, pg = b.split(b.encode(g))
    torch.testing.assert_close(m.student.pooled([g, loc])[:2], LazyStrike(k=0.25)(pg))


def test_dino_export_reimports_to_identical_features(tmp_path):
    from lastvit.checkpoints import read_checkpoint

    torch.manual_seed(0)
    m = DINOModule(_cfg())
    m.make_schedules(2)
    m.train_step(_crops(), 0, 0, m.configure_optimizers())  # teacher != student from here on
    path = export_dino_checkpoint(m, tmp_path / "dino.pth", epoch=3)
    ck = torch.load(path, weights_only=True)
    assert ck["epoch"] == 3
    assert "module.backbone.cls_token" in ck["student"] and "module.head.last_layer.weight_g" in ck["student"]
    assert "backbone.blocks.1.attn.qkv.weight" in ck["teacher"] and "head.mlp.4.weight" in ck["teacher"]
    assert not any(k.startswith("module.") for k in ck["teacher"])
    conv = read_checkpoint(str(path))
    assert conv.format == "dino"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for branch, wrapper in (("teacher", m.teacher), ("student", m.student)):
            re = create_model(checkpoint=str(path), aggregator="lazystrike", aggregator_kwargs={"k": 0.25},
                              num_classes=0, dino_branch=branch, num_heads=3).eval()
            wrapper.eval()
            torch.testing.assert_close(re.forward_tokens(x).pooled, wrapper.backbone.forward_tokens(x).pooled,
                                       rtol=0, atol=0)
        # the head reads back from the official key names
        head = DINOHead(48, 32, hidden_dim=64, bottleneck_dim=16)
        head.load_state_dict({k[5:]: v for k, v in ck["teacher"].items() if k.startswith("head.")})
        f = m.teacher.backbone.forward_tokens(x).pooled
        torch.testing.assert_close(head(f), m.teacher.head(f))
    # lastvit's own format keeps the readout
    p2 = save_teacher(m, tmp_path / "teacher.pth")
    re = create_model(checkpoint=str(p2)).eval()
    assert re.aggregator_name == "lazystrike" and re.aggregator_kwargs == {"k": 0.25}
    with torch.no_grad():
        torch.testing.assert_close(re.forward_tokens(x).pooled, m.teacher.backbone.forward_tokens(x).pooled,
                                   rtol=0, atol=0)


def test_config_errors():
    with pytest.raises(ValueError, match=r"unknown key dino\.'tau'"):
        resolve_config({"dino": {"tau": 1}})
    with pytest.raises(ValueError, match="accumulate"):
        resolve_config({"trainer": {"accumulate": 2}})
    with pytest.raises(ValueError, match="local_scale"):
        resolve_config({"crops": {"local_scale": [0.5, 0.1]}})


def test_fit_synthetic_end_to_end(tmp_path):
    cfg = _cfg(data={"train_size": 16, "val_size": 8, "global_batch": 8, "synthetic": {"num_classes": 2}},
               trainer={"max_epochs": 1, "progress_bar": False, "log_every": 1},
               eval={"linear_epochs": 2, "knn_k": 4})
    out = fit(cfg, out_dir=tmp_path / "run")
    assert out["out_dir"] == tmp_path / "run" and out["model_path"] == tmp_path / "run" / "model.pt"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "dino" and metrics["files"]["dino_checkpoint"] == "dino_checkpoint.pth"
    saved, metrics = metrics, metrics["metrics"]
    assert metrics["iterations"] == 2 and len(metrics["epoch_loss"]) == 1
    assert 0.0 <= metrics["eval"]["knn_top1"] <= 100.0 and metrics["eval"]["n_val"] == 8
    assert saved["config"]["crops"]["n_local"] == 2
    for f in ("dino_checkpoint.pth", "model.pt", "checkpoints/last.ckpt"):
        assert (tmp_path / "run" / f).is_file(), f
    assert not list((tmp_path / "run").glob(".*.tmp"))
    re = create_model(checkpoint=str(tmp_path / "run" / "model.pt")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(re(x), out["model"](x), rtol=0, atol=0)
    # resume from checkpoints/last.ckpt for one more epoch: the first epoch is not repeated
    cfg2 = json.loads(json.dumps(cfg))
    cfg2["trainer"].update({"max_epochs": 2, "resume": "auto"})
    cfg2["eval"] = {"enabled": False}
    out2 = fit(cfg2, out_dir=tmp_path / "run")
    m2 = out2["metrics"]
    assert m2["iterations"] == 4 and len(m2["epoch_loss"]) == 2
    assert m2["epoch_loss"][0] == pytest.approx(metrics["epoch_loss"][0])
    assert "eval" not in m2


def test_train_reports_the_untrained_network_beside_every_probe_without_changing_training(tmp_path):
    from lastvit.paradigms import untrained_model
    from lastvit.train.dino import DINODataModule, evaluate_backbone

    data = {"train_size": 16, "val_size": 8, "global_batch": 8, "synthetic": {"num_classes": 2}}
    kw = dict(data=data, trainer={"max_epochs": 1, "progress_bar": False, "log_every": 1},
              eval={"linear_epochs": 2, "knn_k": 4})
    m = fit(_cfg(**kw), out_dir=tmp_path / "a")["metrics"]
    assert {"knn_top1_untrained", "linear_top1_untrained"} <= set(m)
    # the untrained numbers are the probes of the very network training starts from (same seed, same readout)
    cfg = resolve_config(_cfg(**kw))
    dm = DINODataModule(cfg)
    dm.setup()
    tr, va = dm.eval_loaders()
    ref = evaluate_backbone(untrained_model(cfg).eval(), tr, va, cfg)
    assert m["knn_top1_untrained"] == pytest.approx(ref["knn_top1"])
    assert m["linear_top1_untrained"] == pytest.approx(ref["linear_top1"])
    # probing before the first step leaves the training itself untouched
    off = fit(_cfg(**{**kw, "eval": {"enabled": False}}), out_dir=tmp_path / "b")["metrics"]
    assert off["epoch_loss"] == m["epoch_loss"]
