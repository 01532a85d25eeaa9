"""COCO / LVIS JSON detection datasets (boxes, masks, crowd) and F-ViT's large-scale-jitter training transform.

``CocoDetection(ann_file, image_root, classes=...)[i]`` is ``(image (3, H, W) float in [0, 1], target)`` with
``target = {"boxes" (N, 4) xyxy, "labels" (N,) = vocabulary index + 1, "masks" (N, H, W) uint8 (with
masks=True), "image_id", "iscrowd"}``. The image path is ``image_root / file_name``, or for LVIS (no
``file_name``) the last two parts of ``coco_url`` (``val2017/000000397133.jpg``) under ``image_root``.
Crowd annotations, boxes thinner than 0.01 px and categories outside the vocabulary are left out of the targets and
counted in ``dataset.skipped``. A missing image is a one-line error naming the file and the annotation file.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lastvit.detection.splits import load_json

__all__ = ["CocoDetection", "LargeScaleJitter", "collate_detection", "image_path"]


def image_path(image: dict[str, Any], root: str | os.PathLike) -> Path:
    """``root / file_name`` or, for LVIS entries, ``root / <split>/<file>`` from ``coco_url``."""
    if image.get("file_name"):
        return Path(root) / image["file_name"]
    url = image.get("coco_url")
    if not url:
        raise ValueError(f"image {image.get('id')} has neither file_name nor coco_url")
    return Path(root).joinpath(*url.split("/")[-2:])


class CocoDetection(torch.utils.data.Dataset):
    """A COCO/LVIS-JSON detection dataset (see the module docstring). ``classes``: the vocabulary (category names
    in label order); default all categories of the file sorted by id. ``filter_empty`` drops images without any
    target annotation (training)."""

    def __init__(self, ann_file: str | os.PathLike, image_root: str | os.PathLike, *,
                 classes: Sequence[str] | None = None, masks: bool = False, transform: Any = None,
                 filter_empty: bool = False) -> None:
        self.ann_file = str(ann_file)
        self.root = Path(image_root)
        self.data = load_json(ann_file)
        cats = sorted(self.data["categories"], key=lambda c: c["id"])
        self.classes = list(classes) if classes is not None else [c["name"] for c in cats]
        by_name = {c["name"]: c["id"] for c in cats}
        missing = [n for n in self.classes if n not in by_name]
        if missing:
            raise ValueError(f"{self.ann_file}: vocabulary names {missing[:5]} are not categories of the file")
        self.cat_to_label = {by_name[n]: i + 1 for i, n in enumerate(self.classes)}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        self.masks, self.transform = bool(masks), transform
        per_image: dict[Any, list] = {im["id"]: [] for im in self.data["images"]}
        self.skipped = {"crowd": 0, "tiny_box": 0, "out_of_vocabulary": 0, "empty_images": 0}
        for a in self.data["annotations"]:
            if a.get("iscrowd", 0):
                self.skipped["crowd"] += 1
            elif a["bbox"][2] < 0.01 or a["bbox"][3] < 0.01:
                self.skipped["tiny_box"] += 1
            elif a["category_id"] not in self.cat_to_label:
                self.skipped["out_of_vocabulary"] += 1
            else:
                per_image[a["image_id"]].append(a)
        self.images = []
        for im in self.data["images"]:
            if filter_empty and not per_image[im["id"]]:
                self.skipped["empty_images"] += 1
                continue
            self.images.append(im)
        self.per_image = per_image

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, im: dict[str, Any]) -> torch.Tensor:
        from PIL import Image

        p = image_path(im, self.root)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: image {im['id']} of {self.ann_file} is missing")
        with Image.open(p) as f:
            arr = np.asarray(f.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0

    def _mask(self, a: dict[str, Any], h: int, w: int) -> np.ndarray:
        from pycocotools import mask as mask_utils

        seg = a.get("segmentation")
        if seg is None:
            raise ValueError(f"{self.ann_file}: annotation {a.get('id')} has no segmentation (masks=True)")
        if isinstance(seg, list):
            rles = mask_utils.frPyObjects(seg, h, w)
            rle = mask_utils.merge(rles)
        elif isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = seg
        return mask_utils.decode(rle)

    def target(self, index: int, h: int, w: int) -> dict[str, torch.Tensor]:
        im = self.images[index]
        anns = self.per_image[im["id"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        t = {"boxes": boxes, "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns],
                                                    dtype=torch.int64),
             "image_id": torch.tensor(im["id"])}
        if self.masks:
            t["masks"] = torch.from_numpy(np.stack([self._mask(a, h, w) for a in anns]) if anns
                                          else np.zeros((0, h, w), np.uint8))
        return t

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = self._load(self.images[index])
        t = self.target(index, img.shape[1], img.shape[2])
        if self.transform is not None:
            img, t = self.transform(img, t)
        return img, t


class LargeScaleJitter:
    """F-ViT's training augmentation: resize by ``r ~ U(min_scale, max_scale)`` times the scale that fits the image
    in ``size`` x ``size`` (aspect kept), random crop of at most ``size`` x ``size``, boxes clipped to the crop and
    boxes thinner than 0.01 px dropped, horizontal flip with probability ``flip``. Padding to the square happens in
    the detector's transform."""

    def __init__(self, size: int, min_scale: float = 0.1, max_scale: float = 2.0, flip: float = 0.5,
                 seed: int | None = None) -> None:
        self.size, self.min_scale, self.max_scale, self.flip = int(size), float(min_scale), float(max_scale), flip
        self.seed = seed
        self.rng = random.Random(seed)
        self._worker: tuple[int, int] | None = None

    def _reseed(self) -> None:
        """In a DataLoader worker, draw from the worker's own stream (copies of one generator would repeat)."""
        info = torch.utils.data.get_worker_info()
        wid = None if info is None else (info.id, info.seed)
        if wid is not None and wid != self._worker:
            self._worker = wid
            self.rng = random.Random(info.seed if self.seed is None else (int(self.seed) * 1_000_003 + info.seed))

    def __call__(self, img: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._reseed()
        h, w = img.shape[-2:]
        r = self.rng.uniform(self.min_scale, self.max_scale) * min(self.size / h, self.size / w)
        nh, nw = max(1, int(round(h * r))), max(1, int(round(w * r)))
        img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        sx, sy = nw / w, nh / h
        boxes = t["boxes"] * torch.tensor([sx, sy, sx, sy])
        masks = t.get("masks")
        if masks is not None and len(masks):
            masks = F.interpolate(masks[None].float(), size=(nh, nw), mode="nearest")[0].to(torch.uint8)
        elif masks is not None:
            masks = masks.new_zeros((0, nh, nw))
        ch, cw = min(nh, self.size), min(nw, self.size)
        y0, x0 = self.rng.randint(0, nh - ch), self.rng.randint(0, nw - cw)
        img = img[:, y0: y0 + ch, x0: x0 + cw]
        boxes = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, cw)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, ch)
        keep = ((boxes[:, 2] - boxes[:, 0]) > 0.01) & ((boxes[:, 3] - boxes[:, 1]) > 0.01)
        out = {**t, "boxes": boxes[keep], "labels": t["labels"][keep]}
        if masks is not None:
            out["masks"] = masks[:, y0: y0 + ch, x0: x0 + cw][keep]
        if self.rng.random() < self.flip:
            img = img.flip(-1)
            b = out["boxes"].clone()
            out["boxes"] = torch.stack([cw - b[:, 2], b[:, 1], cw - b[:, 0], b[:, 3]], 1)
            if masks is not None:
                out["masks"] = out["masks"].flip(-1)
        return img.contiguous(), out


def collate_detection(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    """Lists of images and targets (torchvision's detection convention)."""
    return [b[0] for b in batch], [b[1] for b in batch]
