"""Self-supervised LaSt-ViT: DINO training (Caron et al., 2021) with any readout (LazyStrike, CLS, ...).

The task module of :func:`lastvit.train.fit`: :data:`DEFAULTS`, ``resolve_config``, ``build(cfg) -> (DINOModule,
DINODataModule)`` and ``export`` (``model.pt``: the *teacher* backbone, a head-less :class:`~lastvit.models.LastViT`
in lastvit's format; ``dino_checkpoint.pth``: student, teacher and centre in the official layout). See
``docs/dino.md``.

The recipe, as in the paper and the public facebookresearch/dino repository:

* multi-crop: 2 global crops (RandomResizedCrop scale (0.4, 1)) + ``n_local`` local crops (scale (0.05, 0.4)),
  horizontal flip, colour jitter (p 0.8: brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1), grayscale
  (p 0.2), Gaussian blur (p 1.0 / 0.1 / 0.5 for global 1 / global 2 / local, sigma in [0.1, 2.0] px at 224 px),
  solarisation (p 0.2, second global crop only). On the synthetic set these run as batched tensor ops
  (:class:`BatchMultiCrop`); real image folders use torchvision transforms (:class:`MultiCropTransform`);
* student and EMA teacher with the same readout and a :class:`~lastvit.models.dino.DINOHead` each; the teacher
  sees the global crops only, the student all crops;
* AdamW; lr linear warm-up to ``lr * batch / 256`` then cosine to ``min_lr``; weight decay cosine
  ``weight_decay -> weight_decay_end`` (biases and norms: none); teacher momentum cosine ``momentum -> 1``;
  teacher temperature linear warm-up; per-parameter gradient clipping; the last head layer frozen for the first
  ``freeze_last_layer`` epochs; the teacher is updated after each optimizer step.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lastvit.data.multicrop import AUG_DEFAULTS, BatchMultiCrop, MultiCropTransform, collate_crops
from lastvit.factory import create_model
from lastvit.io import atomic_save
from lastvit.models.dino import (
    DINOHead,
    DINOLoss,
    MultiCropWrapper,
    build_local_aggregator,
    dino_state_dict,
    ema_update,
)
from lastvit.models.vit import LastViT
from lastvit.train.config import TRAINER_DEFAULTS, ConfigError, merge, per_device_batch
from lastvit.train.data import StepSampler, _ResumableLoader, cache_split
from lastvit.train.optim import clip_gradients, cosine_schedule

__all__ = [
    "DEFAULTS",
    "DINOModule",
    "DINODataModule",
    "resolve_config",
    "build",
    "export",
    "export_dino_checkpoint",
    "evaluate_backbone",
]

from lastvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402  (one definition)

# Every key a DINO recipe may set, with its default (the CPU-sized synthetic benchmark). The ``trainer`` section
# is the one shared by every task (lastvit.train.config.DEFAULTS["trainer"]); ``trainer.max_epochs`` is DINO's
# epoch count (all schedules span it), ``trainer.max_steps`` > 0 only cuts a run short.
DEFAULTS: dict[str, Any] = {
    "task": "dino",
    "out_dir": "runs/dino",
    "model": {
        "name": "vit_micro_patch8_64",  # lastvit preset or timm ViT name
        "arch": {},  # architecture overrides (lastvit.models.ARCH_DEFAULTS keys)
        "aggregator": "lazystrike",
        "aggregator_kwargs": {"k": 0.25},
        "local_aggregator_kwargs": None,  # e.g. {"k": 2}: another LazyStrike setting for the local crops
        "drop_path_rate": 0.1,  # student only
    },
    "dino": {
        "out_dim": 1024,
        "hidden_dim": 2048,
        "bottleneck_dim": 256,
        "nlayers": 3,
        "use_bn_in_head": False,
        "norm_last_layer": True,
        "momentum_teacher": 0.996,
        "warmup_teacher_temp": 0.04,
        "teacher_temp": 0.04,
        "warmup_teacher_temp_epochs": 0,
        "student_temp": 0.1,
        "center_momentum": 0.9,
        "freeze_last_layer": 1,
    },
    "crops": {
        "global_size": 64,
        "local_size": 32,
        "n_local": 6,
        "global_scale": [0.4, 1.0],
        "local_scale": [0.05, 0.4],
        **copy.deepcopy(AUG_DEFAULTS),  # flip, colour jitter, greyscale, blur, solarise, keep_object (official)
    },
    "optim": {
        "lr": 0.0005,  # at batch 256: the peak is lr * data.global_batch / 256 (lr_scaling: linear)
        "lr_scaling": "linear",  # linear: lr * global_batch / 256 (DINO's rule); none: lr as given
        "min_lr": 1.0e-6,
        "warmup_epochs": 1,
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,
        "clip_grad": 3.0,  # 0: no clipping
    },
    "data": {
        "kind": "synthetic",  # or "imagefolder" (root/train, root/val)
        "root": None,
        "synthetic": {},  # lastvit.data.SyntheticConfig keyword arguments
        "train_size": 2048,
        "val_size": 512,
        "data_seed": 0,
        "global_batch": 64,
        "num_workers": 0,
    },
    "eval": {
        "enabled": True,
        "knn_k": 20,
        "knn_t": 0.07,
        "linear_probe": True,
        "linear_epochs": 100,
        "linear_wd": 1.0e-4,
        "batch_size": 128,
    },
    "trainer": {**copy.deepcopy(TRAINER_DEFAULTS), "max_epochs": 10},
}


def resolve_config(cfg: dict[str, Any] | None, src: str = "dino config") -> dict[str, Any]:
    """The full DINO recipe: ``cfg`` deep-merged onto :data:`DEFAULTS`; unknown keys are a :class:`ConfigError`."""
    cfg = dict(cfg or {})
    if cfg.get("task", "dino") != "dino":
        raise ConfigError(f"{src}: task must be 'dino', got {cfg.get('task')!r}")
    out = merge(DEFAULTS, cfg, "", src)
    cr, d = out["crops"], out["dino"]
    if cr["n_local"] < 0:
        raise ConfigError(f"{src}: crops.n_local must be >= 0, got {cr['n_local']}")
    for key in ("global_scale", "local_scale"):
        lo, hi = cr[key]
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"{src}: crops.{key} must satisfy 0 < lo <= hi <= 1, got {cr[key]}")
    try:
        BatchMultiCrop(**{k: cr[k] for k in AUG_DEFAULTS})
    except ValueError as e:
        raise ConfigError(f"{src}: crops: {e}") from None
    if cr["keep_object"] and out["data"]["kind"] != "synthetic":
        raise ConfigError(f"{src}: crops.keep_object needs object boxes (data.kind synthetic)")
    if out["optim"]["lr_scaling"] not in ("linear", "none"):
        raise ConfigError(f"{src}: optim.lr_scaling must be 'linear' or 'none', got {out['optim']['lr_scaling']!r}")
    t = out["trainer"]
    if not t["max_epochs"] or int(t["max_epochs"]) < 1:
        raise ConfigError(f"{src}: trainer.max_epochs must be >= 1, got {t['max_epochs']}")
    if int(t["accumulate"]) != 1:
        raise ConfigError(f"{src}: trainer.accumulate must be 1 (DINO steps the teacher after every update)")
    per_device_batch(out, src)
    if d["out_dim"] < 1:
        raise ConfigError(f"{src}: dino.out_dim must be >= 1, got {d['out_dim']}")
    return out


# ----------------------------------------------------------------------------------------- data
def _render(dataset: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A synthetic split from the one cache (:func:`~lastvit.train.data.cache_split`, raw uint8 pixels)."""
    c = cache_split(dataset, raw=True, chunk=256)
    return c["image"], c["label"], c["box"]


class _CachedCropBatches(torch.utils.data.Dataset):
    """Multi-crop batches of the cached (uint8) images, read by ``(indices, epoch)`` keys of a
    :class:`~lastvit.train.data.StepSampler`. Each batch draws its augmentation from a generator seeded by
    ``(seed, epoch, indices)``, so a resumed run sees exactly the crops an uninterrupted one would."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, aug: BatchMultiCrop,
                 seed: int) -> None:
        self.images, self.labels, self.boxes, self.aug, self.seed = images, labels, boxes, aug, int(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[list[int], int]) -> dict[str, Any]:
        indices, epoch = key
        idx = torch.as_tensor(indices, dtype=torch.long)
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + int(epoch) * 7_919 + int(idx[0]) * 104_729 + len(idx)) % (2**63 - 1))
        return {"crops": self.aug(self.images[idx].float() / 255.0, g, boxes=self.boxes[idx]),
                "label": self.labels[idx]}


def _plain_batches(images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                   batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    m = torch.tensor(mean).view(1, 3, 1, 1)
    sd = torch.tensor(std).view(1, 3, 1, 1)
    return [((images[s:s + batch_size].float() / 255.0 - m) / sd, labels[s:s + batch_size])
            for s in range(0, len(images), batch_size)]


class DINODataModule(L.LightningDataModule):
    """Multi-crop training batches ``{"crops": [tensors], "label": (B,)}`` and plain eval sets for the probes.

    ``data.kind == "synthetic"``: :class:`lastvit.data.SyntheticDataset` images (un-normalised, from
    ``generate_batch``) augmented in batches by :class:`BatchMultiCrop`. ``"imagefolder"``: torchvision
    ``ImageFolder`` at ``data.root/train`` (and ``data.root/val`` for the probes) with :class:`MultiCropTransform`.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = resolve_config(cfg)
        self.batch_size = per_device_batch(self.cfg, "dino config")
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self._train = None

    # -- synthetic
    def _synthetic(self, split: str, size: int) -> Any:
        from lastvit.data import SyntheticConfig, SyntheticDataset

        return SyntheticDataset(SyntheticConfig(**self.cfg["data"]["synthetic"]), split=split, size=size,
                                seed=int(self.cfg["data"]["data_seed"]))

    def _root(self) -> Path:
        root = self.cfg["data"]["root"]
        if not root:
            raise ValueError("dino config: data.kind 'imagefolder' needs data.root")
        root = Path(root)
        if not (root / "train").is_dir():
            raise FileNotFoundError(f"{root}: no 'train' folder (expected an ImageFolder tree root/train/<class>/)")
        return root

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        d, cr = self.cfg["data"], self.cfg["crops"]
        if d["kind"] == "synthetic":
            self._train = self._synthetic("train", int(d["train_size"]))
            self._images, self._labels, self._boxes = _render(self._train)
            self.mean = tuple(getattr(self._train, "mean", IMAGENET_MEAN))
            self.std = tuple(getattr(self._train, "std", IMAGENET_STD))
        elif d["kind"] == "imagefolder":
            from torchvision.datasets import ImageFolder

            self._train = ImageFolder(str(self._root() / "train"), transform=MultiCropTransform(
                cr["global_size"], cr["local_size"], cr["n_local"], cr["global_scale"], cr["local_scale"],
                **{k: cr[k] for k in AUG_DEFAULTS}))
        else:
            raise ValueError(f"dino config: data.kind must be 'synthetic' or 'imagefolder', got {d['kind']!r}")

    def augment(self) -> BatchMultiCrop:
        cr = self.cfg["crops"]
        return BatchMultiCrop(cr["global_size"], cr["local_size"], cr["n_local"], cr["global_scale"],
                              cr["local_scale"], mean=self.mean, std=self.std, **{k: cr[k] for k in AUG_DEFAULTS})

    def train_dataloader(self) -> DataLoader:
        """Seeded, rank-aware, resumable batches (:class:`~lastvit.train.data.StepSampler`)."""
        self.setup()
        nw = int(self.cfg["data"]["num_workers"])
        t = self.trainer
        rank, world = (t.global_rank, t.world_size) if t is not None else (0, 1)
        n = len(self._train)
        if n < self.batch_size * world:
            raise ValueError(f"dino config: data.train_size ({n}) is smaller than one global batch "
                             f"({world} x {self.batch_size})")
        synthetic = self.cfg["data"]["kind"] == "synthetic"
        seed = int(self.cfg["trainer"]["seed"])
        sampler = StepSampler(n, self.batch_size, train=True, rank=rank, world=world, seed=seed, keys=synthetic)
        if t is not None:
            loop = t.fit_loop.epoch_loop
            sampler.progress_fn = lambda: loop.batch_progress.current.processed
        if synthetic:
            view = _CachedCropBatches(self._images, self._labels, self._boxes, self.augment(), seed)
            return _ResumableLoader(view, batch_size=None, sampler=sampler, num_workers=nw, step_sampler=sampler)
        return _ResumableLoader(self._train, batch_sampler=sampler, num_workers=nw, collate_fn=collate_crops,
                                pin_memory=torch.cuda.is_available(), step_sampler=sampler)

    def eval_loaders(self) -> tuple[Any, Any]:
        """Un-augmented (train, val) batches ``(images, labels)`` for kNN / linear probing."""
        d, bs = self.cfg["data"], int(self.cfg["eval"]["batch_size"])
        nw = int(d["num_workers"])
        if d["kind"] == "synthetic":
            self.setup()
            vi, vl, _ = _render(self._synthetic("val", int(d["val_size"])))
            return (_plain_batches(self._images, self._labels, self.mean, self.std, bs),
                    _plain_batches(vi, vl, self.mean, self.std, bs))
        from torchvision import transforms as T
        from torchvision.datasets import ImageFolder

        root = self._root()
        if not (root / "val").is_dir():
            raise FileNotFoundError(f"{root}: no 'val' folder for the kNN / linear probes")
        size = int(self.cfg["crops"]["global_size"])
        tf = T.Compose([T.Resize(int(round(size * 256 / 224)), interpolation=T.InterpolationMode.BICUBIC),
                        T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        return (DataLoader(ImageFolder(str(root / "train"), transform=tf), batch_size=bs, num_workers=nw),
                DataLoader(ImageFolder(str(root / "val"), transform=tf), batch_size=bs, num_workers=nw))


# ----------------------------------------------------------------------------------------- model
def _backbone(cfg: dict[str, Any], drop_path_rate: float) -> LastViT:
    m = cfg["model"]
    return create_model(m["name"], aggregator=m["aggregator"], aggregator_kwargs=dict(m["aggregator_kwargs"] or {}),
                        num_classes=0, head="none", drop_path_rate=drop_path_rate, **dict(m["arch"] or {}))


def _head(cfg: dict[str, Any], in_dim: int) -> DINOHead:
    d = cfg["dino"]
    return DINOHead(in_dim, d["out_dim"], hidden_dim=d["hidden_dim"], bottleneck_dim=d["bottleneck_dim"],
                    nlayers=d["nlayers"], use_bn=d["use_bn_in_head"], norm_last_layer=d["norm_last_layer"])


class DINOModule(L.LightningModule):
    """Student + EMA teacher (:class:`MultiCropWrapper` each) trained with :class:`DINOLoss`.

    Manual optimisation, in DINO's order per iteration: set lr / weight decay from their schedules, teacher
    forward on the 2 global crops (no gradient), student forward on all crops, loss, backward, per-parameter
    clipping, drop the last layer's gradients during the first ``freeze_last_layer`` epochs, optimizer step,
    then the EMA teacher update with the scheduled momentum.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = resolve_config(cfg)
        self.save_hyperparameters({"cfg": self.cfg})
        self.automatic_optimization = False
        m, d, cr = self.cfg["model"], self.cfg["dino"], self.cfg["crops"]
        student = _backbone(self.cfg, float(m["drop_path_rate"]))
        teacher = _backbone(self.cfg, 0.0)
        self.student = MultiCropWrapper(student, _head(self.cfg, student.embed_dim),
                                        build_local_aggregator(student, m["local_aggregator_kwargs"]))
        self.teacher = MultiCropWrapper(teacher, _head(self.cfg, teacher.embed_dim))
        self.teacher.load_state_dict(self.student.state_dict(), strict=False)  # no local readout in the teacher
        self.teacher.requires_grad_(False)
        self.ncrops = 2 + int(cr["n_local"])
        self.dino_loss = DINOLoss(d["out_dim"], self.ncrops, d["warmup_teacher_temp"], d["teacher_temp"],
                                  d["warmup_teacher_temp_epochs"], int(self.cfg["trainer"]["max_epochs"]),
                                  d["student_temp"], d["center_momentum"])
        self.schedules: dict[str, np.ndarray] = {}
        self.epoch_losses: list[float] = []
        self._sum, self._count = 0.0, 0
        self.untrained: dict[str, Any] | None = None  # the teacher's kNN / linear probes before any step

    @property
    def teacher_backbone(self) -> LastViT:
        return self.teacher.backbone

    # -- optimisation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
        return torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=0.0)

    def make_schedules(self, iters_per_epoch: int) -> dict[str, np.ndarray]:
        """Per-iteration lr (peak ``optim.lr * data.global_batch / 256``; ``optim.lr_scaling: none``: ``optim.lr``),
        weight decay and teacher momentum over ``trainer.max_epochs`` epochs of ``iters_per_epoch`` iterations."""
        o, d = self.cfg["optim"], self.cfg["dino"]
        bs = int(self.cfg["data"]["global_batch"]) if o.get("lr_scaling", "linear") == "linear" else 256
        ep, n = int(self.cfg["trainer"]["max_epochs"]), max(int(iters_per_epoch), 1)
        self.schedules = {
            "lr": cosine_schedule(o["lr"] * bs / 256.0, o["min_lr"], ep, n, warmup_epochs=o["warmup_epochs"]),
            "wd": cosine_schedule(o["weight_decay"], o["weight_decay_end"], ep, n),
            "momentum": cosine_schedule(d["momentum_teacher"], 1.0, ep, n),
        }
        self._iters_per_epoch = n
        return self.schedules

    def on_train_start(self) -> None:
        self.make_schedules(self.trainer.num_training_batches)
        if self.untrained is None:  # once: a resumed run has them from its checkpoint
            self.untrained = self._probe() if self.cfg["eval"]["enabled"] and self.trainer.is_global_zero else {}

    def _probe(self) -> dict[str, Any]:
        """The teacher's kNN / linear probes now, without touching the training's random streams."""
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is None:
            return {}
        dm.setup()
        tr, va = dm.eval_loaders()
        was_training = self.teacher.training
        with torch.random.fork_rng(devices=[]):
            res = evaluate_backbone(self.teacher_backbone.eval(), tr, va, self.cfg, device=self.device)
        self.teacher.train(was_training)
        return res

    def _sched(self, name: str, it: int) -> float:
        s = self.schedules[name]
        return float(s[min(it, len(s) - 1)])

    def train_step(self, crops: Sequence[torch.Tensor], epoch: int, it: int,
                   optimizer: torch.optim.Optimizer | None = None, backward: Any = None) -> dict[str, float]:
        """One DINO iteration on a multi-crop batch; returns the logged values.

        Without ``backward`` (a plain optimizer, no Trainer) the loss is backpropagated and the gradients clipped
        here; with ``backward`` (``manual_backward``) Lightning calls :meth:`on_before_optimizer_step` instead.
        """
        if not self.schedules:
            raise RuntimeError("DINOModule.train_step: call make_schedules(iters_per_epoch) first")
        if len(crops) != self.ncrops:
            raise ValueError(f"DINOModule: expected {self.ncrops} crops per batch, got {len(crops)}")
        opt = optimizer
        raw = getattr(opt, "optimizer", opt)
        lr, wd = self._sched("lr", it), self._sched("wd", it)
        for i, group in enumerate(raw.param_groups):
            group["lr"] = lr
            if i == 0:
                group["weight_decay"] = wd
        with torch.no_grad():
            t_out = self.teacher(list(crops[:2]))
        s_out = self.student(list(crops))
        loss = self.dino_loss(s_out, t_out, epoch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"DINO loss is {loss.item()} at epoch {epoch}, iteration {it}; stopping")
        opt.zero_grad()
        if backward is None:
            loss.backward()
            self._before_step(epoch)
        else:  # under a Trainer: clipping runs in on_before_optimizer_step, after AMP unscaling
            backward(loss)
        opt.step()
        m = self._sched("momentum", it)
        ema_update(self.teacher, self.student, m)
        return {"loss": float(loss.detach()), "lr": lr, "wd": wd, "momentum": m,
                "teacher_temp": self.dino_loss.teacher_temp(epoch)}

    def _before_step(self, epoch: int) -> None:
        """Per-parameter gradient clipping; no update of the last head layer in the first epochs."""
        clip = float(self.cfg["optim"]["clip_grad"])
        if clip > 0:
            clip_gradients(self.student, clip)
        if epoch < int(self.cfg["dino"]["freeze_last_layer"]):
            for p in self.student.head.last_layer.parameters():
                p.grad = None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._before_step(int(self.current_epoch))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        epoch = int(self.current_epoch)
        it = int(self.global_step)  # = epoch * iters_per_epoch + batch_idx, also after a mid-epoch resume
        logs = self.train_step(batch["crops"], epoch, it, self.optimizers(), self.manual_backward)
        self._sum += logs["loss"]
        self._count += 1
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False, on_step=True,
                      batch_size=batch["crops"][0].shape[0])
        self.log("loss", logs["loss"], prog_bar=True, on_step=True, logger=False,
                 batch_size=batch["crops"][0].shape[0])
        return torch.tensor(logs["loss"])

    def on_train_epoch_end(self) -> None:
        if self._count:
            self.epoch_losses.append(self._sum / self._count)
            self.log("train/epoch_loss", self.epoch_losses[-1], on_epoch=True, batch_size=1)
        self._sum, self._count = 0.0, 0

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dino_epoch_losses"] = list(self.epoch_losses)
        checkpoint["dino_untrained"] = self.untrained
        checkpoint["dino_epoch_sum"] = [float(self._sum), int(self._count)]  # the epoch in progress

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.epoch_losses = list(checkpoint.get("dino_epoch_losses", []))
        self.untrained = checkpoint.get("dino_untrained")
        self._sum, self._count = checkpoint.get("dino_epoch_sum", [0.0, 0])
        self._sum, self._count = float(self._sum), int(self._count)

    @property
    def model(self) -> LastViT:
        """The network a run exports (``model.pt``): the teacher backbone."""
        return self.teacher.backbone

    def summary(self) -> dict[str, Any]:
        """Final metrics: epochs, iterations, per-epoch loss and, with ``eval.enabled``, the teacher's kNN / linear
        probes (rank 0) beside the same probes of the untrained network (``knn_top1_untrained`` ...)."""
        trainer = self._trainer
        epochs = int(trainer.current_epoch) if trainer is not None else len(self.epoch_losses)
        out: dict[str, Any] = {"task": "dino", "epochs": epochs, "iterations": int(self.global_step),
                               "epoch_loss": list(self.epoch_losses)}
        out["final_loss"] = out["epoch_loss"][-1] if out["epoch_loss"] else None
        dm = trainer.datamodule if trainer is not None else None
        if self.cfg["eval"]["enabled"] and dm is not None and trainer.is_global_zero:
            dm.setup()
            tr, va = dm.eval_loaders()
            out["eval"] = evaluate_backbone(self.teacher_backbone.eval(), tr, va, self.cfg, device=self.device)
            out["knn_top1"] = out["eval"]["knn_top1"]
            if "linear_top1" in out["eval"]:
                out["linear_top1"] = out["eval"]["linear_top1"]
            # every self-supervised number beside the same network untrained (same seed, same readout)
            before = self.untrained or {}
            out["eval_untrained"] = before
            for k in ("knn_top1", "linear_top1"):
                if k in before:
                    out[f"{k}_untrained"] = before[k]
        return out


# ----------------------------------------------------------------------------------------- files
def _atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_save(obj, path, torch.save)


def export_dino_checkpoint(module: DINOModule, path: str | os.PathLike, epoch: int | None = None) -> Path:
    """Write ``module`` in the official DINO layout (atomic); returns the path.

    ``{"student": {"module.backbone.<timm keys>", "module.head.<...>"}, "teacher": {"backbone.*", "head.*"},
    "epoch": n, "dino_loss": {"center": ...}, "args": {...}}``: the student as saved through
    DistributedDataParallel (``module.`` prefix), the teacher without it, as facebookresearch/dino writes a ViT.
    """
    if epoch is None:
        trainer = getattr(module, "_trainer", None)
        epoch = int(trainer.current_epoch) if trainer is not None else len(module.epoch_losses)
    cfg = module.cfg
    ckpt = {
        "student": dino_state_dict(module.student, prefix="module."),
        "teacher": dino_state_dict(module.teacher),
        "epoch": int(epoch),
        "dino_loss": {"center": module.dino_loss.center.detach().cpu().clone()},
        "args": {
            "arch": cfg["model"]["name"],
            "patch_size": int(module.teacher_backbone.patch_size),
            "out_dim": int(cfg["dino"]["out_dim"]),
            "norm_last_layer": bool(cfg["dino"]["norm_last_layer"]),
            "use_bn_in_head": bool(cfg["dino"]["use_bn_in_head"]),
            "local_crops_number": int(cfg["crops"]["n_local"]),
            "aggregator": cfg["model"]["aggregator"],
            "aggregator_kwargs": dict(cfg["model"]["aggregator_kwargs"] or {}),
        },
    }
    return _atomic_torch_save(ckpt, path)


def save_teacher(module: DINOModule, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """The teacher backbone in lastvit's own checkpoint format (``lastvit.checkpoints.save_checkpoint``)."""
    from lastvit.checkpoints import save_checkpoint

    save_checkpoint(module.teacher_backbone, str(path), extra={"task": "dino", **(extra or {})})
    return Path(path)


# ----------------------------------------------------------------------------------------- eval
def evaluate_backbone(model: nn.Module, train_loader: Any, val_loader: Any, cfg: dict[str, Any] | None = None,
                      device: str | torch.device = "cpu") -> dict[str, float]:
    """kNN (weighted, DINO's k / T) and, if enabled, linear-probe top-1 (%) on frozen pooled tokens."""
    from lastvit.evaluate.probe import extract_features, knn_accuracy, linear_probe

    e = {**DEFAULTS["eval"], **((cfg or {}).get("eval") or {})}
    model = model.to(device)
    ftr, ytr = extract_features(model, train_loader, device=device)
    fva, yva = extract_features(model, val_loader, device=device)
    out = {"knn_top1": knn_accuracy(ftr, ytr, fva, yva, k=int(e["knn_k"]), T=float(e["knn_t"])),
           "knn_k": int(e["knn_k"]), "knn_t": float(e["knn_t"]), "n_train": int(ftr.shape[0]),
           "n_val": int(fva.shape[0])}
    if e["linear_probe"]:
        out["linear_top1"] = float(linear_probe(ftr, ytr, fva, yva, epochs=int(e["linear_epochs"]),
                                                wd=float(e["linear_wd"])))
    return out


# ----------------------------------------------------------------------------------------- entry points
def build(cfg: dict[str, Any]) -> tuple[DINOModule, DINODataModule]:
    """The LightningModule and the DataModule of a DINO recipe (see :data:`DEFAULTS` for the keys)."""
    cfg = resolve_config(cfg)
    return DINOModule(cfg), DINODataModule(cfg)


def export(module: DINOModule, out_dir: str | os.PathLike, extra: dict[str, Any]) -> dict[str, str]:
    """``model.pt`` (the teacher backbone, lastvit format) and ``dino_checkpoint.pth`` (official layout); rank 0."""
    out = Path(out_dir)
    epochs = int(module._trainer.current_epoch) if module._trainer is not None else None
    export_dino_checkpoint(module, out / "dino_checkpoint.pth", epoch=epochs)
    save_teacher(module, out / "model.pt", extra={**extra, "epochs": epochs})
    return {"model": "model.pt", "dino_checkpoint": "dino_checkpoint.pth", "lightning": "checkpoints/last.ckpt"}
