"""End to end: ``fit`` / ``lastvit train`` write loadable checkpoints; kill-and-resume equals an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lastvit import create_model
from lastvit.cli import main
from lastvit.train import fit, load_config
from lastvit.train.classify import ClassifyModule

RECIPE = "tiny_smoke"


class _Crash(Callback):
    """Simulates a kill right after optimiser step ``at`` (before any later checkpoint)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("simulated kill")


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize(("ckpt_every", "kill_at"), [(3, 5), (4, 6)])  # mid-epoch / end-of-epoch checkpoint
def test_kill_and_resume_equals_uninterrupted(tmp_path, ckpt_every, kill_at):
    common = ["trainer.max_steps=10", f"trainer.ckpt_every={ckpt_every}", "trainer.val_every=5"]
    full = fit(load_config(RECIPE, [*common, f"out_dir={tmp_path / 'full'}"]))
    cut = load_config(RECIPE, [*common, f"out_dir={tmp_path / 'cut'}"])
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(cut, callbacks=[_Crash(kill_at)])  # 4 batches per epoch: step 3 is mid-epoch, step 4 its end
    assert not (tmp_path / "cut" / "model.pt").exists()
    ck = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == ckpt_every
    resumed = fit(load_config(RECIPE, [*common, f"out_dir={tmp_path / 'cut'}", "trainer.resume=auto"]))
    assert resumed["step"] == full["step"] == 10
    assert resumed["metrics"] == full["metrics"]
    a, b = _state(tmp_path / "full" / "model.pt"), _state(tmp_path / "cut" / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # training went on after the checkpoint (the equality above is not vacuous)
    assert not torch.equal(a["head.weight"], ck["state_dict"]["model.head.weight"])


def test_cli_train_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--config", RECIPE, "trainer.max_steps=5", f"out_dir={out}", "model.aggregator=cls"])
    assert rc == 0
    assert "lastvit train: done" in capsys.readouterr().out
    for f in ("model.pt", "model_best.pt", "metrics.json", "checkpoints/last.ckpt"):
        assert (out / f).is_file(), f
    assert not list(out.rglob("*.tmp"))
    assert list((out / "logs").rglob("metrics.csv"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["step"] == 5 and metrics["config"]["model"]["aggregator"] == "cls"
    assert metrics["metrics"]["val/n"] == 24
    model = create_model(checkpoint=str(out / "model.pt")).eval()
    assert model.aggregator_name == "cls" and model.num_classes == 4
    # the same weights through Lightning's full-state checkpoint
    ck = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    ref = ClassifyModule(**ck["hyper_parameters"])
    ref.load_state_dict(ck["state_dict"])
    ref.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    # resuming a finished run is a no-op that keeps the step
    assert main(["train", "--config", RECIPE, "trainer.max_steps=5", f"out_dir={out}", "model.aggregator=cls",
                 "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["metrics"]["step"] == 5


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: no such recipe file" in capsys.readouterr().err
    assert main(["train", "--config", RECIPE, f"out_dir={tmp_path}", "--resume"]) == 2
    assert "last.ckpt: no checkpoint to resume from" in capsys.readouterr().err


CLIP_RUN = {
    "task": "clip",
    "model": {"vision": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
              "text": {"context_length": 12, "width": 32, "heads": 2, "layers": 1}, "embed_dim": 16,
              "aggregator_kwargs": {"k": 2}},
    "data": {"synthetic": {"image_size": 32, "num_classes": 4}, "train_size": 32, "val_size": 8, "global_batch": 8},
    "optim": {"lr": 2e-3, "warmup_steps": 2},
    "trainer": {"max_steps": 8, "ckpt_every": 3, "val_every": 4, "progress_bar": False, "log_every": 1},
}
DINO_RUN = {
    "task": "dino",
    "model": {"name": "vit_micro_patch8_64", "arch": {"depth": 1, "embed_dim": 48, "num_heads": 3},
              "drop_path_rate": 0.1},  # drop-path draws: the saved random state must carry over
    "dino": {"out_dim": 32, "hidden_dim": 64, "bottleneck_dim": 16},
    "crops": {"n_local": 2},
    "data": {"synthetic": {"num_classes": 2}, "train_size": 32, "val_size": 8, "global_batch": 8},
    "eval": {"enabled": False},
    "trainer": {"max_epochs": 2, "ckpt_every": 3, "progress_bar": False, "log_every": 1},
}


def _weights(path):
    from lastvit.checkpoints import safe_torch_load

    obj, _ = safe_torch_load(path)
    return obj.get("state_dict", obj) if isinstance(obj, dict) else obj


@pytest.mark.parametrize("recipe", [CLIP_RUN, DINO_RUN], ids=["clip", "dino"])
def test_every_task_resumes_to_the_uninterrupted_result(tmp_path, recipe):
    """8 steps of 4 batches per epoch; the run is killed after step 5 (checkpoint at step 3, mid-epoch)."""
    full = fit({**recipe, "out_dir": str(tmp_path / "full")})
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit({**recipe, "out_dir": str(tmp_path / "cut")}, callbacks=[_Crash(5)])
    assert not (tmp_path / "cut" / "model.pt").exists()
    ck = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 3
    cut_trainer = {**recipe["trainer"], "resume": "auto"}
    resumed = fit({**recipe, "out_dir": str(tmp_path / "cut"), "trainer": cut_trainer})
    assert resumed["step"] == full["step"] == 8
    assert resumed["metrics"] == full["metrics"]
    a, b = _weights(tmp_path / "full" / "model.pt"), _weights(tmp_path / "cut" / "model.pt")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # training went on after the checkpoint (the equality above is not vacuous)
    before = {k: v for k, v in ck["state_dict"].items()}
    assert any(not torch.equal(v, before[n]) for n, v in _module_weights(tmp_path / "full").items() if n in before)


def _module_weights(run):
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ck["state_dict"]
