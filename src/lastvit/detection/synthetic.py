"""The synthetic open-vocabulary detection set of the CPU miniature, written as COCO JSON (with LVIS fields) + PNGs.

Images come from :func:`lastvit.data.synthetic.generate_batch` (1-3 disjoint shape objects per image with
``multi_object=2``); every object has its exact instance mask. The class split is ``base`` / ``novel`` (shape
names). ``train.json`` lists every category but keeps only base annotations and the images with >= 1 base object
(the OV-COCO rule; novel objects stay in the pixels, unlabelled). ``test.json`` keeps all objects; its categories
carry ``frequency`` ``"f"`` (base) / ``"r"`` (novel) and its images ``neg_category_ids`` = every category absent
from the image and ``not_exhaustive_category_ids = []`` (every object is annotated), so the LVIS federated metric
gives the novel mask AP as ``APr``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lastvit.data.synthetic import SHAPES, SyntheticConfig, generate_batch
from lastvit.io import atomic_write

__all__ = ["write_ovdet_synthetic"]


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_ovdet_synthetic(out: str | os.PathLike, cfg: SyntheticConfig, base: Sequence[str], novel: Sequence[str],
                          n_train: int, n_test: int, batch: int = 256) -> dict[str, Any]:
    """Write ``out/{train,test}/*.png`` and ``out/{train,test}.json``; returns counts (and the paths)."""
    from pycocotools import mask as mask_utils

    out = Path(out)
    names = list(cfg.classes)
    bad = [n for n in list(base) + list(novel) if n not in names]
    if bad or set(base) & set(novel):
        raise ValueError(f"base/novel must be disjoint shape names of the config ({names}), got {list(base)} / "
                         f"{list(novel)}")
    cats = [{"id": i + 1, "name": n, "frequency": "r" if n in novel else "f"} for i, n in enumerate(names)
            if n in base or n in novel]
    cat_of = {SHAPES.index(c["name"]): c["id"] for c in cats}
    base_ids = {c["id"] for c in cats if c["name"] in base}
    counts: dict[str, Any] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, anns = [], []
        dropped_images = dropped_anns = 0
        for s in range(0, n, batch):
            g = generate_batch(cfg, range(s, min(n, s + batch)), split)
            imgs = (g["images"].permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
            for j, idx in enumerate(g["indices"]):
                objs = []
                for lab, box, m in zip(g["all_labels"][j].tolist(), g["all_boxes"][j].tolist(), g["all_masks"][j]):
                    if lab not in cat_of:
                        continue
                    cid = cat_of[lab]
                    if split == "train" and cid not in base_ids:
                        dropped_anns += 1
                        continue
                    rle = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode()
                    objs.append({"category_id": cid, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                 "area": float(m.sum()), "iscrowd": 0, "segmentation": rle})
                if split == "train" and not objs:
                    dropped_images += 1
                    continue
                iid = idx + 1
                fname = f"{split}/{idx:06d}.png"
                present = {o["category_id"] for o in objs}
                images.append({"id": iid, "file_name": fname, "height": cfg.image_size, "width": cfg.image_size,
                               "neg_category_ids": sorted({c["id"] for c in cats} - present),
                               "not_exhaustive_category_ids": []})
                for o in objs:
                    anns.append({"id": len(anns) + 1, "image_id": iid, **o})
                atomic_write(out / fname, _png(imgs[j]))
        atomic_write(out / f"{split}.json", json.dumps({"images": images, "annotations": anns, "categories": cats}))
        counts[split] = {"images": len(images), "annotations": len(anns), "images_dropped": dropped_images,
                         "novel_annotations_dropped": dropped_anns}
    counts["categories"] = cats
    return counts
