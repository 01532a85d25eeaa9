"""Box-aware transforms on sample dicts.

A sample entering the pipeline holds ``image`` as a uint8 (3, H, W) tensor, ``boxes`` float32 (M, 4) xyxy in
pixel-edge coordinates (pixel i spans [i, i+1)), and optionally ``mask`` bool (H, W) and ``seg`` int64 (H, W)
(255 = ignore). Every geometric transform maps all of them consistently: the image bilinearly (antialiased),
``mask``/``seg`` with nearest neighbour, boxes exactly; boxes are clipped to the image and dropped when empty, the
number dropped is added to ``sample["boxes_dropped"]`` and per-box lists (``difficult``, ``box_labels``,
``truncated``) are filtered alongside. :class:`Normalize` turns the image into normalised float32, last.

Sizes and crop offsets follow torchvision: ``Resize(s)`` sets the short side to ``s`` and the long side to
``int(s * long / short)``; ``CenterCrop`` offsets are ``int(round((H - h) / 2))`` and pads with zeros (``seg``
with 255) when the image is smaller than the crop.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "PER_BOX_KEYS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CLIP_MEAN",
    "CLIP_STD",
    "Compose",
    "Resize",
    "CenterCrop",
    "RandomResizedCrop",
    "HorizontalFlip",
    "Normalize",
    "DEFAULT_CROP_PCT",
    "EvalSettings",
    "Normalisation",
    "clip_boxes",
    "default_normalisation",
    "eval_settings",
    "eval_transform",
    "synthetic_tree_stats",
]

PER_BOX_KEYS = ("difficult", "box_labels", "truncated")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Sample = dict[str, Any]


def _hw(sample: Sample) -> tuple[int, int]:
    return int(sample["image"].shape[-2]), int(sample["image"].shape[-1])


def clip_boxes(sample: Sample, h: int | None = None, w: int | None = None) -> Sample:
    """Clip ``boxes`` to the image and drop empty ones (counted in ``boxes_dropped``; per-box lists follow)."""
    if h is None or w is None:
        h, w = _hw(sample)
    boxes = sample.get("boxes")
    if boxes is None or len(boxes) == 0:
        return sample
    b = boxes.clone()
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    sample["boxes"] = b[keep]
    n_drop = int((~keep).sum())
    if n_drop:
        sample["boxes_dropped"] = sample.get("boxes_dropped", 0) + n_drop
        kl = keep.tolist()
        for k in PER_BOX_KEYS:
            if k in sample:
                sample[k] = [v for v, kk in zip(sample[k], kl) if kk]
    return sample


def _resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    dt = x.dtype
    y = F.interpolate(x[None, None].float(), size=size, mode="nearest-exact")[0, 0]
    return y.to(dt) if dt != torch.bool else y > 0.5


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class Resize:
    """Resize so the short side is ``size`` (int) or to exactly ``(h, w)`` (tuple); boxes scaled per axis."""

    def __init__(self, size: int | tuple[int, int], max_size: int | None = None) -> None:
        self.size = size
        self.max_size = max_size

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        if isinstance(self.size, (tuple, list)):
            return int(self.size[0]), int(self.size[1])
        short, long = (h, w) if h <= w else (w, h)
        new_short, new_long = int(self.size), int(self.size * long / short)
        if self.max_size is not None and new_long > self.max_size:
            new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        return (new_short, new_long) if h <= w else (new_long, new_short)

    def __call__(self, sample: Sample) -> Sample:
        h, w = _hw(sample)
        nh, nw = self.output_size(h, w)
        if (nh, nw) == (h, w):
            return sample
        sample["image"] = TF.resize(sample["image"], [nh, nw], antialias=True)
        for k in ("mask", "seg"):
            if sample.get(k) is not None:
                sample[k] = _resize_nearest(sample[k], (nh, nw))
        if sample.get("boxes") is not None and len(sample["boxes"]):
            scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32)
            sample["boxes"] = sample["boxes"] * scale
            clip_boxes(sample, nh, nw)
        return sample

    def __repr__(self) -> str:
        return f"Resize({self.size})"


def _crop(sample: Sample, top: int, left: int, h: int, w: int) -> Sample:
    """Crop (padding with 0 / seg 255 where the window leaves the image) and shift+clip the boxes."""
    H, W = _hw(sample)
    pad_t, pad_l = max(0, -top), max(0, -left)
    pad_b, pad_r = max(0, top + h - H), max(0, left + w - W)

    def cut(x: torch.Tensor, fill: int) -> torch.Tensor:
        if pad_t or pad_l or pad_b or pad_r:
            dt = x.dtype
            x = F.pad(x.to(torch.int64) if dt == torch.bool else x, (pad_l, pad_r, pad_t, pad_b), value=fill)
            x = x.to(dt)
        t, lft = top + pad_t, left + pad_l
        return x[..., t: t + h, lft: lft + w].contiguous()

    sample["image"] = cut(sample["image"], 0)
    if sample.get("mask") is not None:
        sample["mask"] = cut(sample["mask"], 0)
    if sample.get("seg") is not None:
        sample["seg"] = cut(sample["seg"], 255)
    if sample.get("boxes") is not None and len(sample["boxes"]):
        sample["boxes"] = sample["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
        clip_boxes(sample, h, w)
    return sample


class CenterCrop:
    """Central ``size`` crop (int or (h, w)), torchvision's offsets; pads when the image is smaller."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def __call__(self, sample: Sample) -> Sample:
        H, W = _hw(sample)
        h, w = self.size
        top = int(round((H - h) / 2.0))
        left = int(round((W - w) / 2.0))
        return _crop(sample, top, left, h, w)

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class RandomResizedCrop:
    """torchvision's RandomResizedCrop (area ``scale``, aspect ``ratio``; 10 tries then a central fallback crop),
    with boxes/mask/seg mapped. ``generator`` makes it reproducible."""

    def __init__(self, size: int | tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.scale, self.ratio, self.generator = scale, ratio, generator

    def get_params(self, H: int, W: int) -> tuple[int, int, int, int]:
        g = self.generator
        area = H * W
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=g))
            ar = math.exp(float(torch.empty(1).uniform_(log_r[0], log_r[1], generator=g)))
            w = int(round(math.sqrt(target * ar)))
            h = int(round(math.sqrt(target / ar)))
            if 0 < w <= W and 0 < h <= H:
                top = int(torch.randint(0, H - h + 1, (1,), generator=g))
                left = int(torch.randint(0, W - w + 1, (1,), generator=g))
                return top, left, h, w
        in_ratio = W / H
        if in_ratio < min(self.ratio):
            w, h = W, int(round(W / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = H, int(round(H * max(self.ratio)))
        else:
            w, h = W, H
        return (H - h) // 2, (W - w) // 2, h, w

    def __call__(self, sample: Sample) -> Sample:
        H, W = _hw(sample)
        top, left, h, w = self.get_params(H, W)
        sample = _crop(sample, top, left, h, w)
        return Resize(self.size)(sample)

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio})"


class HorizontalFlip:
    """Flip left-right with probability ``p`` (p=1: always); boxes x -> W - x."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.p, self.generator = p, generator

    def __call__(self, sample: Sample) -> Sample:
        if self.p < 1.0 and float(torch.rand(1, generator=self.generator)) >= self.p:
            return sample
        W = _hw(sample)[1]
        sample["image"] = sample["image"].flip(-1)
        for k in ("mask", "seg"):
            if sample.get(k) is not None:
                sample[k] = sample[k].flip(-1)
        b = sample.get("boxes")
        if b is not None and len(b):
            sample["boxes"] = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], 1)
        return sample

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


class Normalize:
    """uint8 (or [0, 1] float) image -> float32 ``(x / 255 - mean) / std``."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._m = torch.tensor(self.mean).view(3, 1, 1)
        self._s = torch.tensor(self.std).view(3, 1, 1)

    def __call__(self, sample: Sample) -> Sample:
        x = sample["image"]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        sample["image"] = (x - self._m) / self._s
        return sample

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def eval_transform(image_size: int | None = 224, resize: int | None = 256,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Compose:
    """The paper's evaluation pipeline Resize(resize) + CenterCrop(image_size) + Normalize. ``resize=None``
    resizes the short side to ``image_size``; ``image_size=None`` keeps the native size (Normalize only)."""
    ts: list[Callable[[Sample], Sample]] = []
    if image_size is not None:
        ts += [Resize(resize or image_size), CenterCrop(image_size)]
    ts.append(Normalize(mean, std))
    return Compose(ts)


# ---------------------------------------------------------------------------------------------- evaluation policy
#: crop ratio (CenterCrop size / Resize size) assumed when a checkpoint does not record one: 224 / 256, the
#: ImageNet evaluation of the LaSt-ViT release, DeiT and timm (``crop_pct=0.875``)
DEFAULT_CROP_PCT = 0.875


class Normalisation(NamedTuple):
    """``(mean, std, source)``: per-channel statistics and where they came from."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str


def _recorded_data(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The data settings a lastvit checkpoint's ``extra`` records (``extra["data"]`` or ``extra["eval"]``, either
    a dict with ``image_size`` / ``img_size``, ``crop_pct``, ``resize``, ``mean``, ``std``)."""
    if not isinstance(extra, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key in ("data", "eval"):
        d = extra.get(key)
        if isinstance(d, Mapping):
            out.update({k: v for k, v in d.items() if v is not None})
    if "img_size" in out and "image_size" not in out:
        out["image_size"] = out["img_size"]
    return out


def _is_synthetic_tree(root: str | os.PathLike | None) -> bool:
    return bool(root) and (os.path.isfile(os.path.join(root, "seg_classes.txt"))
                           or os.path.isdir(os.path.join(root, "Masks")))


def synthetic_tree_stats(root: str | os.PathLike | None) -> tuple[tuple, tuple] | None:
    """The normalisation a synthetic tree (``lastvit data synth``) was written for: its ``metrics.json`` config,
    else ``SyntheticConfig``'s defaults; None when ``root`` is not a synthetic tree."""
    if not _is_synthetic_tree(root):
        return None
    from lastvit.data.synthetic import SyntheticConfig

    cfg = SyntheticConfig()
    mean, std = cfg.mean, cfg.std
    meta = os.path.join(root, "metrics.json")
    if os.path.isfile(meta):
        try:
            with open(meta, encoding="utf-8") as f:
                c = json.load(f).get("config", {})
            mean, std = tuple(c.get("mean", mean)), tuple(c.get("std", std))
        except (OSError, ValueError, AttributeError):
            pass
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _is_clip_like(model: Any) -> bool:
    if model is None:
        return False
    if hasattr(model, "encode_text"):
        return True
    return getattr(model, "head_type", "") == "proj"


def default_normalisation(model: Any = None, root: str | os.PathLike | None = None, *,
                          extra: Mapping[str, Any] | None = None) -> Normalisation:
    """The normalisation to evaluate ``model`` on the dataset at ``root`` with, and why.

    In order: the mean/std the checkpoint records (``extra["data"]``, see :func:`eval_settings`); a synthetic
    tree's own statistics (models of the synthetic benchmark train with them, not ImageNet's); CLIP's statistics
    for a CLIP model or image tower (a ``"proj"`` head); ImageNet's otherwise.
    """
    rec = _recorded_data(extra if extra is not None else getattr(model, "checkpoint_extra", None))
    if "mean" in rec and "std" in rec:
        return Normalisation(tuple(float(m) for m in rec["mean"]), tuple(float(s) for s in rec["std"]),
                             "checkpoint")
    syn = synthetic_tree_stats(root)
    if syn is not None:
        return Normalisation(syn[0], syn[1], "synthetic tree")
    if _is_clip_like(model):
        return Normalisation(CLIP_MEAN, CLIP_STD, "CLIP (model has a CLIP projection head)")
    return Normalisation(IMAGENET_MEAN, IMAGENET_STD, "ImageNet (default)")


@dataclass(frozen=True)
class EvalSettings:
    """The evaluation transform Resize(``resize``) + CenterCrop(``image_size``) + Normalize(``mean``, ``std``) and
    where each value came from (``sources``: ``"user"``, ``"checkpoint"``, ``"model"`` (its ``img_size``),
    ``"crop_pct 0.875"``, ``"synthetic tree"`` ...)."""

    image_size: int | None
    resize: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sources: dict[str, str]

    def transform(self) -> Compose:
        return eval_transform(self.image_size, self.resize, self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "resize": self.resize, "mean": list(self.mean),
                "std": list(self.std), "sources": dict(self.sources)}


def eval_settings(model: Any = None, dataset: str | None = None, root: str | os.PathLike | None = None, *,
                  extra: Mapping[str, Any] | None = None, image_size: int | None = None, resize: int | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> EvalSettings:
    """The classification evaluation transform of ``model``: what the user gives, else what the checkpoint
    records, else derived from the model.

    * ``image_size``: the user's; else the checkpoint's ``extra["data"]["image_size"]``; else the model's
      training resolution ``model.arch["img_size"]`` (the size its position embedding was trained at).
    * ``resize`` (short side before the centre crop): the user's; else the checkpoint's ``resize``, or
      ``floor(image_size / crop_pct)`` with its ``crop_pct``; else for ``dataset == "synthetic"`` the image size
      itself (synthetic images are rendered at the training size and shown whole in training); else
      ``floor(image_size / 0.875)`` (224 -> 256, timm's rule with the ImageNet default crop ratio).
    * ``mean`` / ``std``: the user's, else :func:`default_normalisation`.
    """
    rec = _recorded_data(extra if extra is not None else getattr(model, "checkpoint_extra", None))
    src: dict[str, str] = {}
    if image_size is not None:
        size, src["image_size"] = int(image_size), "user"
    elif rec.get("image_size"):
        size, src["image_size"] = int(rec["image_size"]), "checkpoint"
    else:
        arch = getattr(model, "arch", None) or getattr(getattr(model, "visual", None), "arch", None) or {}
        img = arch.get("img_size") if isinstance(arch, Mapping) else None
        if isinstance(img, (list, tuple)):
            img = img[0]
        size, src["image_size"] = (int(img), "model img_size") if img else (224, "default 224")
    if resize is not None:
        rs, src["resize"] = int(resize), "user"
    elif rec.get("resize"):
        rs, src["resize"] = int(rec["resize"]), "checkpoint"
    elif rec.get("crop_pct"):
        pct = float(rec["crop_pct"])
        rs, src["resize"] = math.floor(size / pct + 1e-9), f"checkpoint crop_pct {pct:g}"
    elif dataset == "synthetic":
        rs, src["resize"] = size, "synthetic: whole image (crop_pct 1)"
    else:
        rs, src["resize"] = math.floor(size / DEFAULT_CROP_PCT + 1e-9), f"default crop_pct {DEFAULT_CROP_PCT:g}"
    norm = default_normalisation(model, root, extra=extra)
    if mean is not None:
        m, src["mean"] = tuple(float(v) for v in mean), "user"
    else:
        m, src["mean"] = norm.mean, norm.source
    if std is not None:
        s, src["std"] = tuple(float(v) for v in std), "user"
    else:
        s, src["std"] = norm.std, norm.source
    return EvalSettings(size, rs, m, s, src)
