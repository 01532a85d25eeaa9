"""Classification with the model's own head (ImageNet-val top-1 / top-5) and frozen-feature probes.

:func:`classification` is the whole evaluation (``lastvit evaluate classify`` only parses and calls it): the head's
top-1 / top-5, DINO's weighted kNN and a linear probe on the frozen pooled token. The evaluation transform is the
dataset's (``lastvit.data.build_eval_dataset(..., transform=lastvit.data.eval_settings(model, ...).transform())``
gives the one the model was trained for); this module only runs the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from lastvit.evaluate.probe import batch_images_labels, extract_features, knn_accuracy, linear_probe

__all__ = ["MODES", "classification", "evaluate_head", "head_classes"]

#: the evaluations of :func:`classification`
MODES = ("head", "knn", "linear")


@torch.no_grad()
def evaluate_head(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    topk: Sequence[int] = (1, 5),
    on_batch: Callable[[int], None] | None = None,
    class_map: torch.Tensor | None = None,
) -> dict:
    """Top-k accuracy (percent) of ``model(images)`` logits; samples with label -1 are skipped.

    ``class_map`` (optional, length = number of logits) maps every logit to a dataset label (e.g. a subset of
    ImageNet classes); logits of classes mapped to -1 are dropped.
    Returns ``{"top1", "top5", ..., "images", "per_class_top1": {label: acc}}``.
    """
    device = torch.device(device)
    model.eval().to(device)
    correct = dict.fromkeys(topk, 0)
    n = 0
    per_class_hit: dict[int, int] = {}
    per_class_n: dict[int, int] = {}
    for batch in loader:
        if isinstance(batch, dict) and not batch:  # every image of the batch failed to decode (counted)
            continue
        images, labels = batch_images_labels(batch)
        keep = labels >= 0
        if not bool(keep.any()):
            continue
        logits = model(images[keep].to(device)).float().cpu()
        labels = labels[keep]
        if logits.dim() != 2:
            raise ValueError(f"the model returned {tuple(logits.shape)}, not (B, classes) logits: does it have a head?")
        if class_map is not None:
            cm = torch.as_tensor(class_map)
            cols = torch.nonzero(cm >= 0).reshape(-1)
            logits, idx_to_label = logits[:, cols], cm[cols]
        else:
            idx_to_label = torch.arange(logits.shape[1])
        kmax = min(max(topk), logits.shape[1])
        pred = idx_to_label[logits.topk(kmax, dim=1).indices]
        for k in topk:
            correct[k] += int((pred[:, : min(k, kmax)] == labels[:, None]).any(1).sum())
        hit1 = (pred[:, 0] == labels).tolist()
        for y, h in zip(labels.tolist(), hit1):
            per_class_n[y] = per_class_n.get(y, 0) + 1
            per_class_hit[y] = per_class_hit.get(y, 0) + int(h)
        n += labels.numel()
        if on_batch is not None:
            on_batch(labels.numel())
    if n == 0:
        raise ValueError("no labelled images to evaluate")
    out: dict = {f"top{k}": 100.0 * correct[k] / n for k in topk}
    out["images"] = n
    out["per_class_top1"] = {y: 100.0 * per_class_hit[y] / per_class_n[y] for y in sorted(per_class_n)}
    return out


def head_classes(model: nn.Module) -> int:
    """Number of classes of the model's linear classification head (0 when it has none)."""
    if getattr(model, "head_type", "linear") != "linear":
        return 0
    return int(getattr(model, "num_classes", 0) or 0)


class _Batches:
    """Re-iterable batches of a dataset of sample dicts (``None`` = undecodable, counted by the dataset), with the
    batches in which every image failed counted in ``empty`` and skipped."""

    def __init__(self, data: Any, batch_size: int, num_workers: int, progress: str | None) -> None:
        self.data, self.batch_size, self.num_workers, self.progress = data, batch_size, num_workers, progress
        self.empty = 0
        self.passes = 0

    def __iter__(self) -> Iterator[dict]:
        self.empty = 0  # counted per pass (the head and the probes read the test set twice)
        self.passes += 1
        d = self.data
        is_dataset = isinstance(d, torch.utils.data.Dataset) or (
            hasattr(d, "__getitem__") and hasattr(d, "__len__") and not isinstance(d, (list, tuple)))
        if is_dataset:
            it: Iterable = torch.utils.data.DataLoader(d, batch_size=self.batch_size, shuffle=False,
                                                       num_workers=self.num_workers, collate_fn=_collate_counting)
        else:  # already batches (a DataLoader, a list of dict batches or (images, labels) pairs)
            it = d
        if self.progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=self.progress, unit="batch")
        for batch in it:
            if is_dataset:
                batch, n_bad = batch
                skipped = getattr(d, "skipped", None)
                if n_bad and self.num_workers > 0 and self.passes == 1 and skipped is not None:
                    skipped["unreadable file (worker)"] += n_bad  # the reader counted it in a worker process
            if isinstance(batch, dict) and not batch:
                self.empty += 1
                continue
            yield batch


def _collate_counting(samples: list) -> tuple[dict, int]:
    """``lastvit.data.collate`` and the number of undecodable (``None``) samples it dropped."""
    from lastvit.data import collate

    return collate(samples), sum(s is None for s in samples)


def _num_classes(data: Any) -> int | None:
    classes = getattr(data, "classes", None)
    return len(classes) if classes else None


def _where(data: Any) -> str:
    root = getattr(data, "root", None)
    return f"the dataset at {root}" if root is not None else "the dataset"


def classification(
    model: nn.Module,
    test: Any,
    train: Any = None,
    modes: Sequence[str] = MODES,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    knn_k: int = 20,
    knn_t: float = 0.07,
    epochs: int = 100,
    lr: float = 1.0,
    wd: float = 0.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Top-1 / top-5 of the model's head, kNN and linear-probe top-1 on frozen features (percent).

    ``test`` / ``train``: datasets of sample dicts (``lastvit.data.build_eval_dataset``; undecodable images are
    skipped and counted by the dataset, a batch in which every image failed is skipped and counted in
    ``empty_batches``) or iterables of batches. ``modes``: any of ``"head"``, ``"knn"``, ``"linear"``; kNN and the
    linear probe need ``train``. ``"head"`` needs a linear head whose class count equals the dataset's (when the
    dataset names its classes; a label beyond the head is an error too), never a silently meaningless accuracy.

    Returns ``{"head": {"top1", "top5", "images"}, "per_class": [{"label", "top1"}], "knn": {"top1", "k", "T"},
    "linear": {"top1", "epochs", "lr", "wd"}, "train_images", "test_images", "num_classes", "empty_batches":
    {"test", "train"}}`` (keys of the modes run).
    """
    modes = list(dict.fromkeys(modes))
    bad = sorted(set(modes) - set(MODES))
    if bad or not modes:
        raise ValueError(f"unknown modes {bad}; choose from {', '.join(MODES)}" if bad else "no modes given")
    probes = [m for m in modes if m in ("knn", "linear")]
    if probes and train is None:
        raise ValueError(f"{' and '.join(probes)} need training features: pass train= (--train-root and/or "
                         "--train-split)")
    n_data = _num_classes(test)
    if "head" in modes:
        n_head = head_classes(model)
        if n_head <= 0:
            raise ValueError("the model has no classification head (head "
                             f"{getattr(model, 'head_type', '?')!r}); use the knn / linear modes")
        if n_data is not None and n_data != n_head:
            raise ValueError(f"the model's head has {n_head} classes but {_where(test)} has {n_data}: its accuracy "
                             "would mean nothing; use the knn / linear modes or a matching dataset")
    out: dict[str, Any] = {}
    test_b = _Batches(test, batch_size, num_workers, "classify" if progress else None)
    empty: dict[str, int] = {}
    if "head" in modes:
        r = evaluate_head(model, _checked_labels(test_b, head_classes(model), test), device=device)
        out["head"] = {k: v for k, v in r.items() if k != "per_class_top1"}
        out["per_class"] = [{"label": y, "top1": a} for y, a in r["per_class_top1"].items()]
    if probes:
        train_b = _Batches(train, batch_size, num_workers, "train features" if progress else None)
        ftr, ytr = extract_features(model, train_b, device)
        fte, yte = extract_features(model, test_b, device)
        nc = int(max(ytr.max(), yte.max())) + 1
        nc = max(nc, n_data or 0, _num_classes(train) or 0)
        if "knn" in modes:
            out["knn"] = {"top1": knn_accuracy(ftr, ytr, fte, yte, k=knn_k, T=knn_t, num_classes=nc),
                          "k": knn_k, "T": knn_t}
        if "linear" in modes:
            out["linear"] = {"top1": linear_probe(ftr, ytr, fte, yte, epochs=epochs, lr=lr, wd=wd, num_classes=nc),
                             "epochs": epochs, "lr": lr, "wd": wd}
        out["train_images"], out["test_images"], out["num_classes"] = int(len(ytr)), int(len(yte)), nc
        empty["train"] = train_b.empty
    empty["test"] = test_b.empty
    out["empty_batches"] = empty
    return out


def _checked_labels(batches: Iterable, n_head: int, data: Any) -> Iterator[Any]:
    for b in batches:
        _, y = batch_images_labels(b)
        if y.numel() and int(y.max()) >= n_head:
            raise ValueError(f"{_where(data)} has label {int(y.max())} but the model's head has {n_head} classes: "
                             "its accuracy would mean nothing")
        yield b
