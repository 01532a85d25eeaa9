"""Image-text pairs for CLIP training: a CSV of (image path, caption) and local webdataset-style tar shards.

Both readers return sample dicts as in docs/ARCHITECTURE.md (``image`` normalised float32 (3, H, W), ``label`` -1,
``boxes`` (0, 4), ``caption`` str, ``id`` str). Bad entries are skipped and counted, never fatal: a missing file,
an image that does not decode, a tar member without its partner (``.jpg`` without ``.txt`` or the reverse) or an
empty caption. ``dataset.bad`` counts them per reason; ``dataset.bad_examples`` keeps a few names.

The synthetic benchmark (:class:`lastvit.data.SyntheticDataset`) already carries a ``caption`` per sample
("a small red circle in the centre"), so it is used directly for text supervision.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from lastvit.data.transforms import CLIP_MEAN, CLIP_STD

__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "ImageTextCSV",
    "ImageTextTar",
    "clip_transform",
    "TokenizingCollate",
]

OPENAI_MEAN, OPENAI_STD = CLIP_MEAN, CLIP_STD  # defined once, in lastvit.data.transforms
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TEXT_EXTS = (".txt",)
_PATH_COLS = ("path", "filepath", "image", "file", "filename")
_CAPTION_COLS = ("caption", "title", "text")


def clip_transform(img_size: int = 224, train: bool = False, mean: Sequence[float] = OPENAI_MEAN,
                   std: Sequence[float] = OPENAI_STD) -> Callable[[Any], torch.Tensor]:
    """CLIP preprocessing: eval = Resize(short side, bicubic) + CenterCrop; train = RandomResizedCrop(scale 0.9-1)."""
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    if train:
        geo = [T.RandomResizedCrop(img_size, scale=(0.9, 1.0), interpolation=bicubic)]
    else:
        geo = [T.Resize(img_size, interpolation=bicubic), T.CenterCrop(img_size)]
    return T.Compose([*geo, T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])


class _PairDataset(Dataset):
    """Shared parts: transform, bad-entry bookkeeping, and skipping entries that fail to decode."""

    def __init__(self, transform: Callable[[Any], torch.Tensor] | None, img_size: int) -> None:
        self.transform = transform or clip_transform(img_size)
        self.mean, self.std = OPENAI_MEAN, OPENAI_STD
        self.bad: Counter[str] = Counter()
        self.bad_examples: list[str] = []
        self.entries: list[Any] = []

    def _mark_bad(self, reason: str, name: str) -> None:
        self.bad[reason] += 1
        if len(self.bad_examples) < 20:
            self.bad_examples.append(f"{name}: {reason}")

    @property
    def num_bad(self) -> int:
        return sum(self.bad.values())

    def __len__(self) -> int:
        return len(self.entries)

    def _load(self, entry: Any) -> tuple[Any, str, str]:  # (PIL image, caption, id)
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image, UnidentifiedImageError

        n = len(self.entries)
        if n == 0:
            raise IndexError("empty image-text dataset")
        for j in range(n):  # an undecodable image is skipped (counted) in favour of the next entry
            entry = self.entries[(index + j) % n]
            try:
                img, caption, key = self._load(entry)
                img = img.convert("RGB")
            except (OSError, UnidentifiedImageError, ValueError, KeyError, Image.DecompressionBombError) as e:
                self._mark_bad("undecodable image", f"{entry} ({type(e).__name__})")
                continue
            image = self.transform(img)
            return dict(image=image, label=-1, boxes=torch.zeros(0, 4), caption=caption, id=key)
        raise ValueError("no entry of the image-text dataset could be decoded")


class ImageTextCSV(_PairDataset):
    """Pairs from a CSV file: a header with an image column (``path``/``filepath``/``image``/``file``) and a caption
    column (``caption``/``title``/``text``), or a header-less two-column file (path, caption). Relative paths are
    relative to the CSV's folder (or ``root``). Rows whose file is missing or caption empty are skipped and counted.
    """

    def __init__(self, csv_path: str | os.PathLike, root: str | os.PathLike | None = None,
                 transform: Callable[[Any], torch.Tensor] | None = None, img_size: int = 224,
                 delimiter: str | None = None) -> None:
        super().__init__(transform, img_size)
        self.path = os.fspath(csv_path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: no such CSV file")
        self.root = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(self.path))
        with open(self.path, newline="", encoding="utf-8") as f:
            text = f.read()
        if delimiter is None:
            delimiter = "\t" if self.path.endswith((".tsv", ".tab")) else ","
        rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
        if not rows:
            raise ValueError(f"{self.path}: empty CSV file")
        head = [h.strip().lower() for h in rows[0]]
        pi = next((head.index(c) for c in _PATH_COLS if c in head), None)
        ci = next((head.index(c) for c in _CAPTION_COLS if c in head), None)
        if pi is not None and ci is not None:
            rows = rows[1:]
        elif pi is None and ci is None and len(head) >= 2:
            pi, ci = 0, 1
        else:
            raise ValueError(f"{self.path}: need an image-path column {_PATH_COLS} and a caption column "
                             f"{_CAPTION_COLS}, got header {rows[0]}")
        for r, row in enumerate(rows, start=2 if pi is not None else 1):
            if len(row) <= max(pi, ci):
                self._mark_bad("short row", f"{self.path}:{r}")
                continue
            p, cap = row[pi].strip(), row[ci].strip()
            full = p if os.path.isabs(p) else os.path.join(self.root, p)
            if not cap:
                self._mark_bad("empty caption", full)
            elif not os.path.isfile(full):
                self._mark_bad("missing file", full)
            else:
                self.entries.append((full, cap))
        if not self.entries:
            raise ValueError(f"{self.path}: no usable image-text rows ({dict(self.bad)})")

    def _load(self, entry: tuple[str, str]) -> tuple[Any, str, str]:
        from PIL import Image

        path, cap = entry
        with Image.open(path) as im:
            im.load()
            return im.copy(), cap, os.path.splitext(os.path.basename(path))[0]


def _split_key(name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first dot of the basename, extension = the rest."""
    d, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (os.path.join(d, stem) if d else stem), ("." + ext.lower() if dot else "")


class ImageTextTar(_PairDataset):
    """Pairs from local webdataset-style shards: ``*.tar`` holding ``<key>.jpg|png|...`` and ``<key>.txt``.

    ``shards``: a list of files, a folder (all ``*.tar`` inside) or a glob. Shards are indexed once with
    :mod:`tarfile`; members are read by offset. Unreadable shards, unpaired members and empty captions are skipped
    and counted.
    """

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike],
                 transform: Callable[[Any], torch.Tensor] | None = None, img_size: int = 224) -> None:
        super().__init__(transform, img_size)
        files = self._resolve(shards)
        self.shards = files
        self._handles: dict[str, Any] = {}
        for shard in files:
            try:
                with tarfile.open(shard, "r") as tf:
                    members = [m for m in tf.getmembers() if m.isfile()]
                    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
                    for m in members:
                        key, ext = _split_key(m.name)
                        groups.setdefault(key, {})[ext] = m
                    for key, g in groups.items():
                        img = next((g[e] for e in IMAGE_EXTS if e in g), None)
                        txt = next((g[e] for e in TEXT_EXTS if e in g), None)
                        if img is None or txt is None:
                            self._mark_bad("unpaired member", f"{shard}:{key}")
                            continue
                        f = tf.extractfile(txt)
                        cap = f.read().decode("utf-8", errors="replace").strip() if f is not None else ""
                        if not cap:
                            self._mark_bad("empty caption", f"{shard}:{key}")
                            continue
                        self.entries.append((shard, img.offset_data, img.size, cap, key))
            except (tarfile.TarError, OSError, EOFError) as e:
                self._mark_bad("unreadable shard", f"{shard} ({e})")
        if not self.entries:
            raise ValueError(f"no usable image-text pairs in {len(files)} shard(s) {files[:3]} ({dict(self.bad)})")

    @staticmethod
    def _resolve(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
        if isinstance(shards, str | os.PathLike):
            s = os.fspath(shards)
            if os.path.isdir(s):
                files = sorted(glob.glob(os.path.join(s, "*.tar")))
            elif any(c in s for c in "*?["):
                files = sorted(glob.glob(s))
            else:
                files = [s]
        else:
            files = [os.fspath(x) for x in shards]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: no such tar shard")
        if not files:
            raise FileNotFoundError(f"{shards}: no *.tar shards found")
        return files

    def _load(self, entry: tuple[str, int, int, str, str]) -> tuple[Any, str, str]:
        from PIL import Image

        shard, offset, size, cap, key = entry
        fh = self._handles.get(shard)
        if fh is None:
            fh = self._handles[shard] = open(shard, "rb")  # noqa: SIM115 - kept open for random access
        fh.seek(offset)
        data = fh.read(size)
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.copy(), cap, key

    def __getstate__(self) -> dict[str, Any]:  # file handles do not travel to loader workers
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


class TokenizingCollate:
    """collate_fn: :func:`lastvit.data.collate` plus ``text``: the captions tokenized (LongTensor (B, L))."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        from lastvit.data import collate

        batch = collate(samples)
        batch["text"] = self.tokenizer(list(batch["caption"]))
        return batch
