"""Text-supervised LaSt-ViT: CLIP training / fine-tuning on Lightning with the gathered contrastive loss.

The task module of :func:`lastvit.train.fit`: :data:`DEFAULTS`, ``resolve_config``, ``build(cfg) -> (ClipModule,
ClipDataModule)`` and ``export`` (``model.pt``: the whole CLIP, :func:`lastvit.checkpoints.clip.save_clip`).
The model is :class:`lastvit.models.clip.CLIP`: random init from ``model.vision`` / ``model.text`` /
``model.embed_dim``, or a local whole-CLIP checkpoint (``model.checkpoint``: OpenAI, open_clip or
lastvit file) read through :func:`lastvit.create_model`. ``model.aggregator`` switches the image readout (LazyStrike
fine-tuning of a public CLIP is the first-class recipe); ``model.freeze_text`` freezes the text tower.

Recipe keys and defaults: :data:`DEFAULTS` (a tiny CPU CLIP on the synthetic captions). See ``docs/clip.md``.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lastvit.checkpoints.clip import save_clip
from lastvit.evaluate.zeroshot import load_templates, zero_shot_accuracy, zero_shot_classifier
from lastvit.models.clip import CLIP
from lastvit.models.clip_loss import clip_loss
from lastvit.train.config import TRAINER_DEFAULTS, ConfigError, deprecated, merge, per_device_batch
from lastvit.train.data import StepSampler, _ResumableLoader, cache_split

__all__ = ["DEFAULTS", "ClipModule", "ClipDataModule", "resolve_config", "build_model", "build", "export", "evaluate"]

# Every key a CLIP recipe may set, with its default: a tiny CLIP on the synthetic captions (CPU, ~1 min).
DEFAULTS: dict[str, Any] = {
    "task": "clip",
    "out_dir": "runs/clip",
    "model": {
        "checkpoint": None,  # local OpenAI / open_clip / lastvit CLIP file; None: random init from the keys below
        "vision": "vit_micro_patch8_64",  # preset / timm name or an arch dict (ignored with a checkpoint)
        "text": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
        "embed_dim": 64,
        "aggregator": "lazystrike",
        "aggregator_kwargs": {"k": 0.25},
        "quick_gelu": None,  # None: as the checkpoint implies (OpenAI: True), else False
        "arch_overrides": {},  # passed to create_model with a checkpoint (e.g. num_heads, text_heads)
        "freeze_text": False,
        "init_logit_scale": None,  # None: log(1/0.07) for random init, the checkpoint's value otherwise
    },
    "data": {
        "kind": "synthetic",  # synthetic | csv | tar
        "global_batch": 64,  # split over devices x nodes (optim.batch_size: the old spelling, still read)
        "synthetic": {},  # lastvit.data.SyntheticConfig keyword arguments
        "train_size": 2048,
        "val_size": 256,
        "data_seed": 0,
        "train_csv": None,  # csv: (image path, caption) files
        "val_csv": None,
        "train_shards": None,  # tar: folder / glob / list of *.tar with <key>.jpg + <key>.txt
        "val_shards": None,
        "img_size": 224,  # real images (synthetic images keep their size)
        "num_workers": 0,
    },
    "optim": {
        "lr": 5e-4,
        "weight_decay": 0.1,
        "betas": [0.9, 0.98],
        "eps": 1e-6,
        "warmup_steps": 20,
        "min_lr_factor": 0.0,
        "grad_clip": None,
        "local_loss": False,  # True: B x (W*B) logits per rank instead of (W*B)^2 (same gradients)
        "max_logit_scale": 100.0,  # logit_scale.exp() is clamped to this after every step, as CLIP does
    },
    "eval": {
        "enabled": True,
        "templates": ["a {}", "a small {}", "a medium {}", "a large {}"],  # "imagenet": the 80 CLIP prompts
        "classnames": None,  # csv/tar: class names for zero-shot eval on a labelled val set (else skipped)
    },
    "trainer": {**copy.deepcopy(TRAINER_DEFAULTS), "max_steps": 100},
}


def resolve_config(cfg: dict[str, Any] | None, src: str = "clip config") -> dict[str, Any]:
    """The full CLIP recipe: ``cfg`` deep-merged onto :data:`DEFAULTS`; unknown keys are a :class:`ConfigError`.
    ``optim.batch_size`` (the old spelling of the global batch) is read as ``data.global_batch``."""
    cfg = copy.deepcopy(dict(cfg or {}))
    if cfg.get("task", "clip") != "clip":
        raise ConfigError(f"{src}: task must be 'clip', got {cfg.get('task')!r}")
    deprecated(cfg, "optim.batch_size", "data.global_batch", src, int)
    seed = cfg.pop("seed", None)
    out = merge(DEFAULTS, cfg, "", src)
    if seed is not None:
        out["trainer"]["seed"] = seed
    d, trainer = out["data"], out["trainer"]
    if d["kind"] not in ("synthetic", "csv", "tar"):
        raise ConfigError(f"{src}: data.kind must be synthetic, csv or tar, got {d['kind']!r}")
    if d["kind"] == "csv" and not d["train_csv"]:
        raise ConfigError(f"{src}: data.kind=csv needs data.train_csv")
    if d["kind"] == "tar" and not d["train_shards"]:
        raise ConfigError(f"{src}: data.kind=tar needs data.train_shards")
    if int(d["global_batch"]) < 2:
        raise ConfigError(f"{src}: data.global_batch must be >= 2 (the contrastive loss needs negatives)")
    if not trainer.get("max_steps") or int(trainer["max_steps"]) <= 0:
        raise ConfigError(f"{src}: set trainer.max_steps (> 0)")
    per_device_batch(out, src)
    return out


def build_model(cfg: dict[str, Any]) -> CLIP:
    """The CLIP of a recipe: from ``model.checkpoint`` (any whole-CLIP format) or random init."""
    m = cfg["model"]
    if m["checkpoint"]:
        from lastvit.factory import create_model

        model = create_model(checkpoint=str(m["checkpoint"]), aggregator=m["aggregator"],
                             aggregator_kwargs=dict(m["aggregator_kwargs"] or {}), quick_gelu=m["quick_gelu"],
                             **dict(m["arch_overrides"] or {}))
        if not isinstance(model, CLIP):
            raise ValueError(f"{m['checkpoint']}: not a whole-CLIP checkpoint (no text tower); CLIP training "
                             "needs both towers")
    else:
        model = CLIP.from_config(vision=m["vision"], text=dict(m["text"]), embed_dim=int(m["embed_dim"]),
                                 aggregator=m["aggregator"], aggregator_kwargs=dict(m["aggregator_kwargs"] or {}),
                                 quick_gelu=bool(m["quick_gelu"]))
    if m["init_logit_scale"] is not None:
        with torch.no_grad():
            model.logit_scale.fill_(float(m["init_logit_scale"]))
    if m["freeze_text"]:
        model.lock_text_tower(True)
    return model


# ----------------------------------------------------------------------------------------------------- module
class ClipModule(L.LightningModule):
    """Trains a :class:`CLIP` with :func:`clip_loss` (features gathered across ranks), AdamW and a linear warm-up
    + cosine schedule per step; validation: contrastive loss and, when class names are known, zero-shot top-1."""

    def __init__(self, cfg: dict[str, Any], model: CLIP | None = None) -> None:
        super().__init__()
        self.cfg = resolve_config(cfg)
        self.model = model if model is not None else build_model(self.cfg)
        self.classnames: list[str] | None = None
        self._val: dict[str, list] = {}
        self.history: list[dict[str, float]] = []
        self.before: dict[str, Any] | None = None  # validation numbers of the untrained model

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is not None:
            dm.setup(stage)
            self.classnames = dm.classnames

    def on_train_start(self) -> None:
        """The untrained model's validation numbers, once (a resumed run has them from its checkpoint)."""
        if self.before is None:
            dm = self.trainer.datamodule
            self.before = evaluate(self.model, dm, self.cfg) if self.cfg["eval"]["enabled"] and \
                self.trainer.is_global_zero else {}
            self.model.train()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["clip_history"] = {"before": self.before, "losses": list(self.history)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        h = checkpoint.get("clip_history") or {}
        self.before, self.history = h.get("before"), list(h.get("losses", []))

    def summary(self) -> dict[str, Any]:
        """Final metrics: train loss at the start and the end, validation before/after, the temperature."""
        model = self.model
        dm = self.trainer.datamodule if self.trainer is not None else None
        after = evaluate(model, dm, self.cfg) if dm is not None and self.cfg["eval"]["enabled"] and \
            self.trainer.is_global_zero else {}
        losses = [h["loss"] for h in self.history]
        k = max(1, min(10, len(losses) // 5))
        return {
            "task": "clip",
            "steps": int(self.global_step),
            "train_loss_first": sum(losses[:k]) / k if losses else None,
            "train_loss_last": sum(losses[-k:]) / k if losses else None,
            "before": self.before or {},
            "after": after,
            "logit_scale": float(model.logit_scale.detach().exp()),
        }

    def forward(self, images: torch.Tensor, text: torch.Tensor):
        return self.model(images, text)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        img, txt, scale = self.model(batch["image"], batch["text"])
        return clip_loss(img, txt, scale, gather=True, local_loss=bool(self.cfg["optim"]["local_loss"]))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        b = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log("train/logit_scale", self.model.logit_scale.exp().detach(), batch_size=b)
        self.history.append({"step": int(self.global_step), "loss": float(loss.detach())})
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():  # CLIP clamps the temperature so that exp(logit_scale) <= 100
            self.model.logit_scale.clamp_(0, math.log(float(self.cfg["optim"]["max_logit_scale"])))

    def on_validation_epoch_start(self) -> None:
        self._val = {"loss": [], "n": [], "correct": []}
        self._classifier = None
        if self.classnames and self.cfg["eval"]["enabled"]:
            self._classifier = zero_shot_classifier(self.model, self.classnames, _templates(self.cfg))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        b = batch["image"].shape[0]
        if b >= 2:
            self._val["loss"].append(float(self.loss(batch)) * b)
            self._val["n"].append(b)
        if self._classifier is not None and torch.as_tensor(batch["label"]).min() >= 0:
            acc = zero_shot_accuracy(self.model, (batch["image"], batch["label"]), self._classifier, topk=(1,))
            self._val["correct"].append((acc["top1"] * b / 100.0, b))

    def on_validation_epoch_end(self) -> None:
        if self._val.get("n"):
            self.log("val/loss", sum(self._val["loss"]) / sum(self._val["n"]), sync_dist=True)
        if self._val.get("correct"):
            c = sum(x for x, _ in self._val["correct"])
            n = sum(y for _, y in self._val["correct"])
            self.log("val/zero_shot_top1", 100.0 * c / n, sync_dist=True)

    def configure_optimizers(self):
        from lastvit.train.optim import lr_factor, param_groups

        o = self.cfg["optim"]
        groups = param_groups(self.model, float(o["weight_decay"]))
        for g in groups:  # the temperature never decays (it is 0-d, so param_groups already puts it there)
            g["params"] = [p for p in g["params"] if p.requires_grad]
        opt = torch.optim.AdamW(groups, lr=float(o["lr"]), betas=tuple(float(b) for b in o["betas"]),
                                eps=float(o["eps"]))
        total = max(int(self.cfg["trainer"]["max_steps"]), 1)  # one warm-up unit per task: CLIP counts steps
        warm = min(int(o["warmup_steps"]), total - 1) / total
        mf = float(o["min_lr_factor"])
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, total, warmup_frac=warm, warmup_factor=0.01, min_factor=mf))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _templates(cfg: dict[str, Any]) -> list[str]:
    t = cfg["eval"]["templates"]
    return load_templates("imagenet") if t == "imagenet" else list(t)


# ----------------------------------------------------------------------------------------------------- data
class _Pairs(Dataset):
    """(image, token ids, label) triples over a :func:`~lastvit.train.data.cache_split` (tokenized once)."""

    def __init__(self, images: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, captions: list[str]) -> None:
        self.images, self.text, self.labels, self.captions = images, text, labels, captions

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "text": self.text[i], "label": self.labels[i]}


class ClipDataModule(L.LightningDataModule):
    """Image-text batches ``{"image": (B,3,H,W), "text": (B, context_length), "label": (B,), ...}``.

    ``data.kind``: ``synthetic`` (:class:`lastvit.data.SyntheticDataset` with its captions; zero-shot eval over the
    shape names), ``csv`` (:class:`lastvit.data.text.ImageTextCSV`) or ``tar`` (:class:`ImageTextTar`). The batch
    size per device is ``data.global_batch / (devices x nodes)`` (:func:`lastvit.train.per_device_batch`); the
    train loader is a :class:`lastvit.train.data.StepSampler` (seeded, rank-aware, resumable mid-epoch).
    """

    def __init__(self, cfg: dict[str, Any], tokenizer: Any) -> None:
        super().__init__()
        self.cfg = resolve_config(cfg)
        self.tokenizer = tokenizer
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.classnames: list[str] | None = None

    def _per_device(self) -> int:
        return per_device_batch(self.cfg, "clip config")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        d = self.cfg["data"]
        if d["kind"] == "synthetic":
            from lastvit.data import SyntheticConfig, SyntheticDataset

            scfg = SyntheticConfig(**d["synthetic"])
            sets = []
            for split, size in (("train", d["train_size"]), ("val", d["val_size"])):
                c = cache_split(SyntheticDataset(scfg, split=split, size=int(size), seed=int(d["data_seed"])))
                sets.append(_Pairs(c["image"], self.tokenizer(c["caption"]), c["label"], c["caption"]))
            self.train_set, self.val_set = sets
            self.classnames = list(scfg.classes)
            return
        from lastvit.data.text import ImageTextCSV, ImageTextTar, clip_transform

        size = int(d["img_size"])
        if d["kind"] == "csv":
            self.train_set = ImageTextCSV(d["train_csv"], transform=clip_transform(size, train=True))
            self.val_set = ImageTextCSV(d["val_csv"], transform=clip_transform(size)) if d["val_csv"] else None
        else:
            self.train_set = ImageTextTar(d["train_shards"], transform=clip_transform(size, train=True))
            self.val_set = ImageTextTar(d["val_shards"], transform=clip_transform(size)) if d["val_shards"] else None
        self.classnames = self.cfg["eval"]["classnames"]

    def _collate(self):
        if self.cfg["data"]["kind"] == "synthetic":
            return None
        from lastvit.data.text import TokenizingCollate

        return TokenizingCollate(self.tokenizer)

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        t = self.trainer
        rank, world = (t.global_rank, t.world_size) if t is not None else (0, 1)
        sampler = StepSampler(len(ds), self._per_device(), train=train, rank=rank, world=world,
                              seed=int(self.cfg["trainer"]["seed"]))
        if train and t is not None:
            loop = t.fit_loop.epoch_loop
            sampler.progress_fn = lambda: loop.batch_progress.current.processed
        nw = int(self.cfg["data"]["num_workers"])
        return _ResumableLoader(ds, batch_sampler=sampler, num_workers=nw, collate_fn=self.collate(),
                                step_sampler=sampler, persistent_workers=nw > 0 and train)

    def collate(self) -> Any:
        """``None`` (default collation) for the tokenized synthetic pairs, else a tokenizing collate."""
        if self.cfg["data"]["kind"] == "synthetic":
            return None
        from lastvit.data.text import TokenizingCollate

        return TokenizingCollate(self.tokenizer)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self.val_set is None or not self.cfg["eval"]["enabled"]:
            return []
        return self._loader(self.val_set, train=False)


# ----------------------------------------------------------------------------------------------------- entry points
def build(cfg: dict[str, Any]) -> tuple[ClipModule, ClipDataModule]:
    """The LightningModule and DataModule of a CLIP recipe (see :data:`DEFAULTS`)."""
    cfg = resolve_config(cfg)
    module = ClipModule(cfg)
    data = ClipDataModule(cfg, module.model.tokenizer)
    return module, data


@torch.no_grad()
def evaluate(model: CLIP, data: ClipDataModule, cfg: dict[str, Any]) -> dict[str, Any]:
    """Validation contrastive loss (single process, batches of ``data.global_batch``) and zero-shot top-1/top-5."""
    model.eval()
    data.setup()
    dev = next(model.parameters()).device
    out: dict[str, Any] = {}
    if data.val_set is None:
        return out
    loader = DataLoader(data.val_set, batch_size=int(cfg["data"]["global_batch"]), collate_fn=data.collate())
    tot, n = 0.0, 0
    batches = list(loader)
    for b in batches:
        if b["image"].shape[0] >= 2:
            img, txt, s = model(b["image"].to(dev), b["text"].to(dev))
            tot += float(clip_loss(img, txt, s, gather=False)) * b["image"].shape[0]
            n += b["image"].shape[0]
    if n:
        out["val_loss"] = tot / n
    if data.classnames and cfg["eval"]["enabled"]:
        clf = zero_shot_classifier(model, data.classnames, _templates(cfg))
        labelled = [(b["image"], b["label"]) for b in batches if torch.as_tensor(b["label"]).min() >= 0]
        if labelled:
            out["zero_shot"] = zero_shot_accuracy(model, labelled, clf, topk=(1, 5))
            out["chance_top1"] = 100.0 / len(data.classnames)
    return out


def export(module: ClipModule, out_dir: str | os.PathLike, extra: dict[str, Any]) -> dict[str, str]:
    """``model.pt``: the whole CLIP (both towers, tokenizer settings) in lastvit's CLIP format (rank 0 only)."""
    save_clip(module.model, Path(out_dir) / "model.pt", extra=extra)
    return {"model": "model.pt", "lightning": "checkpoints/last.ckpt"}
