"""Label supervision: ``ClassifyModule`` (cross-entropy on the readout's logits, top-1/top-5); the task's
``DEFAULTS``, ``resolve_config``, ``build`` and ``export`` for :func:`lastvit.train.fit`."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from lastvit.train.config import DEFAULTS, per_device_batch, resolve_classify
from lastvit.train.data import ImageFolderDataModule, SyntheticDataModule
from lastvit.train.optim import build_optimizer, build_scheduler, param_groups

__all__ = ["DEFAULTS", "ClassifyModule", "resolve_config", "build", "export", "build_model", "topk_correct"]


def resolve_config(raw: dict[str, Any], src: str = "config") -> dict[str, Any]:
    """A label-supervised recipe merged onto :data:`DEFAULTS` and checked."""
    return resolve_classify(raw, src)


def build_model(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """A ``LastViT`` from a ``model`` config section (``num_classes`` must be filled in)."""
    from lastvit.factory import create_model

    if model_cfg.get("num_classes") is None:
        raise ValueError("model.num_classes is not set")
    return create_model(
        model_cfg.get("name"),
        aggregator=model_cfg.get("aggregator", "lazystrike"),
        aggregator_kwargs=dict(model_cfg.get("aggregator_kwargs") or {}),
        num_classes=int(model_cfg["num_classes"]),
        drop_path_rate=float(model_cfg.get("drop_path_rate", 0.0)),
        **dict(model_cfg.get("arch") or {}),
    )


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (k clipped to the class count)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == labels[:, None]
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


class ClassifyModule(L.LightningModule):
    """Cross-entropy training of a ``LastViT`` with any readout.

    Validation metrics are exact over the whole val set on any number of ranks: each rank sums its loss,
    top-1/top-5 hits and sample count; the sums are all-reduced at the end of the epoch and divided once.
    ``self.val_metrics`` holds the last result (``val/loss``, ``val/top1``, ``val/top5`` in %, ``val/n``).
    """

    def __init__(self, model_cfg: dict[str, Any], optim_cfg: dict[str, Any], model: torch.nn.Module | None = None):
        super().__init__()
        self.save_hyperparameters({"model_cfg": model_cfg, "optim_cfg": optim_cfg})
        self.model_cfg, self.optim_cfg = dict(model_cfg), dict(optim_cfg)
        self.model = model if model is not None else build_model(self.model_cfg)
        self.val_metrics: dict[str, float] = {}
        self.val_step = -1  # global step of the last validation
        self._val_sums: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["image"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=float(self.optim_cfg.get("label_smoothing", 0)))
        log_every = max(int(getattr(self.trainer, "log_every_n_steps", 1) or 1), 1)
        # only on the steps the loggers write (and the first): Lightning's self.log costs ~1 ms a call on a CPU
        if (self.global_step + 1) % log_every == 0 or self.global_step == 0:
            with torch.no_grad():
                top1 = topk_correct(logits.detach(), batch["label"], (1,))[0].float() / len(logits) * 100
            self.log("train/top1", top1, on_step=True, prog_bar=False)
            self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, prog_bar=False)
            self.log("train/loss", loss.detach(), on_step=True, prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(4, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.model(batch["image"]).float()
        labels = batch["label"]
        loss_sum = F.cross_entropy(logits, labels, reduction="sum")
        c1, c5 = topk_correct(logits, labels, (1, 5))
        self._val_sums += torch.stack([loss_sum.double(), c1.double(), c5.double(),
                                       torch.tensor(float(len(labels)), dtype=torch.float64, device=self.device)])

    def on_validation_epoch_end(self) -> None:
        sums = self._val_sums
        if sums is None:
            return
        if self.trainer is not None and self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums.clone(), reduce_op="sum")
        n = max(float(sums[3]), 1.0)
        self.val_metrics = {"val/loss": float(sums[0]) / n, "val/top1": 100.0 * float(sums[1]) / n,
                            "val/top5": 100.0 * float(sums[2]) / n, "val/n": int(sums[3])}
        self.val_step = int(self.global_step)
        # already global and identical on every rank: the mean over ranks that sync_dist takes is the same value
        for k in ("val/loss", "val/top1", "val/top5"):
            self.log(k, self.val_metrics[k], prog_bar=k == "val/top1", sync_dist=True)

    def summary(self) -> dict[str, Any]:
        """The final metrics of a run: the last validation's."""
        return dict(self.val_metrics)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = build_optimizer(param_groups(self.model, float(self.optim_cfg["weight_decay"])), self.optim_cfg)
        total = int(self.trainer.estimated_stepping_batches) if self.trainer is not None else 1
        sched = build_scheduler(opt, total, self.optim_cfg)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def build(cfg: dict[str, Any]) -> tuple[ClassifyModule, L.LightningDataModule]:
    """The ``task: classify`` entry point: ``(LightningModule, LightningDataModule)`` from a resolved recipe."""
    d, t = cfg["data"], cfg["trainer"]
    b = per_device_batch(cfg)
    seed = int(t.get("seed", 0))
    if d["kind"] == "synthetic":
        dm: L.LightningDataModule = SyntheticDataModule(
            d.get("synthetic") or {}, batch_size=b, val_batch=d.get("val_batch"), train_size=int(d["train_size"]),
            val_size=int(d["val_size"]), data_seed=int(d.get("data_seed", 0)), flip=bool(d["flip"]), seed=seed,
            num_workers=int(d["num_workers"]), cache=bool(d.get("cache", True)))
    else:
        dm = ImageFolderDataModule(
            d["root"], batch_size=b, val_batch=d.get("val_batch"), img_size=int(d["img_size"]),
            resize=int(d["resize"]), flip=bool(d["flip"]), seed=seed, num_workers=int(d["num_workers"]))
    model_cfg = dict(cfg["model"])
    if model_cfg.get("num_classes") is None:
        model_cfg["num_classes"] = dm.num_classes
    return ClassifyModule(model_cfg, dict(cfg["optim"])), dm


def export(module: ClassifyModule, out_dir: str | os.PathLike, extra: dict[str, Any]) -> dict[str, str]:
    """``model.pt``: the trained classifier in lastvit's format (rank 0 only)."""
    from lastvit.checkpoints import save_checkpoint

    os.makedirs(out_dir, exist_ok=True)
    save_checkpoint(module.model, os.path.join(out_dir, "model.pt"), extra=extra)
    return {"model": "model.pt", "best": "model_best.pt", "lightning": "checkpoints/last.ckpt"}
