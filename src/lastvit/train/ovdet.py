"""Open-vocabulary detection (F-ViT on a frozen CLIP): the ``task: ovdet`` module of :func:`lastvit.train.fit`.

Supplies :data:`DEFAULTS`, :func:`resolve_config`, :func:`build` ``-> (OVDetModule, OVDetDataModule)`` and
:func:`export`. Only the detector's trainable parts (pyramid, FPN, RPN, RoI heads, temperature) are in the optimiser;
the CLIP tower is frozen and its weights are NOT stored in checkpoints: ``last.ckpt`` and ``model.pt`` hold the
trainable parts plus the CLIP file's path and sha256 (checked when loading).

Optimiser (CLIPSelf's F-ViT configs): AdamW, ``lr = optim.lr * global_batch / optim.lr_batch`` (1e-4 per 64
images), betas (0.9, 0.999), weight decay 0.1, gradient clipping 1.0, linear warm-up over 250 steps from 0.001x,
then x ``gamma`` at each epoch of ``optim.milestones`` (OV-COCO: none; OV-LVIS: 32 and 44 of 48). The vocabulary
is the training file's categories (sorted by id); the novel classes are those without a training annotation
(F-ViT's class weight 0: the 17 OV-COCO novel names, LVIS's rare categories), unless ``data.novel`` names them.
Validation (per epoch) gives OV-COCO box AP50 novel/base/all, or LVIS federated mask (and box) AP/APr/APc/APf.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from lastvit.detection.data import CocoDetection, LargeScaleJitter, collate_detection
from lastvit.detection.evaluate import detections_to_coco
from lastvit.detection.model import DETECTOR_DEFAULTS, FViTDetector, build_fvit
from lastvit.io import atomic_write
from lastvit.train.config import TRAINER_DEFAULTS, ConfigError, merge, per_device_batch

__all__ = ["DEFAULTS", "OVDetModule", "OVDetDataModule", "resolve_config", "build", "export", "load_detector",
           "file_sha256", "load_frozen_clip", "lr_lambda"]

DEFAULTS: dict[str, Any] = {
    "task": "ovdet",
    "out_dir": "runs/ovdet",
    "model": {
        "clip": None,  # a whole-CLIP file (lastvit, OpenAI, open_clip): the frozen backbone
        "aggregator": None,  # None: the file's readout
        "aggregator_kwargs": None,
        "detector": {},  # lastvit.detection.DETECTOR_DEFAULTS overrides
        "templates": "clipself",  # clipself | imagenet | a template file | a list
        "text_cache": None,  # folder for cached text embeddings (None: <out_dir>/text_cache)
    },
    "data": {
        "kind": "coco",  # coco (box AP50 novel/base/all) | lvis (federated mask AP)
        "train_ann": None,
        "val_ann": None,
        "train_images": None,
        "val_images": None,
        "novel": None,  # None: the vocabulary's categories without a training annotation
        "image_size": 640,
        "lsj": [0.1, 2.0],
        "flip": 0.5,
        "global_batch": 64,
        "val_batch": 8,
        "val_limit": None,  # evaluate on the first N val images only
        "num_workers": 2,
    },
    "optim": {"lr": 1.0e-4, "lr_batch": 64, "weight_decay": 0.1, "betas": [0.9, 0.999], "grad_clip": 1.0,
              "warmup_steps": 250, "warmup_factor": 0.001, "milestones": [], "gamma": 0.1},
    "trainer": dict(TRAINER_DEFAULTS),
}


def resolve_config(raw: dict[str, Any], src: str = "ovdet config") -> dict[str, Any]:
    """``raw`` merged onto :data:`DEFAULTS` and checked."""
    raw = copy.deepcopy(dict(raw or {}))
    if raw.get("task", "ovdet") != "ovdet":
        raise ConfigError(f"{src}: task must be 'ovdet', got {raw.get('task')!r}")
    det = dict((raw.get("model") or {}).get("detector") or {})
    unknown = set(det) - set(DETECTOR_DEFAULTS)
    if unknown:
        raise ConfigError(f"{src}: unknown model.detector keys {sorted(unknown)}; known: {sorted(DETECTOR_DEFAULTS)}")
    base = copy.deepcopy(DEFAULTS)
    base["model"]["detector"] = {}
    cfg = merge(base, {k: v for k, v in raw.items()}, "", src) if raw else base
    cfg["model"]["detector"] = det
    if not cfg["model"]["clip"]:
        raise ConfigError(f"{src}: set model.clip (the frozen CLIP checkpoint)")
    d = cfg["data"]
    if d["kind"] not in ("coco", "lvis"):
        raise ConfigError(f"{src}: data.kind must be 'coco' or 'lvis', got {d['kind']!r}")
    for k in ("train_ann", "val_ann", "train_images", "val_images"):
        if not d[k]:
            raise ConfigError(f"{src}: set data.{k}")
    t = cfg["trainer"]
    if (t["max_steps"] is None or t["max_steps"] < 0) and not t["max_epochs"]:
        raise ConfigError(f"{src}: set trainer.max_steps or trainer.max_epochs")
    per_device_batch(cfg, src)
    return cfg


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_frozen_clip(path: str | os.PathLike, aggregator: str | None = None,
                     aggregator_kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """A whole CLIP (both towers) from a local file, in eval mode."""
    from lastvit.factory import create_model
    from lastvit.models.clip import CLIP

    kw: dict[str, Any] = {}
    if aggregator:
        kw["aggregator"] = aggregator
    if aggregator_kwargs is not None:
        kw["aggregator_kwargs"] = dict(aggregator_kwargs)
    model = create_model(checkpoint=str(path), **kw)
    if not isinstance(model, CLIP):
        raise ValueError(f"{path}: not a whole-CLIP checkpoint (the detector needs the text tower for its classes)")
    return model.eval()


def lr_lambda(step: int, warmup_steps: int, warmup_factor: float, milestones_steps: list[int],
              gamma: float) -> float:
    """mmdet's linear warm-up (``factor + (1 - factor) * step / warmup``) times the step decay."""
    w = 1.0
    if warmup_steps > 0 and step < warmup_steps:
        w = warmup_factor + (1.0 - warmup_factor) * step / warmup_steps
    return w * gamma ** sum(step >= m for m in milestones_steps)


def _vocabulary(train: CocoDetection, novel: list[str] | None) -> tuple[list[str], list[bool]]:
    names = train.classes
    if novel is None:
        seen = {a["category_id"] for a in train.data["annotations"]}
        by_name = {c["name"]: c["id"] for c in train.data["categories"]}
        flags = [by_name[n] not in seen for n in names]
    else:
        unknown = set(novel) - set(names)
        if unknown:
            raise ConfigError(f"data.novel names {sorted(unknown)[:5]} are not categories of {train.ann_file}")
        flags = [n in set(novel) for n in names]
    return names, flags


class OVDetDataModule(L.LightningDataModule):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        d = cfg["data"]
        self.cfg = cfg
        masks = bool(cfg["model"]["detector"].get("masks", False))
        lo, hi = d["lsj"]
        seed = int(cfg["trainer"].get("seed", 0))
        self.train_set = CocoDetection(d["train_ann"], d["train_images"], masks=masks, filter_empty=True,
                                       transform=LargeScaleJitter(int(d["image_size"]), lo, hi, d["flip"], seed))
        self.val_set = CocoDetection(d["val_ann"], d["val_images"], classes=self.train_set.classes, masks=False)
        if d["val_limit"]:
            self.val_set.images = self.val_set.images[: int(d["val_limit"])]
        self.batch = per_device_batch(cfg)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(int(self.cfg["trainer"].get("seed", 0)))
        nw = int(self.cfg["data"]["num_workers"])
        return DataLoader(self.train_set, batch_size=self.batch, shuffle=True, generator=g, drop_last=True,
                          collate_fn=collate_detection, num_workers=nw, persistent_workers=nw > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=int(self.cfg["data"]["val_batch"]), shuffle=False,
                          collate_fn=collate_detection, num_workers=int(self.cfg["data"]["num_workers"]))


class OVDetModule(L.LightningModule):
    """Trains the detector's trainable parts; validation computes the OV metrics of ``data.kind``."""

    def __init__(self, cfg: dict[str, Any], model: FViTDetector, clip_path: str, clip_sha256: str,
                 label_to_cat: dict[int, int], val_gt: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.cfg, self.model = cfg, model
        self.clip_path, self.clip_sha256 = clip_path, clip_sha256
        self.label_to_cat = dict(label_to_cat)
        self.val_gt = val_gt
        self.strict_loading = False  # checkpoints leave the frozen CLIP out
        self.val_metrics: dict[str, Any] = {}
        self.val_step = -1
        self.history: list[float] = []
        self._dets: list[dict[str, Any]] = []

    def training_step(self, batch: tuple[list, list], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        self.history.append(float(loss.detach()))
        for k, v in losses.items():
            self.log(f"train/{k}", v.detach(), on_step=True, batch_size=len(images))
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=len(images))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._dets = []

    def validation_step(self, batch: tuple[list, list], batch_idx: int) -> None:
        images, targets = batch
        dets = self.model(images)
        masks = bool(self.model.config.get("masks"))
        for d, t in zip(dets, targets):
            self._dets += detections_to_coco(d, int(t["image_id"]), self.label_to_cat, masks=masks)

    def on_validation_epoch_end(self) -> None:
        if self.val_gt is None:
            return
        from lastvit.detection.metrics import lvis_ap, ov_coco_ap50

        keep = self._val_ids()
        gt = {**self.val_gt, "images": [im for im in self.val_gt["images"] if im["id"] in keep],
              "annotations": [a for a in self.val_gt["annotations"] if a["image_id"] in keep]}
        novel = [self.label_to_cat[i + 1] for i, f in enumerate(self.model.roi_heads.novel.tolist()) if f]
        base = [self.label_to_cat[i + 1] for i, f in enumerate(self.model.roi_heads.novel.tolist()) if not f]
        if self.cfg["data"]["kind"] == "coco":
            r = ov_coco_ap50(gt, self._dets, novel, base)
            m = {"val/novel_ap50": r["novel_ap50"], "val/base_ap50": r["base_ap50"], "val/all_ap50": r["all_ap50"]}
        else:
            iou = "segm" if self.model.config.get("masks") else "bbox"
            r = lvis_ap(gt, self._dets, iou_type=iou)
            m = {f"val/{iou}_{k}": r[k] for k in ("AP", "APr", "APc", "APf")}
        self.val_metrics = m
        self.val_step = int(self.global_step)
        for k, v in m.items():
            self.log(k, float(v), sync_dist=False)

    def _val_ids(self) -> set:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is None:
            return {im["id"] for im in self.val_gt["images"]}
        return {im["id"] for im in dm.val_set.images}

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg["optim"]
        params = [p for _, p in self.model.trainable_named_parameters()]
        lr = float(o["lr"]) * int(self.cfg["data"]["global_batch"]) / int(o["lr_batch"])
        opt = torch.optim.AdamW(params, lr=lr, betas=tuple(o["betas"]), weight_decay=float(o["weight_decay"]))
        ms: list[int] = []
        if o["milestones"]:
            epochs = self.cfg["trainer"].get("max_epochs")
            total = int(self.trainer.estimated_stepping_batches) if self.trainer is not None else 1
            per_epoch = max(1, total // int(epochs)) if epochs else total
            ms = [int(e) * per_epoch for e in o["milestones"]]
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_lambda(s, int(o["warmup_steps"]), float(o["warmup_factor"]), ms, float(o["gamma"])))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint["state_dict"]
        for k in [k for k in sd if k.startswith("model.backbone.vit.")]:
            del sd[k]
        checkpoint["frozen_clip"] = {"path": self.clip_path, "sha256": self.clip_sha256}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        fc = checkpoint.get("frozen_clip") or {}
        if fc.get("sha256") and fc["sha256"] != self.clip_sha256:
            raise ValueError(f"checkpoint was trained on the frozen CLIP {fc.get('path')} (sha256 "
                             f"{fc['sha256'][:12]}...), this run uses {self.clip_path} ({self.clip_sha256[:12]}...)")

    def summary(self) -> dict[str, Any]:
        k = max(1, min(10, len(self.history) // 5))
        return {"task": "ovdet", **self.val_metrics,
                "train_loss_first": sum(self.history[:k]) / k if self.history else None,
                "train_loss_last": sum(self.history[-k:]) / k if self.history else None}


def build(cfg: dict[str, Any]) -> tuple[OVDetModule, OVDetDataModule]:
    """The ``task: ovdet`` entry point from a resolved recipe."""
    from lastvit.detection.text import class_text_embeddings

    m, d = cfg["model"], cfg["data"]
    dm = OVDetDataModule(cfg)
    names, novel = _vocabulary(dm.train_set, d["novel"])
    clip = load_frozen_clip(m["clip"], m["aggregator"], m["aggregator_kwargs"])
    cache = m["text_cache"] or os.path.join(cfg["out_dir"], "text_cache")
    text = class_text_embeddings(clip, names, m["templates"], cache_dir=cache)
    det_cfg = {**dict(m["detector"]), "image_size": int(d["image_size"])}
    model = build_fvit(clip, text, names, novel, det_cfg)
    module = OVDetModule(cfg, model, str(m["clip"]), file_sha256(m["clip"]), dm.train_set.label_to_cat,
                         dm.val_set.data)
    return module, dm


def export(module: OVDetModule, out_dir: str | os.PathLike, extra: dict[str, Any]) -> dict[str, str]:
    """``model.pt``: the trainable parts, the detector config, vocabulary, text embeddings and the CLIP's path +
    sha256 (rebuild with :func:`load_detector`)."""
    model = module.model
    obj = {"format": "lastvit-ovdet", "version": 1, "detector_config": model.config,
           "class_names": model.class_names, "novel": model.roi_heads.novel.tolist(),
           "label_to_cat": module.label_to_cat, "text_embeddings": model.roi_heads.text.cpu(),
           "clip": {"path": module.clip_path, "sha256": module.clip_sha256,
                    "aggregator": module.cfg["model"]["aggregator"],
                    "aggregator_kwargs": module.cfg["model"]["aggregator_kwargs"]},
           "state_dict": {k: v.cpu() for k, v in model.trainable_state_dict().items()}, "extra": extra}
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(Path(out_dir) / "model.pt", buf.getvalue())
    return {"model": "model.pt", "lightning": "checkpoints/last.ckpt"}


def load_detector(path: str | os.PathLike, clip_path: str | os.PathLike | None = None) -> tuple[FViTDetector, dict]:
    """Rebuild a detector written by :func:`export` (its CLIP from the recorded path, or ``clip_path``; the sha256
    must match). Returns the model in eval mode and the file's metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such detector checkpoint")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != "lastvit-ovdet":
        raise ValueError(f"{path}: not a lastvit OV-detection checkpoint (format 'lastvit-ovdet')")
    info = obj["clip"]
    cp = Path(clip_path or info["path"])
    if not cp.is_file():
        raise FileNotFoundError(f"{path}: its frozen CLIP {cp} is missing (pass the CLIP file explicitly)")
    sha = file_sha256(cp)
    if sha != info["sha256"]:
        raise ValueError(f"{path}: the CLIP {cp} has sha256 {sha[:12]}..., the detector was trained on "
                         f"{info['sha256'][:12]}...")
    clip = load_frozen_clip(cp, info.get("aggregator"), info.get("aggregator_kwargs"))
    model = build_fvit(clip, obj["text_embeddings"], obj["class_names"], obj["novel"], obj["detector_config"])
    missing, unexpected = model.load_state_dict(obj["state_dict"], strict=False)
    bad = [k for k in missing if not k.startswith("backbone.vit.")] + list(unexpected)
    if bad:
        raise ValueError(f"{path}: state does not fit the detector (e.g. {bad[:3]})")
    return model.eval(), obj
