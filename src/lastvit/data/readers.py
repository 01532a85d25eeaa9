"""Readers of real datasets from local paths: ImageNet (ILSVRC XML boxes), VOC, COCO, mmseg-style segmentation
layouts, ImageFolder trees and trees written by :func:`lastvit.data.write_imagefolder`.

Every reader returns an :class:`ImageRecords` dataset of sample dicts (docs/ARCHITECTURE.md "Data samples"). Bad
input never crashes a run: undecodable images, missing or malformed annotations are skipped and counted by reason
in ``dataset.skipped``; repairs (mode conversions, clipped boxes) are counted in ``dataset.fixed``. An image that
fails to decode only when it is read (e.g. a truncated JPEG) makes ``dataset[i]`` return ``None``;
:func:`lastvit.data.collate` drops such samples.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lastvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, clip_boxes, eval_transform

__all__ = [
    "DataError",
    "ImageRecords",
    "VOC_CLASSES",
    "build_eval_dataset",
    "load_rgb",
    "parse_ilsvrc_xml",
    "read_class_map",
]

IMG_EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


class DataError(ValueError):
    """A dataset cannot be read (the message names the root or file and the problem)."""


class ImageDecodeError(ValueError):
    """An image file cannot be decoded (the message names the file); ``reason`` is the counted skip reason."""

    def __init__(self, msg: str, reason: str = "undecodable image") -> None:
        super().__init__(msg)
        self.reason = reason


BOMB_REASON = "image exceeds PIL's decompression-bomb limit"
NATIVE_REASON = "image too large for native-size evaluation"
#: at native size (``image_size=None``) larger images are skipped: 4096 x 4096 pixels are 65,536 patch-16 tokens
MAX_NATIVE_PIXELS = 4096 * 4096


def _bomb_limit() -> float:
    return float(Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else float("inf")


# ----------------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------------

def load_rgb(path: str | os.PathLike, fixed: Counter | None = None) -> np.ndarray:
    """Decode ``path`` with PIL to uint8 RGB (H, W, 3). Grayscale, CMYK, palette, RGBA/LA and 16-bit/float images
    are converted (counted in ``fixed``). Raises :class:`ImageDecodeError` naming the file; images above PIL's
    decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS`` pixels) are refused with reason :data:`BOMB_REASON`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"{path}: {BOMB_REASON} ({e})", BOMB_REASON) from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"{path}: cannot decode image ({e})") from None
    try:
        with im:
            im.load()
            mode = im.mode
            if mode == "RGB":
                return np.asarray(im, dtype=np.uint8).copy()
            if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                a = np.asarray(im).astype(np.float64)
                top = 65535.0 if (mode.startswith("I;16") or a.max() > 255) else 255.0
                if mode == "F" and a.max() <= 1.0:
                    top = 1.0
                a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
                out = np.repeat(a[..., None], 3, axis=2)
            elif mode == "P":
                out = np.asarray(im.convert("RGBA").convert("RGB"), dtype=np.uint8).copy()
            else:  # L, LA, RGBA, CMYK, YCbCr, 1, ...
                out = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
            if fixed is not None:
                fixed[f"converted {mode} image to RGB"] += 1
            return out
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, MemoryError) as e:
        raise ImageDecodeError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


def _probe(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), None) from the header, or (None, skip reason) when PIL cannot identify the file or the
    image is past PIL's decompression-bomb limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size = im.size
    except Image.DecompressionBombError:
        return None, BOMB_REASON
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None, "undecodable image"
    if size[0] <= 0 or size[1] <= 0:
        return None, "undecodable image"
    if size[0] * size[1] > _bomb_limit():
        return None, BOMB_REASON
    return size, None


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header, or None when the file is not an image PIL can identify."""
    return _probe(path)[0]


# ----------------------------------------------------------------------------------------------------------
# annotations
# ----------------------------------------------------------------------------------------------------------

def parse_ilsvrc_xml(path: str | os.PathLike, *, one_based: bool = False) -> dict[str, Any]:
    """Parse a PASCAL/ILSVRC XML file: ``{"width", "height", "objects": [{"name", "box": [x0,y0,x1,y1],
    "difficult", "truncated"}]}``. ILSVRC boxes are read as given (xyxy); ``one_based=True`` (VOC) maps the
    1-based inclusive pixel indices to pixel edges (x0 - 1, y0 - 1, x1, y1). Raises ``ValueError`` when malformed."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise ValueError(f"{path}: malformed XML ({e})") from None
    if root.tag != "annotation":
        raise ValueError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    w = h = 0
    if size is not None:
        try:
            w = int(float(size.findtext("width", "0")))
            h = int(float(size.findtext("height", "0")))
        except ValueError:
            raise ValueError(f"{path}: malformed <size>") from None
    objs = []
    for o in root.findall("object"):
        name = (o.findtext("name") or "").strip()
        bb = o.find("bndbox")
        if not name or bb is None:
            raise ValueError(f"{path}: <object> without <name> or <bndbox>")
        try:
            box = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise ValueError(f"{path}: <bndbox> of {name!r} lacks numeric xmin/ymin/xmax/ymax") from None
        if one_based:
            box[0] -= 1
            box[1] -= 1
        objs.append(dict(name=name, box=box, difficult=int(float(o.findtext("difficult") or 0)),
                         truncated=int(float(o.findtext("truncated") or 0))))
    return dict(width=w, height=h, objects=objs)


def read_class_map(spec: str | os.PathLike | Sequence[str] | dict[str, int]) -> tuple[list[str], list[str]]:
    """Class ids and names from a ``LOC_synset_mapping.txt``-style file ("n01440764 tench, Tinca tinca"), a file
    of one id per line, a list of ids, or a dict id -> index. Returns (ids, names) in label order."""
    if isinstance(spec, dict):
        ids = [k for k, _ in sorted(spec.items(), key=lambda kv: kv[1])]
        return ids, list(ids)
    if isinstance(spec, (list, tuple)):
        return [str(s) for s in spec], [str(s) for s in spec]
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"class map {path} not found")
    ids, names = [], []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sid, _, rest = line.partition(" ")
        ids.append(sid)
        names.append(rest.split(",")[0].strip() or sid)
    if not ids:
        raise DataError(f"class map {path} is empty")
    return ids, names


# ----------------------------------------------------------------------------------------------------------
# the dataset
# ----------------------------------------------------------------------------------------------------------

class ImageRecords(torch.utils.data.Dataset):
    """A list of image records read lazily into sample dicts and passed through ``transform``.

    A record holds ``path``, ``id``, ``label`` and optionally ``boxes`` (M, 4) xyxy in original pixels,
    ``box_labels``, ``difficult``, ``truncated``, ``mask_path``, ``seg_path``, ``caption``, ``coco_anns``.
    """

    def __init__(self, records: list[dict[str, Any]], *, name: str, root: Path, classes: list[str],
                 transform: Callable[[dict[str, Any]], dict[str, Any]], mean: Sequence[float],
                 std: Sequence[float], skipped: Counter, fixed: Counter, reduce_zero_label: bool = False,
                 coco: Any = None, extra: dict[str, Any] | None = None) -> None:
        self.records = records
        self.name = name
        self.root = root
        self.classes = classes
        self.transform = transform
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.skipped = skipped
        self.fixed = fixed
        self.reduce_zero_label = reduce_zero_label
        self.coco = coco
        self.extra = extra or {}
        self._counted: set[tuple[int, str]] = set()  # (index, reason): each file is counted once per reason

    def _count(self, counter: Counter, index: int, reason: str, n: int = 1) -> None:
        if (index, reason) not in self._counted:
            self._counted.add((index, reason))
            counter[reason] += n

    @property
    def num_images(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def _read_label_png(self, path: str, shape: tuple[int, int]) -> np.ndarray:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "I;16L", "I;16B"):
                raise ValueError(f"{path}: label map has mode {im.mode}, expected a palette/grayscale PNG")
            a = np.asarray(im).astype(np.int64)
        if a.shape != shape:
            raise ValueError(f"{path}: label map is {a.shape[1]}x{a.shape[0]}, image is {shape[1]}x{shape[0]}")
        return a

    def load(self, index: int) -> dict[str, Any]:
        """The raw sample (uint8 image, boxes in original pixels), before ``transform``. Raises on bad files."""
        r = self.records[index]
        conv: Counter = Counter()
        img = load_rgb(r["path"], conv)
        for reason in conv:
            self._count(self.fixed, index, reason)
        h, w = img.shape[:2]
        s: dict[str, Any] = dict(image=torch.from_numpy(img).permute(2, 0, 1).contiguous(), label=r["label"],
                                 id=r["id"], orig_size=(h, w), boxes_dropped=0)
        boxes = r.get("boxes")
        s["boxes"] = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)) if boxes is not None \
            else torch.zeros(0, 4)
        for k in ("box_labels", "difficult", "truncated"):
            if k in r:
                s[k] = list(r[k])
        if "caption" in r:
            s["caption"] = r["caption"]
        if r.get("mask_path"):
            with Image.open(r["mask_path"]) as im:
                m = np.asarray(im.convert("L")) > 127
            if m.shape != (h, w):
                raise ValueError(f"{r['mask_path']}: mask is {m.shape[1]}x{m.shape[0]}, image is {w}x{h}")
            s["mask"] = torch.from_numpy(m.copy())
        if r.get("seg_path"):
            seg = self._read_label_png(r["seg_path"], (h, w))
            if self.reduce_zero_label:
                seg = np.where(seg == 0, 255, seg - 1)
                seg[seg == 254] = 255
            # labels beyond the class list: counted once, kept
            if self.classes and not r.get("seg_mask") and ((seg >= len(self.classes)) & (seg != 255)).any():
                self._count(self.fixed, index, "segmentation label beyond the class count (kept as is)")
            s["seg"] = torch.from_numpy(seg)
            if r.get("seg_mask"):  # VOC: foreground = object classes 1..20
                s["mask"] = torch.from_numpy((seg > 0) & (seg != 255))
        if r.get("coco_anns") is not None:
            m = np.zeros((h, w), dtype=bool)
            for a in r["coco_anns"]:
                am = self.coco.annToMask(a)
                if am.shape == (h, w):
                    m |= am.astype(bool)
            s["mask"] = torch.from_numpy(m)
        n_before = len(s["boxes"])
        clip_boxes(s, h, w)
        if len(s["boxes"]) < n_before:
            self._count(self.fixed, index, "empty box dropped after clipping", n_before - len(s["boxes"]))
        return s

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            s = self.load(index)
        except (ValueError, OSError, MemoryError) as e:
            reason = e.reason if isinstance(e, ImageDecodeError) else "bad annotation file"
            if (index, reason) not in self._counted:
                self.extra.setdefault("errors", []).append(str(e))
            self._count(self.skipped, index, reason)
            return None
        return self.transform(s)

    def __repr__(self) -> str:
        return (f"ImageRecords({self.name}, root={str(self.root)!r}, images={len(self)}, "
                f"classes={len(self.classes)}, skipped={dict(self.skipped)})")


# ----------------------------------------------------------------------------------------------------------
# helpers for the readers
# ----------------------------------------------------------------------------------------------------------

def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTS)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _single_object_filter(recs: list[dict[str, Any]], skipped: Counter, max_box_area: float) -> list[dict]:
    out = []
    for r in recs:
        boxes = np.asarray(r.get("boxes") if r.get("boxes") is not None else [], dtype=np.float64).reshape(-1, 4)
        if len(boxes) != 1:
            skipped["not single object"] += 1
            continue
        w, h = r["size"]
        x0, y0, x1, y1 = np.clip(boxes[0], 0, [w, h, w, h])
        if (x1 - x0) * (y1 - y0) >= max_box_area * w * h:
            skipped["box too large"] += 1
            continue
        out.append(r)
    return out


def _ensure_size(r: dict[str, Any], skipped: Counter, force: bool = False) -> bool:
    """Fill r["size"] = (w, h) from the header when the annotation gave none (always read it with ``force``);
    False (counted as undecodable) when PIL cannot identify the file."""
    if not force and r.get("size") and r["size"][0] > 0 and r["size"][1] > 0:
        return True
    sz, why = _probe(Path(r["path"]))
    if sz is None:
        skipped[why or "undecodable image"] += 1
        return False
    r["header_size"] = sz
    if not (r.get("size") and r["size"][0] > 0 and r["size"][1] > 0):
        r["size"] = sz
    return True


def _resolve_imagenet(root: Path, split: str, ann_dir: str | None) -> tuple[Path, Path | None, Path | None]:
    """(image folder, annotation folder or None, synset mapping file or None)."""
    for base in (root, root / "ILSVRC", root.parent.parent.parent if root.name == split else None):
        if base is None:
            continue
        img = base / "Data" / "CLS-LOC" / split
        if img.is_dir():
            ann = base / "Annotations" / "CLS-LOC" / split
            mp = next((p for p in (base / "LOC_synset_mapping.txt", base.parent / "LOC_synset_mapping.txt",
                                   root / "LOC_synset_mapping.txt") if p.is_file()), None)
            return img, Path(ann_dir) if ann_dir else (ann if ann.is_dir() else None), mp
    img = root / split if (root / split).is_dir() else root
    ann: Path | None = Path(ann_dir) if ann_dir else None
    if ann is None:
        for cand in (root / "Annotations" / split, root / "Annotations"):
            if cand.is_dir():
                ann = cand
                break
    mp = root / "LOC_synset_mapping.txt"
    return img, ann, mp if mp.is_file() else None


def _finish(name: str, root: Path, recs: list[dict[str, Any]], skipped: Counter, fixed: Counter,
            classes: list[str], *, single_object: bool, max_box_area: float, limit: int | None,
            image_size: int | None, resize: int | None, opts: dict[str, Any], **kw: Any) -> ImageRecords:
    looked = kw.pop("looked", None) or root
    if not recs:
        detail = f"; skipped: {dict(skipped)}" if skipped else ""
        raise DataError(f"{name} dataset at {root}: no images found in {looked}{detail}")
    max_native = opts.pop("max_native_pixels", MAX_NATIVE_PIXELS)
    if opts.pop("verify", True):  # header check: files PIL cannot identify are skipped up front
        recs = [r for r in recs if _ensure_size(r, skipped, force=True)]
        if image_size is None and max_native:  # native size: a size guard (tokens grow with the pixels)
            big = [r for r in recs if r["header_size"][0] * r["header_size"][1] > max_native]
            if big:
                skipped[NATIVE_REASON] += len(big)
                w, h = big[0]["header_size"]
                warnings.warn(f"{name} dataset at {root}: {len(big)} image(s) above {int(max_native):,} pixels "
                              f"skipped at native size (e.g. {big[0]['path']}: {w}x{h}); give an image size or "
                              f"max_native_pixels", stacklevel=3)
                recs = [r for r in recs if r["header_size"][0] * r["header_size"][1] <= max_native]
    if single_object:
        recs = [r for r in recs if _ensure_size(r, skipped)]
        recs = _single_object_filter(recs, skipped, max_box_area)
    if limit is not None:
        recs = recs[: int(limit)]
    if not recs:
        detail = f"; skipped: {dict(skipped)}" if skipped else ""
        raise DataError(f"{name} dataset at {root}: no images selected in {looked}{detail}")
    default_mean, default_std = kw.pop("default_stats", (IMAGENET_MEAN, IMAGENET_STD))
    mean = tuple(opts.pop("mean", default_mean))
    std = tuple(opts.pop("std", default_std))
    transform = opts.pop("transform", None) or eval_transform(image_size, resize, mean, std)
    if opts:
        raise TypeError(f"build_eval_dataset({name!r}) got unknown option(s) {sorted(opts)}")
    return ImageRecords(recs, name=name, root=root, classes=classes, transform=transform, mean=mean, std=std,
                        skipped=skipped, fixed=fixed, **kw)


def _read_xml_boxes(xml: Path, skipped: Counter, one_based: bool = False) -> dict[str, Any] | None:
    if not xml.is_file():
        skipped["missing annotation"] += 1
        return None
    try:
        return parse_ilsvrc_xml(xml, one_based=one_based)
    except ValueError:
        skipped["malformed annotation"] += 1
        return None


# ----------------------------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------------------------

def _imagenet_like(name: str, root: Path, img_root: Path, ann_root: Path | None, class_spec: Any,
                   class_folders: bool | None, skipped: Counter, *, folder_labels: bool) -> tuple[list, list]:
    if not img_root.is_dir():
        raise FileNotFoundError(f"{name} dataset: image folder {img_root} not found (root {root})")
    dirs = _class_dirs(img_root)
    if class_folders is None:
        class_folders = bool(dirs) and not _list_images(img_root)
    files: list[tuple[Path, str | None]] = []
    if class_folders:
        for d in dirs:
            files += [(p, d.name) for p in _list_images(d)]
    else:
        files = [(p, None) for p in _list_images(img_root)]
    ids: list[str] | None = None
    names: list[str] | None = None
    if class_spec is not None:
        ids, names = read_class_map(class_spec)
    elif class_folders:
        ids = names = [d.name for d in dirs]
    recs = []
    for p, folder in files:
        r: dict[str, Any] = dict(path=str(p), id=p.stem, label=-1, folder=folder)
        if ann_root is not None:
            xml = ann_root / f"{p.stem}.xml"
            if not xml.is_file() and folder is not None:
                xml = ann_root / folder / f"{p.stem}.xml"
            ann = _read_xml_boxes(xml, skipped)
            if ann is None:
                continue
            r["boxes"] = [o["box"] for o in ann["objects"]]
            r["box_names"] = [o["name"] for o in ann["objects"]]
            r["size"] = (ann["width"], ann["height"])
        recs.append(r)
    if ids is None:  # no class map, no class folders: classes = synsets of the annotations, sorted
        ids = sorted({r["box_names"][0] for r in recs if r.get("box_names")})
        names = list(ids)
    index = {c: i for i, c in enumerate(ids)}
    out = []
    for r in recs:
        key = r["folder"] if (folder_labels and r["folder"] is not None) else \
            (r["box_names"][0] if r.get("box_names") else r["folder"])
        if key is None:
            r["label"] = -1
        elif key in index:
            r["label"] = index[key]
        else:
            skipped["class not in class map"] += 1
            continue
        if r.get("box_names"):
            r["box_labels"] = [index.get(n, -1) for n in r["box_names"]]
        out.append(r)
    return out, list(names or [])


def _build_imagenet(root: Path, split: str | None, opts: dict[str, Any], skipped: Counter,
                    class_map: Any) -> tuple[list, list, dict]:
    split = split or "val"
    img_root, ann_root, mapping = _resolve_imagenet(root, split, opts.pop("ann_dir", None))
    class_folders = opts.pop("class_folders", None)
    recs, classes = _imagenet_like("imagenet", root, img_root, ann_root, class_map or mapping, class_folders,
                                   skipped, folder_labels=False)
    return recs, classes, dict(looked=img_root)


def _build_imagefolder(root: Path, split: str | None, opts: dict[str, Any], skipped: Counter,
                       class_map: Any) -> tuple[list, list, dict]:
    img_root = root / split if split else root
    ann_dir = opts.pop("ann_dir", None)
    cm = class_map
    if cm is None and (root / "classes.txt").is_file():
        cm = root / "classes.txt"
    recs, classes = _imagenet_like("imagefolder", root, img_root, Path(ann_dir) if ann_dir else None, cm, True,
                                   skipped, folder_labels=True)
    return recs, classes, dict(looked=f"{img_root}/<class>/")


def _build_synthetic(root: Path, split: str | None, opts: dict[str, Any], skipped: Counter,
                     class_map: Any) -> tuple[list, list, dict]:
    if split is None:
        present = [s for s in ("test", "val", "train") if (root / s).is_dir()]
        if not present:
            raise FileNotFoundError(f"synthetic dataset at {root}: no split folder (train/val/test) found")
        split = present[0]
    cls_file = root / "classes.txt"
    if class_map is None and not cls_file.is_file():
        raise FileNotFoundError(f"synthetic dataset at {root}: {cls_file} not found (not a write_imagefolder tree?)")
    recs, classes = _imagenet_like("synthetic", root, root / split, root / "Annotations" / split,
                                   class_map or cls_file, True, skipped, folder_labels=True)
    captions: dict[str, str] = {}
    cap = root / "captions.csv"
    if cap.is_file():
        with open(cap, newline="") as f:
            captions = {row["path"]: row["caption"] for row in csv.DictReader(f)}
    out = []
    for r in recs:
        rel = Path(r["path"]).relative_to(root).as_posix()
        m = root / "Masks" / split / f"{r['id']}.png"
        if not m.is_file():
            skipped["missing mask"] += 1
            continue
        r["mask_path"] = str(m)
        r["caption"] = captions.get(rel, "")
        out.append(r)
    return out, classes, dict(default_stats=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), looked=f"{root / split}/<class>/")


def _build_voc(root: Path, split: str | None, opts: dict[str, Any], skipped: Counter,
               class_map: Any) -> tuple[list, list, dict]:
    split = split or "val"
    base = next((b for b in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012", root / "VOC2007",
                             root / "VOCdevkit" / "VOC2007") if (b / "JPEGImages").is_dir()), None)
    if base is None:
        raise FileNotFoundError(f"voc dataset at {root}: no JPEGImages folder (tried {root}, {root}/VOC2012, "
                                f"{root}/VOCdevkit/VOC2012)")
    list_kind = opts.pop("imageset", None)
    cands = [list_kind] if list_kind else ["Main", "Segmentation"]
    split_file = next((base / "ImageSets" / k / f"{split}.txt" for k in cands
                       if (base / "ImageSets" / k / f"{split}.txt").is_file()), None)
    if split_file is None:
        raise FileNotFoundError(f"voc dataset at {base}: no ImageSets/{{{','.join(cands)}}}/{split}.txt")
    load_seg = opts.pop("load_seg", split_file.parent.name == "Segmentation")
    skip_difficult = opts.pop("skip_difficult", False)
    skip_empty = opts.pop("skip_empty", True)
    classes = list(VOC_CLASSES)
    index = {c: i for i, c in enumerate(classes)}
    recs = []
    for sid in split_file.read_text().split():
        img = base / "JPEGImages" / f"{sid}.jpg"
        if not img.is_file():
            skipped["missing image"] += 1
            continue
        r: dict[str, Any] = dict(path=str(img), id=sid, label=-1)
        ann = _read_xml_boxes(base / "Annotations" / f"{sid}.xml", skipped, one_based=True)
        if ann is None:
            continue
        objs = [o for o in ann["objects"] if not (skip_difficult and o["difficult"])]
        if any(o["name"] not in index for o in objs):
            skipped["unknown VOC class"] += 1
            continue
        if skip_empty and not objs:
            skipped["no objects"] += 1
            continue
        r.update(boxes=[o["box"] for o in objs], box_labels=[index[o["name"]] for o in objs],
                 difficult=[o["difficult"] for o in objs], truncated=[o["truncated"] for o in objs],
                 size=(ann["width"], ann["height"]))
        if load_seg:
            seg = base / "SegmentationClass" / f"{sid}.png"
            if not seg.is_file():
                skipped["missing segmentation"] += 1
                continue
            r["seg_path"], r["seg_mask"] = str(seg), True
        recs.append(r)
    return recs, classes, dict(looked=f"{base / 'JPEGImages'} (ids from {split_file})")


def _coco_bbox_ok(b: Any) -> bool:
    return isinstance(b, (list, tuple)) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)


def _check_coco(d: Any, ann_file: Path) -> None:
    """One line naming the file and the problem for a COCO file lastvit cannot read."""
    if not isinstance(d, dict):
        raise DataError(f"{ann_file}: malformed COCO annotation file (not a JSON object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(d.get(key), list):
            got = "missing" if key not in d else f"a {type(d[key]).__name__}, not a list"
            raise DataError(f"{ann_file}: malformed COCO annotation file ('{key}' is {got})")
    for n, img in enumerate(d["images"]):
        for key in ("id", "file_name"):
            if not isinstance(img, dict) or key not in img:
                ident = img.get("id", f"#{n}") if isinstance(img, dict) else f"#{n}"
                raise DataError(f"{ann_file}: malformed COCO annotation file (image {ident} has no '{key}')")
    for n, cat in enumerate(d["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DataError(f"{ann_file}: malformed COCO annotation file (category #{n} needs 'id' and 'name')")


def _build_coco(root: Path, split: str | None, opts: dict[str, Any], skipped: Counter,
                class_map: Any) -> tuple[list, list, dict]:
    from pycocotools.coco import COCO

    split = split or "val2017"
    ann_file = Path(opts.pop("ann_file", root / "annotations" / f"instances_{split}.json"))
    img_dir = Path(opts.pop("img_dir", root / split))
    if not ann_file.is_file():
        raise FileNotFoundError(f"coco dataset at {root}: annotation file {ann_file} not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_file))
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        what = f"missing key {e}" if isinstance(e, KeyError) else \
            ("not a JSON object" if isinstance(e, AssertionError) else str(e))
        raise DataError(f"{ann_file}: malformed COCO annotation file ({what})") from None
    _check_coco(coco.dataset, ann_file)
    keep_crowd = opts.pop("keep_crowd", False)
    skip_empty = opts.pop("skip_empty", True)
    with_masks = opts.pop("masks", True)
    round_boxes = opts.pop("round_boxes", False)  # LOST's COCO20k protocol: int(round(v)) of x0, y0, x0+w, y0+h
    cat_ids = sorted(coco.getCatIds())
    cat_index = {c: i for i, c in enumerate(cat_ids)}
    classes = [coco.cats[c]["name"] for c in cat_ids]
    img_ids = sorted(coco.getImgIds())
    image_list = opts.pop("image_list", None)
    if image_list is not None:
        wanted = {ln.strip() for ln in Path(image_list).read_text().splitlines() if ln.strip()}
        by_name = {Path(w).name for w in wanted}
        img_ids = [i for i in img_ids if coco.imgs[i]["file_name"] in by_name or str(i) in wanted]
    recs = []
    for i in img_ids:
        info = coco.imgs[i]
        p = img_dir / info["file_name"]
        if not p.is_file():
            skipped["missing image"] += 1
            continue
        anns = [a for a in coco.imgToAnns.get(i, []) if keep_crowd or not a.get("iscrowd", 0)]
        bad = [a for a in anns if not _coco_bbox_ok(a.get("bbox"))]
        if bad:
            skipped["malformed annotation"] += 1
            continue
        unknown = [a for a in anns if a.get("category_id") not in cat_index]
        if unknown:  # a label beyond the category list: the box is kept with label -1, counted once per image
            skipped["annotation with a category_id not in categories (label -1)"] += 1
        if skip_empty and not anns:
            skipped["no objects"] += 1
            continue
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                 for a in anns]
        if round_boxes:
            boxes = [[float(round(v)) for v in b] for b in boxes]
        recs.append(dict(path=str(p), id=str(i), label=-1, boxes=boxes,
                         box_labels=[cat_index.get(a["category_id"], -1) for a in anns],
                         size=(info.get("width", 0), info.get("height", 0)),
                         coco_anns=anns if with_masks else None))
    return recs, classes, dict(coco=coco, looked=f"{img_dir} (images listed in {ann_file})")


def _build_seg(root: Path, split: str | None, opts: dict[str, Any], skipped: Counter,
               class_map: Any) -> tuple[list, list, dict]:
    img_dir = root / opts.pop("img_dir", "images")
    ann_dir = root / opts.pop("ann_dir", "annotations")
    split_file = opts.pop("split_file", None)
    img_suffix = opts.pop("img_suffix", ".jpg")
    seg_suffix = opts.pop("seg_suffix", ".png")
    reduce_zero_label = bool(opts.pop("reduce_zero_label", False))
    classes_spec = opts.pop("classes", None) or class_map
    if not img_dir.is_dir():
        raise FileNotFoundError(f"seg dataset at {root}: image folder {img_dir} not found")
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"seg dataset at {root}: label folder {ann_dir} not found")
    if split_file is not None:
        sf = Path(split_file) if Path(split_file).is_absolute() else root / split_file
        if not sf.is_file():
            raise FileNotFoundError(f"seg dataset at {root}: split file {sf} not found")
        stems = [ln.strip() for ln in sf.read_text().splitlines() if ln.strip()]
    else:
        stems = sorted(str(p.relative_to(img_dir))[: -len(img_suffix)] for p in img_dir.rglob(f"*{img_suffix}"))
    classes: list[str] = []
    if classes_spec is not None:
        if isinstance(classes_spec, (list, tuple)):
            classes = [str(c) for c in classes_spec]
        else:
            cf = Path(classes_spec)
            if not cf.is_file():
                raise FileNotFoundError(f"seg dataset at {root}: class-name file {cf} not found")
            classes = [ln.strip() for ln in cf.read_text().splitlines() if ln.strip()]
    recs = []
    for s in stems:
        img, seg = img_dir / f"{s}{img_suffix}", ann_dir / f"{s}{seg_suffix}"
        if not img.is_file():
            skipped["missing image"] += 1
            continue
        if not seg.is_file():
            skipped["missing annotation"] += 1
            continue
        recs.append(dict(path=str(img), id=s, label=-1, seg_path=str(seg)))
    return recs, classes, dict(reduce_zero_label=reduce_zero_label, looked=f"{img_dir} (*{img_suffix})")


_BUILDERS = {
    "imagenet": _build_imagenet,
    "voc": _build_voc,
    "coco": _build_coco,
    "synthetic": _build_synthetic,
    "imagefolder": _build_imagefolder,
    "seg": _build_seg,
}


def build_eval_dataset(name: str, root: str | os.PathLike, *, split: str | None = None,
                       image_size: int | None = 224, resize: int | None = 256, single_object: bool = False,
                       max_box_area: float = 0.25, limit: int | None = None, class_map: Any = None,
                       **opts: Any) -> ImageRecords:
    """A dataset of sample dicts read from ``root`` (local files only).

    ``name``: imagenet | voc | coco | synthetic | imagefolder | seg. Images go through Resize(``resize``) +
    CenterCrop(``image_size``) + Normalize(``mean``, ``std``) (``image_size=None``: native size). With
    ``single_object``, keep images with exactly one box whose area is < ``max_box_area`` of the image.
    Options: ``mean``, ``std``, ``transform`` (replaces the pipeline), and per reader: imagenet ``ann_dir``,
    ``class_folders``; voc ``imageset`` (Main|Segmentation), ``load_seg``, ``skip_difficult``, ``skip_empty``;
    coco ``ann_file``, ``img_dir``, ``image_list``, ``keep_crowd``, ``masks``, ``skip_empty``; seg ``img_dir``,
    ``ann_dir``, ``split_file``, ``img_suffix``, ``seg_suffix``, ``reduce_zero_label``, ``classes``.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(_BUILDERS)}")
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{name} dataset root {root} does not exist")
    skipped: Counter = Counter()
    fixed: Counter = Counter()
    opts = dict(opts)
    recs, classes, kw = _BUILDERS[name](root, split, opts, skipped, class_map)
    return _finish(name, root, recs, skipped, fixed, classes, single_object=single_object,
                   max_box_area=max_box_area, limit=limit, image_size=image_size, resize=resize, opts=opts, **kw)
