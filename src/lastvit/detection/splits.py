"""Open-vocabulary splits of COCO and LVIS made locally (no files from a cloud drive).

* :func:`make_ov_coco_split` -- the OVR-CNN rule (Zareian et al.; the files CLIPSelf trains on): 48 base / 17 novel
  names (``resources/ovdet/coco_{base,novel}.txt``). Train: the 65 categories are listed, only base annotations
  are kept, and only images with >= 1 base annotation. Val: annotations of the 65 categories, images with >= 1.
  Written as ``instances_train2017_seen_2_65_cat.json`` and ``instances_val2017_all_2.json``.
* :func:`make_ov_lvis_split` -- LVIS v1 train with every annotation of a rare (``frequency == "r"``) category
  removed and all 1203 categories kept (``lvis_v1_train_seen_1203_cat.json``), plus the category info with the
  recomputed ``image_count`` / ``instance_count`` (``lvis_v1_train_cat_norare_info.json``; F-ViT's class weights
  are ``image_count > 0``). Images are all kept (LVIS is federated).

Both return counts of what was kept and dropped. A malformed file gets a one-line error naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lastvit.detection.text import read_names
from lastvit.io import atomic_write

__all__ = ["load_json", "check_annotations", "make_ov_coco_split", "make_ov_lvis_split", "OV_COCO_FILES",
           "OV_LVIS_FILES"]

OV_COCO_FILES = ("instances_train2017_seen_2_65_cat.json", "instances_val2017_all_2.json")
OV_LVIS_FILES = ("lvis_v1_train_seen_1203_cat.json", "lvis_v1_train_cat_norare_info.json")


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    """A COCO-style annotation file, checked (:func:`check_annotations`)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: annotation file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    check_annotations(data, str(p))
    return data


def check_annotations(data: Any, src: str) -> None:
    """One-line errors for a malformed COCO/LVIS dict: missing sections, unknown ids, bad boxes."""
    if not isinstance(data, dict):
        raise ValueError(f"{src}: expected a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{src}: missing or non-list '{key}'")
    cats = set()
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise ValueError(f"{src}: category without id/name: {str(c)[:80]}")
        cats.add(c["id"])
    imgs = set()
    for im in data["images"]:
        if not isinstance(im, dict) or "id" not in im:
            raise ValueError(f"{src}: image without id: {str(im)[:80]}")
        imgs.add(im["id"])
    for a in data["annotations"]:
        aid = a.get("id", "?") if isinstance(a, dict) else "?"
        if not isinstance(a, dict) or not {"image_id", "category_id", "bbox"} <= set(a):
            raise ValueError(f"{src}: annotation {aid} lacks image_id, category_id or bbox")
        if a["image_id"] not in imgs:
            raise ValueError(f"{src}: annotation {aid} refers to unknown image {a['image_id']}")
        if a["category_id"] not in cats:
            raise ValueError(f"{src}: annotation {aid} refers to unknown category {a['category_id']}")
        b = a["bbox"]
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, int | float) for v in b)) or \
                b[2] < 0 or b[3] < 0:
            raise ValueError(f"{src}: annotation {aid} has a malformed bbox {b!r} (need [x, y, w >= 0, h >= 0])")


def _dump(obj: Any, path: Path) -> None:
    atomic_write(path, json.dumps(obj))


def _ids_by_name(data: dict[str, Any], names: Sequence[str], src: str) -> list[int]:
    by = {c["name"]: c["id"] for c in data["categories"]}
    missing = [n for n in names if n not in by]
    if missing:
        raise ValueError(f"{src}: categories {missing[:5]} of the OV-COCO split are not in the file")
    return [by[n] for n in names]


def make_ov_coco_split(train_json: str | os.PathLike, val_json: str | os.PathLike, out_dir: str | os.PathLike,
                       base: Sequence[str] | None = None, novel: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the OV-COCO train / val files into ``out_dir``; returns the counts per file."""
    base = list(base) if base is not None else read_names("coco_base")
    novel = list(novel) if novel is not None else read_names("coco_novel")
    out = Path(out_dir)
    counts: dict[str, Any] = {}
    for src, name, keep_names in ((train_json, OV_COCO_FILES[0], base), (val_json, OV_COCO_FILES[1], base + novel)):
        data = load_json(src)
        all_ids = set(_ids_by_name(data, base + novel, str(src)))
        keep_ids = set(_ids_by_name(data, keep_names, str(src)))
        anns = [a for a in data["annotations"] if a["category_id"] in keep_ids]
        with_obj = {a["image_id"] for a in anns}
        images = [im for im in data["images"] if im["id"] in with_obj]
        cats = [c for c in data["categories"] if c["id"] in all_ids]
        res = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
        res.update(images=images, annotations=anns, categories=cats)
        _dump(res, out / name)
        counts[name] = {"images_kept": len(images), "images_dropped": len(data["images"]) - len(images),
                        "annotations_kept": len(anns), "annotations_dropped": len(data["annotations"]) - len(anns),
                        "categories": len(cats)}
    return counts


def make_ov_lvis_split(train_json: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write LVIS v1 train without rare annotations (all categories kept) and its category info."""
    data = load_json(train_json)
    bad = [c["id"] for c in data["categories"] if c.get("frequency") not in ("r", "c", "f")]
    if bad:
        raise ValueError(f"{train_json}: categories {bad[:5]} have no LVIS frequency ('r' / 'c' / 'f')")
    rare = {c["id"] for c in data["categories"] if c["frequency"] == "r"}
    anns = [a for a in data["annotations"] if a["category_id"] not in rare]
    img_sets: dict[int, set] = {c["id"]: set() for c in data["categories"]}
    inst: dict[int, int] = {c["id"]: 0 for c in data["categories"]}
    for a in anns:
        img_sets[a["category_id"]].add(a["image_id"])
        inst[a["category_id"]] += 1
    info = [{**c, "image_count": len(img_sets[c["id"]]), "instance_count": inst[c["id"]]}
            for c in data["categories"]]
    res = {k: v for k, v in data.items() if k != "annotations"}
    res["annotations"] = anns
    out = Path(out_dir)
    _dump(res, out / OV_LVIS_FILES[0])
    _dump(info, out / OV_LVIS_FILES[1])
    return {OV_LVIS_FILES[0]: {"images_kept": len(data["images"]), "annotations_kept": len(anns),
                               "annotations_dropped": len(data["annotations"]) - len(anns),
                               "categories": len(data["categories"]), "rare_categories": len(rare)}}
