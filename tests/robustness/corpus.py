"""The bad-input corpus: files people really feed lastvit, built in their real formats (no fixtures on disk)."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


# ------------------------------------------------------------------------------------------------- images
def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` 8-bit grayscale pixels, with one tiny IDAT: what PIL reads
    to learn the size (and to apply its decompression-bomb check) without building the pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + \
        chunk(b"IEND", b"")


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def bad_images(size: int = 32) -> dict[str, tuple[bytes, tuple[int, int], str | None]]:
    """name -> (file bytes, (width, height) the annotation states, expected outcome).

    The outcome is the skip reason the readers must count, or ``None`` for an image that must be processed
    (converted to RGB where needed: the ``fixed`` reason is ``converted <mode> image to RGB``).
    """
    limit = Image.MAX_IMAGE_PIXELS
    jpeg = _encode(Image.fromarray(_noise(4 * size, 4 * size)), "JPEG")  # cut in its pixel data: header intact
    png16 = Image.fromarray(np.arange(size * size, dtype=np.uint16).reshape(size, size) * 60)
    return {
        "zero_bytes.JPEG": (b"", (size, size), "undecodable image"),
        "truncated.JPEG": (jpeg[: len(jpeg) * 2 // 3], (4 * size, 4 * size), "undecodable image"),
        "text.JPEG": (b"this is a text file, not a JPEG\n" * 4, (size, size), "undecodable image"),
        "gray.png": (_encode(Image.fromarray(_noise(size, size)[..., 0]), "PNG"), (size, size), None),
        "cmyk.jpg": (_encode(Image.fromarray(_noise(size, size)).convert("CMYK"), "JPEG"), (size, size), None),
        "rgba.png": (_encode(Image.fromarray(_noise(size, size)).convert("RGBA"), "PNG"), (size, size), None),
        "sixteen_bit.png": (_encode(png16, "PNG"), (size, size), None),
        "one_pixel.png": (_encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), (1, 1), None),
        "bomb.png": (png_header_only(limit + 1, 1), (limit + 1, 1), "image exceeds PIL's decompression-bomb limit"),
        "huge_bomb.png": (png_header_only(20000, 20000), (20000, 20000),
                          "image exceeds PIL's decompression-bomb limit"),
    }


CONVERTED = {"gray.png": "L", "cmyk.jpg": "CMYK", "rgba.png": "RGBA", "sixteen_bit.png": "I;16"}


# ------------------------------------------------------------------------------------------------- annotations
def voc_xml(w: int, h: int, objects: list[tuple[str, tuple[float, float, float, float]]], name: str = "x") -> str:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return (f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def coco_json(images: list[dict], annotations: list[dict], categories: list[dict] | None,
              drop: tuple[str, ...] = ()) -> str:
    """A COCO instances file; ``categories=None`` leaves the key out, ``drop`` removes top-level keys."""
    d: dict = {"images": images, "annotations": annotations}
    if categories is not None:
        d["categories"] = categories
    for k in drop:
        d.pop(k, None)
    return json.dumps(d)


# ------------------------------------------------------------------------------------------------- checkpoints
def bad_checkpoints(good: bytes, good_safetensors: bytes, wrong_model: bytes, wrong_shapes: bytes, empty: bytes,
                    nan: bytes) -> dict[str, bytes]:
    """name -> file bytes. ``good``: a lastvit checkpoint (torch zip); the others are built by the caller."""
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("readme.txt", "a zip archive, not a torch checkpoint")
    return {
        "random_bytes.pth": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "truncated.pth": good[: len(good) // 2],
        "zip_not_torch.pth": zbuf.getvalue(),
        "resnet_state_dict.pth": wrong_model,
        "wrong_shapes.pth": wrong_shapes,
        "empty_state_dict.pth": empty,
        "nan_weights.pth": nan,
        "truncated.safetensors": good_safetensors[: len(good_safetensors) // 2],
        "garbage.safetensors": b"\x00garbage bytes named .safetensors" * 8,
        "zero_bytes.pth": b"",
    }


def write_all(folder: Path, files: dict[str, bytes], pick: Callable[[str], bool] = lambda n: True) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data in files.items():
        if pick(name):
            (folder / name).write_bytes(data)
            out.append(folder / name)
    return out
