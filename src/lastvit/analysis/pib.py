"""Point-in-Box (PiB): does the top-scoring patch fall on the annotated object?

Rules (all coordinates in pixels of the network input, boxes ``xyxy``; cell ``(i, j)`` covers rows
``[i*ph, (i+1)*ph)`` and columns ``[j*pw, (j+1)*pw)``):

* ``hit_any`` (the official rule of the released evaluator): a box covers the grid cells whose indices lie in the
  inclusive range ``floor(x1/pw) .. floor(x2/pw)`` by ``floor(y1/ph) .. floor(y2/ph)`` (clamped to the grid); a hit is
  an argmax cell covered by any box. A box edge lying exactly on a cell boundary therefore also covers the next cell.
* ``hit_center`` (stricter): the centre ``((j+0.5)pw, (i+0.5)ph)`` of the argmax cell lies inside a box
  (``x1 <= cx <= x2`` and ``y1 <= cy <= y2``).
* ``hit_mask`` (when a foreground mask is given): more than half of the argmax cell's pixels are foreground.

The argmax is the first maximal index in row-major order (``torch.argmax``). Box coordinates are mapped to cells in
float64: float32 moves a coordinate just below a cell edge onto it (e.g. ``48 - 1e-6`` becomes ``48.0``) and so
covers one cell too many.

Reference: the LaSt-ViT release's evaluator (``hit_any``, with the class-token output as the global representation,
single-object images whose box is < 25% of the image). :class:`PiBMeter` is the one accumulator every caller uses
(:func:`evaluate_pib`, :func:`lastvit.analysis.suite.diagnose`, ``lastvit analyze pib``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "PiBMeter",
    "foreground_share",
    "point_in_box",
    "evaluate_pib",
    "foreground_patches",
    "cell_size",
    "box_cells",
    "as_boxes",
]


def _pair(v: int | Sequence[int] | None) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def cell_size(
    grid: tuple[int, int], image_size: int | Sequence[int] | None, patch_size: int | Sequence[int] | None
) -> tuple[int, int]:
    """Pixel size (ph, pw) of one score cell: ``patch_size`` if given, else ``image_size / grid``."""
    ps = _pair(patch_size)
    if ps is not None:
        return ps
    size = _pair(image_size)
    if size is None:
        raise ValueError("point_in_box needs image_size or patch_size")
    if size[0] % grid[0] or size[1] % grid[1]:
        raise ValueError(f"image size {size} is not a multiple of the score grid {grid}; pass patch_size")
    return size[0] // grid[0], size[1] // grid[1]


def as_boxes(b: Any) -> torch.Tensor:
    """Boxes as a float64 (M, 4) tensor (accepts tensors, arrays, lists; empty -> (0, 4))."""
    if b is None:
        return torch.zeros(0, 4, dtype=torch.float64)
    return torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4).cpu()


def box_cells(boxes: torch.Tensor, grid: tuple[int, int], cell: tuple[int, int]) -> torch.Tensor:
    """(h, w) bool: cells covered by any box under the release's inclusive floor-index rule."""
    h, w = grid
    ph, pw = cell
    out = torch.zeros(h, w, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.tolist():
        c0 = min(max(int(x1 // pw), 0), w - 1)
        c1 = min(max(int(x2 // pw), 0), w - 1)
        r0 = min(max(int(y1 // ph), 0), h - 1)
        r1 = min(max(int(y2 // ph), 0), h - 1)
        if c1 >= c0 and r1 >= r0:
            out[r0 : r1 + 1, c0 : c1 + 1] = True
    return out


def _centres(grid: tuple[int, int], cell: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = grid
    cy = (torch.arange(h, dtype=torch.float64) + 0.5) * cell[0]
    cx = (torch.arange(w, dtype=torch.float64) + 0.5) * cell[1]
    return cy, cx


def _mask_coverage(masks: torch.Tensor, grid: tuple[int, int], cell: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) fraction of foreground pixels per cell (the mask is cropped to ``grid * cell``)."""
    h, w = grid
    m = masks.float()[:, None, : h * cell[0], : w * cell[1]]
    if m.shape[-2:] != (h * cell[0], w * cell[1]):
        raise ValueError(f"mask of shape {tuple(masks.shape[-2:])} is smaller than the score grid {grid} x {cell}")
    return F.avg_pool2d(m, kernel_size=cell, stride=cell)[:, 0]


def foreground_patches(
    boxes: Sequence[Any] | None,
    grid: tuple[int, int],
    *,
    image_size: int | Sequence[int] | None = None,
    patch_size: int | Sequence[int] | None = None,
    masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, h, w) bool foreground patches: mask coverage > 0.5 when masks are given, else centre inside a box."""
    cell = cell_size(grid, image_size, patch_size)
    if masks is not None:
        return _mask_coverage(masks.cpu(), grid, cell) > 0.5
    if boxes is None:
        raise ValueError("foreground_patches needs boxes or masks")
    cy, cx = _centres(grid, cell)
    out = torch.zeros(len(boxes), *grid, dtype=torch.bool)
    for b, bx in enumerate(boxes):
        for x1, y1, x2, y2 in as_boxes(bx).tolist():
            iny = (cy >= y1) & (cy <= y2)
            inx = (cx >= x1) & (cx <= x2)
            out[b] |= iny[:, None] & inx[None, :]
    return out


def foreground_share(maps: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """(B,) share of each non-negative (B, h, w) map's mass on the foreground cells (vote share, attention share);
    NaN where a map sums to 0."""
    m = maps.detach().double().cpu().flatten(1)
    total = m.sum(1)
    on = (m * foreground.bool().cpu().flatten(1)).sum(1)
    return torch.where(total > 0, on / total.clamp_min(1e-300), torch.full_like(total, float("nan")))


def point_in_box(
    scores: torch.Tensor,
    boxes: Sequence[Any],
    image_size: int | Sequence[int] | None = None,
    patch_size: int | Sequence[int] | None = None,
    masks: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Point-in-Box per image.

    Args:
        scores: (B, h, w) patch scores.
        boxes: B entries, each (M, 4) xyxy pixel boxes (M may be 0: never a hit).
        image_size: (H, W) or int of the network input; used when ``patch_size`` is None.
        patch_size: pixel size of a score cell (int or (ph, pw)).
        masks: optional (B, H, W) foreground masks for ``hit_mask``.

    Returns:
        dict of (B,) tensors: ``hit_any``, ``hit_center`` (bool), ``hit_mask`` (bool, only with masks),
        ``argmax`` (flat index), ``row``, ``col`` (int64) and ``max_score`` (float).
    """
    if scores.ndim != 3:
        raise ValueError(f"scores must be (B, h, w), got shape {tuple(scores.shape)}")
    if len(boxes) != scores.shape[0]:
        raise ValueError(f"got {len(boxes)} box lists for {scores.shape[0]} images")
    b, h, w = scores.shape
    grid = (h, w)
    cell = cell_size(grid, image_size, patch_size)
    flat = scores.detach().float().reshape(b, -1).cpu()
    idx = flat.argmax(dim=1)
    row, col = idx // w, idx % w
    cy, cx = _centres(grid, cell)
    hit_any = torch.zeros(b, dtype=torch.bool)
    hit_center = torch.zeros(b, dtype=torch.bool)
    for i in range(b):
        bx = as_boxes(boxes[i])
        if bx.numel() == 0:
            continue
        hit_any[i] = bool(box_cells(bx, grid, cell)[row[i], col[i]])
        y, x = cy[row[i]], cx[col[i]]
        inside = (bx[:, 0] <= x) & (x <= bx[:, 2]) & (bx[:, 1] <= y) & (y <= bx[:, 3])
        hit_center[i] = bool(inside.any())
    out = {
        "hit_any": hit_any,
        "hit_center": hit_center,
        "argmax": idx,
        "row": row,
        "col": col,
        "max_score": flat.gather(1, idx[:, None])[:, 0],
    }
    if masks is not None:
        cov = _mask_coverage(masks.cpu(), grid, cell).reshape(b, -1)
        out["hit_mask"] = cov.gather(1, idx[:, None])[:, 0] > 0.5
    return out


class PiBMeter:
    """Point-in-Box accumulator over batches (in the style of :class:`lastvit.evaluate.metrics.SegConfusion`).

    ``update(scores, boxes, masks, ids, labels, image_size=...)`` selects the images (images without boxes are
    skipped as ``no_boxes``; with ``single_object`` images with more than one box as ``multi_object``; with
    ``max_box_area`` images whose largest box covers at least that fraction of the image as ``large_box``), scores
    the rest with :func:`point_in_box` and keeps one row per image; ``compute()`` gives the metrics. A caller that
    wants to skip the forward pass of unselected images calls ``select(boxes, image_size)`` first and then
    ``update(..., selected=True)`` with the selected images only.

    ``patch_size``: pixel size of a score cell (default ``image_size / grid``).
    """

    def __init__(self, *, patch_size: int | Sequence[int] | None = None, single_object: bool = False,
                 max_box_area: float | None = None) -> None:
        self.patch_size = patch_size
        self.single_object = bool(single_object)
        self.max_box_area = max_box_area
        self.rows: list[dict[str, Any]] = []
        self.skipped: Counter[str] = Counter()
        self.seen = 0
        self._pending: list[int] = []

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` images left out for ``reason`` (e.g. ``dataset:unreadable``)."""
        if n:
            self.skipped[reason] += int(n)

    def select(self, boxes: Sequence[Any], image_size: Sequence[int]) -> list[int]:
        """Indices of the images of one batch that are scored; counts the others by reason."""
        h, w = int(image_size[0]), int(image_size[1])
        keep = []
        for i, b in enumerate(boxes):
            bx = as_boxes(b)
            if bx.shape[0] == 0:
                self.skipped["no_boxes"] += 1
                continue
            if self.single_object and bx.shape[0] > 1:
                self.skipped["multi_object"] += 1
                continue
            if self.max_box_area is not None:
                area = ((bx[:, 2] - bx[:, 0]).clamp(min=0) * (bx[:, 3] - bx[:, 1]).clamp(min=0)).max()
                if float(area) >= self.max_box_area * w * h:
                    self.skipped["large_box"] += 1
                    continue
            keep.append(i)
        self._pending = [self.seen + i for i in keep]
        self.seen += len(boxes)
        return keep

    def update(self, scores: torch.Tensor, boxes: Sequence[Any], masks: torch.Tensor | None = None,
               ids: Sequence[Any] | None = None, labels: Any = None, *, image_size: Sequence[int] | None = None,
               preds: torch.Tensor | None = None, selected: bool = False) -> dict[str, torch.Tensor] | None:
        """Score one batch: ``scores`` (B, h, w), ``boxes`` B entries of (M, 4) xyxy pixels, optional ``masks``
        (B, H, W), ``ids``, ``labels`` and predicted classes ``preds``; returns :func:`point_in_box`'s result for
        the scored images (None when none is). ``image_size`` (H, W) defaults to the grid times ``patch_size``."""
        scores = scores.detach().cpu()
        grid = tuple(scores.shape[-2:])
        if image_size is None:
            if self.patch_size is None:
                raise ValueError("PiBMeter.update needs image_size or the meter's patch_size")
            ps = _pair(self.patch_size)
            image_size = (grid[0] * ps[0], grid[1] * ps[1])
        boxes = list(boxes)
        if selected:
            keep = list(range(len(boxes)))
            index = self._pending if len(self._pending) == len(boxes) else [self.seen - len(boxes) + i
                                                                            for i in keep]
        else:
            keep = self.select(boxes, image_size)
            index = self._pending
        if not keep:
            return None
        sel = torch.tensor(keep)
        res = point_in_box(scores[sel], [boxes[i] for i in keep], image_size=tuple(image_size),
                           patch_size=self.patch_size, masks=masks[sel].cpu() if masks is not None else None)
        lab = None if labels is None else torch.as_tensor(labels).reshape(-1)
        for j, i in enumerate(keep):
            row: dict[str, Any] = {
                "id": str(ids[i]) if ids is not None else str(index[j]),
                "label": int(lab[i]) if lab is not None else -1,
                "num_boxes": int(as_boxes(boxes[i]).shape[0]),
                "argmax_row": int(res["row"][j]),
                "argmax_col": int(res["col"][j]),
                "max_score": round(float(res["max_score"][j]), 6),
                "hit_any": int(res["hit_any"][j]),
                "hit_center": int(res["hit_center"][j]),
            }
            if "hit_mask" in res:
                row["hit_mask"] = int(res["hit_mask"][j])
            if preds is not None:
                p = int(preds[i] if not selected else preds[j])
                row["pred"] = p
                row["correct"] = int(p == row["label"]) if row["label"] >= 0 else ""
            self.rows.append(row)
        return res

    @property
    def num_images(self) -> int:
        return len(self.rows)

    def compute(self) -> dict[str, Any]:
        """``{pib, pib_center, [pib_mask], [accuracy], num_images, num_skipped, skipped}`` (fractions in [0, 1];
        NaN when no image was scored)."""
        rows = self.rows
        n = len(rows)
        out: dict[str, Any] = {
            "pib": sum(r["hit_any"] for r in rows) / n if n else float("nan"),
            "pib_center": sum(r["hit_center"] for r in rows) / n if n else float("nan"),
        }
        with_mask = [r["hit_mask"] for r in rows if "hit_mask" in r]
        if with_mask:
            out["pib_mask"] = sum(with_mask) / len(with_mask)
        correct = [r["correct"] for r in rows if r.get("correct", "") != ""]
        if correct:
            out["accuracy"] = sum(correct) / len(correct)
        out.update(num_images=n, num_skipped=int(sum(self.skipped.values())),
                   skipped=dict(sorted(self.skipped.items())))
        return out


def _batch_field(batch: Any, key: str, required: bool = True) -> Any:
    if not isinstance(batch, dict):
        raise ValueError(f"evaluate_pib expects batches as dicts (lastvit.data.collate), got {type(batch).__name__}")
    if key not in batch:
        if required:
            raise ValueError(f"batch has no {key!r} field (keys: {sorted(batch)})")
        return None
    return batch[key]


@torch.no_grad()
def evaluate_pib(
    model: torch.nn.Module,
    loader: Iterable[dict[str, Any]],
    *,
    source: str = "auto",
    projected: bool | None = None,
    score_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    patch_size: int | Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    single_object: bool = False,
    max_box_area: float | None = None,
    dataset_skipped: int | dict[str, int] | Sequence[Any] | None = None,
    progress: bool = False,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Point-in-Box over a loader of collated batches (``image``, ``boxes``, optional ``mask``, ``id``, ``label``).

    The scores come from the one forward pass per batch (``patch_scores``), or from ``score_fn(images)`` (e.g.
    :func:`~lastvit.analysis.scores.convnet_patch_scores` for a ResNet); only the selected images go through it
    (selection and skip reasons: :class:`PiBMeter`). ``on_batch`` is called once per scored batch with
    ``{"image", "scores", "boxes", "id"}`` of its selected images (e.g. to draw a figure without reading the data
    twice).

    Returns:
        ``(metrics, rows)``: metrics ``{pib, pib_center, [pib_mask], num_images, num_skipped, skipped}`` (PiB as
        fractions in [0, 1]) and one row per evaluated image.
    """
    from lastvit.analysis.scores import scores_from_record

    model.eval()
    meter = PiBMeter(patch_size=patch_size if patch_size is not None else getattr(model, "patch_size", None),
                     single_object=single_object, max_box_area=max_box_area)
    if isinstance(dataset_skipped, int):
        meter.skip("dataset", dataset_skipped)
    elif isinstance(dataset_skipped, dict):
        for k, v in dataset_skipped.items():
            meter.skip(f"dataset:{k}", int(v))
    elif dataset_skipped is not None:
        meter.skip("dataset", len(dataset_skipped))
    has_head = isinstance(getattr(model, "head", None), torch.nn.Linear) and getattr(model, "num_classes", 0) > 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=limit, desc="pib", unit="img")
    for batch in loader:
        images = _batch_field(batch, "image")
        boxes = list(_batch_field(batch, "boxes"))
        masks = _batch_field(batch, "mask", required=False)
        ids = _batch_field(batch, "id", required=False)
        labels = _batch_field(batch, "label", required=False)
        n = images.shape[0]
        if limit is not None:
            n = min(n, limit - meter.seen)
            if n <= 0:
                break
        keep = meter.select(boxes[:n], tuple(images.shape[-2:]))
        if bar is not None:
            bar.update(n)
        if keep:
            sel = torch.tensor(keep)
            x = images[sel].to(device, non_blocking=True)
            pred = None
            if score_fn is not None:
                scores = score_fn(x)
            else:
                rec = model.forward_tokens(x)
                scores = scores_from_record(model, rec, source=source, projected=projected)
                if has_head:
                    pred = model.head(rec.pooled).argmax(dim=1).cpu()
            kb = [boxes[i] for i in keep]
            kid = [ids[i] for i in keep] if ids is not None else None
            klab = torch.as_tensor(labels)[sel] if labels is not None else None
            meter.update(scores.cpu(), kb, masks[sel] if masks is not None else None, kid, klab,
                         image_size=tuple(x.shape[-2:]), preds=pred, selected=True)
            if on_batch is not None:
                on_batch({"image": x, "scores": scores, "boxes": kb, "id": kid})
        if limit is not None and meter.seen >= limit:
            break
    if bar is not None:
        bar.close()
    return meter.compute(), meter.rows
