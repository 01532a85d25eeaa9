"""Self-supervised LaSt-ViT: DINO training (Caron et al., 2021) with any readout (LazyStrike, CLS, ...).

``build(cfg) -> (DINOModule, DINODataModule)`` and ``fit(cfg) -> {"model", "metrics", "out_dir"}``; the exported
model is the *teacher* backbone (a head-less :class:`~lastvit.models.LastViT`). See ``docs/dino.md``.

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
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lastvit.factory import create_model
from lastvit.io import atomic_save, atomic_write
from lastvit.models.dino import (
    DINOHead,
    DINOLoss,
    MultiCropWrapper,
    build_local_aggregator,
    clip_gradients,
    cosine_schedule,
    dino_state_dict,
    ema_update,
)
from lastvit.models.vit import LastViT
from lastvit.train.config import DEFAULTS as SHARED_DEFAULTS
from lastvit.train.config import per_device_batch

__all__ = [
    "DEFAULTS",
    "BatchMultiCrop",
    "MultiCropTransform",
    "DINOModule",
    "DINODataModule",
    "resolve_config",
    "build",
    "fit",
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
    },
    "optim": {
        "lr": 0.0005,  # at batch 256; scaled linearly with data.global_batch
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
    "trainer": {**copy.deepcopy(SHARED_DEFAULTS["trainer"]), "max_epochs": 10},
}


_LEAF_DICTS = ("aggregator_kwargs", "local_aggregator_kwargs", "synthetic", "arch")  # replaced whole, not merged


def _merge(base: dict[str, Any], over: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in base:
            known = ", ".join(sorted(base))
            raise ValueError(f"dino config: unknown key {path}{k!r} (known at this level: {known})")
        if isinstance(base[k], dict) and base[k] and isinstance(v, dict) and k not in _LEAF_DICTS:
            out[k] = _merge(base[k], v, f"{path}{k}.")
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The full DINO recipe: ``cfg`` deep-merged onto :data:`DEFAULTS`; unknown keys are an error."""
    cfg = dict(cfg or {})
    if cfg.get("task", "dino") != "dino":
        raise ValueError(f"dino config: task must be 'dino', got {cfg.get('task')!r}")
    out = _merge(DEFAULTS, cfg)
    cr, d = out["crops"], out["dino"]
    if cr["n_local"] < 0:
        raise ValueError(f"dino config: crops.n_local must be >= 0, got {cr['n_local']}")
    for key in ("global_scale", "local_scale"):
        lo, hi = cr[key]
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"dino config: crops.{key} must satisfy 0 < lo <= hi <= 1, got {cr[key]}")
    t = out["trainer"]
    if not t["max_epochs"] or int(t["max_epochs"]) < 1:
        raise ValueError(f"dino config: trainer.max_epochs must be >= 1, got {t['max_epochs']}")
    if int(t["accumulate"]) != 1:
        raise ValueError("dino config: trainer.accumulate must be 1 (DINO steps the teacher after every update)")
    per_device_batch(out, "dino config")
    if d["out_dim"] < 1:
        raise ValueError(f"dino config: dino.out_dim must be >= 1, got {d['out_dim']}")
    return out


# ----------------------------------------------------------------------------------------- augmentation
def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, (B, 1, H, W), as torchvision's rgb_to_grayscale."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _bern(n: int, p: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def _hue_rotate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma of RGB images by ``shift`` turns (YIQ rotation; a close, batched stand-in for HSV hue)."""
    rgb2yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq2rgb = torch.linalg.inv(rgb2yiq)
    y = torch.einsum("ij,bjhw->bihw", rgb2yiq, x)
    a = 2 * math.pi * shift.to(x)
    c, s = torch.cos(a)[:, None, None], torch.sin(a)[:, None, None]
    i, q = y[:, 1], y[:, 2]
    y = torch.stack([y[:, 0], c * i - s * q, s * i + c * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", yiq2rgb, y)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur (reflect padding), sigma in pixels, shape (B,)."""
    b, c, h, w = x.shape
    radius = int(min(math.ceil(3 * float(sigma.max())), (min(h, w) - 1) // 2))
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.to(x)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 2r+1)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    return y.reshape(b, c, h, w)


class BatchMultiCrop:
    """DINO's multi-crop augmentation on a batch of un-normalised images ``(B, 3, H, W)`` in [0, 1].

    Returns ``[global_1, global_2, local_1, ...]``, each ``(B, 3, size, size)`` normalised with ``mean``/``std``.
    Random-resized crops (area fraction ``scale``, aspect ratio in [3/4, 4/3], box clipped to the image) and flips
    are one bilinear ``grid_sample``; jitter, grayscale, blur and solarisation are per-sample tensor ops. Blur
    sigmas are DINO's (0.1 - 2.0 px at 224 px) scaled by ``size / 224``.
    """

    def __init__(
        self,
        global_size: int = 64,
        local_size: int = 32,
        n_local: int = 6,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.global_size, self.local_size, self.n_local = int(global_size), int(local_size), int(n_local)
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @property
    def ncrops(self) -> int:
        return 2 + self.n_local

    def resized_crop(
        self, x: torch.Tensor, size: int, scale: Sequence[float], g: torch.Generator | None = None
    ) -> torch.Tensor:
        """Random-resized crop + horizontal flip (p 0.5) of every image, output ``(B, 3, size, size)``."""
        b, _, h, w = x.shape
        area = _uniform(b, scale[0], scale[1], g)
        logr = _uniform(b, math.log(3 / 4), math.log(4 / 3), g)
        ratio = torch.exp(logr) * h / w  # aspect ratio in pixels -> in relative units
        cw = torch.sqrt(area * ratio).clamp(max=1.0)
        ch = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (1 - cw) * torch.rand(b, generator=g) + cw / 2
        cy = (1 - ch) * torch.rand(b, generator=g) + ch / 2
        flip = torch.where(_bern(b, 0.5, g), -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = cw * flip
        theta[:, 0, 2] = 2 * cx - 1
        theta[:, 1, 1] = ch
        theta[:, 1, 2] = 2 * cy - 1
        grid = F.affine_grid(theta.to(x), [b, 3, size, size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def photometric(
        self, x: torch.Tensor, blur_p: float, solarize_p: float, g: torch.Generator | None = None
    ) -> torch.Tensor:
        """Colour jitter (p 0.8), grayscale (p 0.2), blur (``blur_p``), solarise (``solarize_p``), normalise."""
        b = x.shape[0]
        jit = _bern(b, 0.8, g)[:, None, None, None]
        y = (x * _uniform(b, 0.6, 1.4, g)[:, None, None, None]).clamp(0, 1)  # brightness
        m = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
        y = ((y - m) * _uniform(b, 0.6, 1.4, g)[:, None, None, None] + m).clamp(0, 1)  # contrast
        gr = _gray(y)
        y = ((y - gr) * _uniform(b, 0.8, 1.2, g)[:, None, None, None] + gr).clamp(0, 1)  # saturation
        y = _hue_rotate(y, _uniform(b, -0.1, 0.1, g)).clamp(0, 1)  # hue
        x = torch.where(jit, y, x)
        x = torch.where(_bern(b, 0.2, g)[:, None, None, None], _gray(x).expand_as(x), x)
        sigma = _uniform(b, 0.1, 2.0, g) * x.shape[-1] / 224
        blurred = _gaussian_blur(x, sigma)
        x = torch.where(_bern(b, blur_p, g)[:, None, None, None], blurred, x)
        if solarize_p > 0:
            x = torch.where(_bern(b, solarize_p, g)[:, None, None, None], torch.where(x >= 0.5, 1 - x, x), x)
        return (x - self.mean.to(x)) / self.std.to(x)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"BatchMultiCrop expects images (B, 3, H, W), got {tuple(images.shape)}")
        x = images.float()
        g = generator
        crops = [
            self.photometric(self.resized_crop(x, self.global_size, self.global_scale, g), 1.0, 0.0, g),
            self.photometric(self.resized_crop(x, self.global_size, self.global_scale, g), 0.1, 0.2, g),
        ]
        for _ in range(self.n_local):
            crops.append(self.photometric(self.resized_crop(x, self.local_size, self.local_scale, g), 0.5, 0.0, g))
        return crops


class MultiCropTransform:
    """DINO's multi-crop as torchvision transforms on one PIL image (for image folders): a list of tensors."""

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_local: int = 10,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        from torchvision import transforms as T

        flip_jitter = T.Compose([
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ])
        norm = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
        bicubic = T.InterpolationMode.BICUBIC

        def blur(p: float) -> T.RandomApply:
            return T.RandomApply([T.GaussianBlur(kernel_size=23, sigma=(0.1, 2.0))], p=p)

        self.global1 = T.Compose([T.RandomResizedCrop(global_size, scale=tuple(global_scale),
                                                      interpolation=bicubic), flip_jitter, blur(1.0), norm])
        self.global2 = T.Compose([T.RandomResizedCrop(global_size, scale=tuple(global_scale),
                                                      interpolation=bicubic), flip_jitter, blur(0.1),
                                  T.RandomSolarize(128, p=0.2), norm])
        self.local = T.Compose([T.RandomResizedCrop(local_size, scale=tuple(local_scale), interpolation=bicubic),
                                flip_jitter, blur(0.5), norm])
        self.n_local = int(n_local)

    def __call__(self, image: Any) -> list[torch.Tensor]:
        image = image.convert("RGB")
        return [self.global1(image), self.global2(image)] + [self.local(image) for _ in range(self.n_local)]


def _collate_crops(samples: list[tuple[list[torch.Tensor], int]]) -> dict[str, Any]:
    n = len(samples[0][0])
    crops = [torch.stack([s[0][i] for s in samples]) for i in range(n)]
    return {"crops": crops, "label": torch.tensor([int(s[1]) for s in samples])}


# ----------------------------------------------------------------------------------------- data
def _render(dataset: Any, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a synthetic split rendered once (uint8, (N, 3, H, W)) with its labels."""
    images, labels = [], []
    for s in range(0, len(dataset), chunk):
        g = dataset.generate_batch(list(range(s, min(s + chunk, len(dataset)))))
        images.append((g["images"].clamp(0, 1) * 255).round().to(torch.uint8))
        labels.append(torch.as_tensor(g["labels"], dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


class _CachedCropBatches:
    """collate_fn: a list of indices -> a multi-crop batch of the cached (uint8) images."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, aug: BatchMultiCrop) -> None:
        self.images, self.labels, self.aug = images, labels, aug

    def __call__(self, indices: list[int]) -> dict[str, Any]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"crops": self.aug(self.images[idx].float() / 255.0), "label": self.labels[idx]}


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
            self._images, self._labels = _render(self._train)
            self.mean = tuple(getattr(self._train, "mean", IMAGENET_MEAN))
            self.std = tuple(getattr(self._train, "std", IMAGENET_STD))
        elif d["kind"] == "imagefolder":
            from torchvision.datasets import ImageFolder

            self._train = ImageFolder(str(self._root() / "train"), transform=MultiCropTransform(
                cr["global_size"], cr["local_size"], cr["n_local"], cr["global_scale"], cr["local_scale"]))
        else:
            raise ValueError(f"dino config: data.kind must be 'synthetic' or 'imagefolder', got {d['kind']!r}")

    def augment(self) -> BatchMultiCrop:
        cr = self.cfg["crops"]
        return BatchMultiCrop(cr["global_size"], cr["local_size"], cr["n_local"], cr["global_scale"],
                              cr["local_scale"], mean=self.mean, std=self.std)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        nw = int(self.cfg["data"]["num_workers"])
        if self.cfg["data"]["kind"] == "synthetic":
            n = len(self._train)
            if n < self.batch_size:
                raise ValueError(f"dino config: data.train_size ({n}) is smaller than the per-device batch "
                                 f"({self.batch_size})")
            return DataLoader(range(n), batch_size=self.batch_size, shuffle=True, drop_last=True,
                              num_workers=nw, collate_fn=_CachedCropBatches(self._images, self._labels,
                                                                            self.augment()))
        return DataLoader(self._train, batch_size=self.batch_size, shuffle=True, drop_last=True, num_workers=nw,
                          collate_fn=_collate_crops, pin_memory=torch.cuda.is_available())

    def eval_loaders(self) -> tuple[Any, Any]:
        """Un-augmented (train, val) batches ``(images, labels)`` for kNN / linear probing."""
        d, bs = self.cfg["data"], int(self.cfg["eval"]["batch_size"])
        nw = int(d["num_workers"])
        if d["kind"] == "synthetic":
            self.setup()
            vi, vl = _render(self._synthetic("val", int(d["val_size"])))
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
        """Per-iteration lr (peak ``optim.lr * data.global_batch / 256``), weight decay and teacher momentum
        over ``trainer.max_epochs`` epochs of ``iters_per_epoch`` iterations."""
        o, d = self.cfg["optim"], self.cfg["dino"]
        bs = int(self.cfg["data"]["global_batch"])
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
        it = epoch * self._iters_per_epoch + batch_idx
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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.epoch_losses = list(checkpoint.get("dino_epoch_losses", []))


# ----------------------------------------------------------------------------------------- files
def _atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_save(obj, path, torch.save)


def _atomic_json(obj: Any, path: Path) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


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


def fit(cfg: dict[str, Any], out_dir: str | os.PathLike | None = None, resume: str | None = None,
        evaluate: bool = True) -> dict[str, Any]:
    """Train DINO, export the teacher, probe it; ``{"model": teacher backbone, "metrics": {...}, "out_dir": Path}``.

    Writes into ``out_dir`` (default ``cfg["out_dir"]``): ``checkpoints/last.ckpt`` (Lightning, for ``resume``),
    ``teacher.pth`` (lastvit format), ``dino_checkpoint.pth`` (official DINO layout) and ``metrics.json``.
    """
    cfg = resolve_config(cfg)
    out = Path(out_dir or cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    t = cfg["trainer"]
    L.seed_everything(int(t["seed"]), workers=True, verbose=False)
    module, data = build(cfg)
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(out / "checkpoints"), save_last=True, save_top_k=0,
                                                  every_n_train_steps=int(t["ckpt_every"] or 0) or None)
    last = out / "checkpoints" / "last.ckpt"
    if resume is None:
        r = t["resume"]
        resume = (str(last) if last.exists() else None) if r in (True, "auto") else (r or None)
    if resume is not None and not Path(resume).is_file():
        raise FileNotFoundError(f"{resume}: no checkpoint to resume from")
    trainer = L.Trainer(
        max_epochs=int(t["max_epochs"]), max_steps=int(t["max_steps"] if t["max_steps"] is not None else -1),
        accelerator=t["accelerator"], devices=t["devices"], num_nodes=int(t["num_nodes"]), strategy=t["strategy"],
        precision=t["precision"], log_every_n_steps=int(t["log_every"]), enable_progress_bar=bool(t["progress_bar"]),
        enable_model_summary=bool(t["model_summary"]), deterministic=bool(t["deterministic"]),
        default_root_dir=str(out), callbacks=[ckpt_cb], logger=L.pytorch.loggers.CSVLogger(str(out), name="logs"),
    )
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    module = module.cpu()
    teacher = module.teacher_backbone.eval()
    epochs_done = int(trainer.current_epoch)
    metrics: dict[str, Any] = {
        "task": "dino",
        "config": cfg,
        "epochs": epochs_done,
        "iterations": int(trainer.global_step),
        "epoch_loss": list(module.epoch_losses),
    }
    metrics["final_loss"] = metrics["epoch_loss"][-1] if metrics["epoch_loss"] else None
    if not trainer.is_global_zero:
        return {"model": teacher, "metrics": metrics, "out_dir": out}
    export_dino_checkpoint(module, out / "dino_checkpoint.pth", epoch=epochs_done)
    metrics["files"] = {"dino_checkpoint": "dino_checkpoint.pth", "lightning": "checkpoints/last.ckpt"}
    try:
        save_teacher(module, out / "teacher.pth", extra={"epochs": epochs_done})
        metrics["files"]["teacher"] = "teacher.pth"
    except ImportError:
        metrics["notes"] = ["lastvit.checkpoints is not available: teacher.pth not written"]
    if evaluate and cfg["eval"]["enabled"]:
        data.setup()
        tr, va = data.eval_loaders()
        metrics["eval"] = evaluate_backbone(teacher, tr, va, cfg)
        metrics["knn_top1"] = metrics["eval"]["knn_top1"]
        if "linear_top1" in metrics["eval"]:
            metrics["linear_top1"] = metrics["eval"]["linear_top1"]
    _atomic_json(metrics, out / "metrics.json")
    return {"model": teacher, "metrics": metrics, "out_dir": out}
