"""Data: the embedded synthetic benchmark, readers of real datasets (ImageNet/VOC/COCO/seg layouts, local paths
only) and box-aware transforms. Every dataset returns sample dicts as in docs/ARCHITECTURE.md "Data samples"."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from lastvit.data.readers import (
    DataError,
    ImageRecords,
    build_eval_dataset,
    load_rgb,
    parse_ilsvrc_xml,
    read_class_map,
)
from lastvit.data.synthetic import (
    COLOURS,
    SHAPES,
    SyntheticConfig,
    SyntheticDataset,
    generate_batch,
    write_imagefolder,
)
from lastvit.data.transforms import (
    CenterCrop,
    Compose,
    HorizontalFlip,
    Normalize,
    RandomResizedCrop,
    Resize,
    default_normalisation,
    eval_settings,
    eval_transform,
)

_STACK = ("image", "label", "mask", "seg")


def collate(samples: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Batch sample dicts: stacks ``image``, ``label`` (int64), ``mask`` and ``seg``; every other key (``boxes``,
    ``caption``, ``id``, ...) becomes a list. ``None`` samples (images that failed to decode; the dataset counted
    them in ``dataset.skipped``) are dropped; a stacked key must be present in all samples or in none (a list key
    missing from a sample gives ``None``).

    A batch in which every sample failed gives the **empty batch** ``{}`` (no keys, falsy): callers skip it with
    ``if not batch: continue`` or iterate :func:`skip_empty_batches` ``(loader)``; it is never an error."""
    samples = [s for s in samples if s is not None]
    if not samples:
        return {}
    keys = list(dict.fromkeys(k for s in samples for k in s))
    out: dict[str, Any] = {}
    for k in keys:
        if k in _STACK and any(k not in s for s in samples):
            raise ValueError(f"collate: {k!r} is present in some samples only")
        vals = [s.get(k) for s in samples]
        if k == "label":
            out[k] = torch.as_tensor(vals, dtype=torch.long)
        elif k in _STACK:
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) > 1:
                raise ValueError(f"collate: {k!r} tensors differ in shape {sorted(shapes)}; resize/crop first")
            out[k] = torch.stack(vals)
        else:
            out[k] = vals
    return out


class _SkipEmpty:
    def __init__(self, batches: Iterable[dict[str, Any]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.batches:
            if batch:
                yield batch

    def __len__(self) -> int:  # the number of batches before skipping (what a progress bar shows as total)
        return len(self.batches)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # .dataset, .batch_size ... of a wrapped DataLoader
        return getattr(self.batches, name)


def skip_empty_batches(batches: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """``batches`` (e.g. a DataLoader with ``collate_fn=collate``) without the empty ones (every image of the
    batch failed to decode; the dataset counted them). Iterable as often as ``batches`` is; ``len()`` and the
    other attributes are those of ``batches``."""
    return _SkipEmpty(batches)


__all__ = [
    "COLOURS",
    "CenterCrop",
    "Compose",
    "DataError",
    "HorizontalFlip",
    "ImageRecords",
    "Normalize",
    "RandomResizedCrop",
    "Resize",
    "build_eval_dataset",
    "default_normalisation",
    "eval_settings",
    "eval_transform",
    "load_rgb",
    "parse_ilsvrc_xml",
    "read_class_map",
    "SHAPES",
    "SyntheticConfig",
    "SyntheticDataset",
    "collate",
    "skip_empty_batches",
    "generate_batch",
    "write_imagefolder",
]
