"""Frozen-feature classification probes: feature extraction, DINO's weighted kNN, and a linear probe.

* :func:`extract_features` runs a model over a loader and returns the pooled token (the readout's global
  representation, before any head) with the labels.
* :func:`knn_classify` is the weighted k-nearest-neighbour classifier of DINO (Caron et al., 2021): features
  are L2-normalised, the ``k`` most cosine-similar training samples vote for their class with weight
  ``exp(sim / T)``, and the class with the largest total weight wins.
* :func:`linear_probe` fits a multinomial logistic regression (a bias-carrying linear layer with cross-entropy
  and weight decay) on standardised features with full-batch L-BFGS or minibatch AdamW, deterministically.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lastvit.models import as_vit

__all__ = ["batch_images_labels", "extract_features", "knn_classify", "knn_accuracy", "linear_probe", "topk_accuracy"]


def batch_images_labels(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels from a dict batch (``lastvit.data.collate``) or an ``(images, labels)`` pair."""
    if isinstance(batch, dict):
        images = batch["image"]
        labels = batch.get("label")
        if labels is None:
            labels = torch.full((images.shape[0],), -1, dtype=torch.long)
    else:
        images, labels = batch[0], batch[1]
    labels = torch.as_tensor(labels, dtype=torch.long)
    return images, labels


def _pooled(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pooled token: ``forward_tokens(...).pooled`` of a LastViT or a CLIP's image tower, else ``model(images)``."""
    try:
        vit = as_vit(model)
    except TypeError:
        return model(images)
    return vit.forward_tokens(images).pooled


@torch.no_grad()
def extract_features(
    model: nn.Module, loader: Iterable, device: torch.device | str = "cpu", progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled tokens ``(N, D)`` (float32, on CPU) and labels ``(N,)`` of every sample of ``loader``.

    ``loader`` yields dict batches with ``image`` / ``label`` (lastvit datasets + ``lastvit.data.collate``) or
    ``(images, labels)`` pairs. The model is put in eval mode and left there.
    """
    model.eval()
    feats, labels = [], []
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="features", leave=False)
    for batch in it:
        if isinstance(batch, dict) and not batch:  # every image of the batch failed to decode (counted)
            continue
        images, y = batch_images_labels(batch)
        f = _pooled(model, images.to(device, non_blocking=True))
        feats.append(f.float().cpu())
        labels.append(y.cpu())
    if not feats:
        raise ValueError("extract_features: the loader yielded no batches")
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int = 20,
    T: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """Class scores ``(M, C)`` of DINO's weighted kNN; ``scores.argmax(1)`` is the prediction.

    Cosine similarity on L2-normalised features; each of the ``k`` nearest training samples adds
    ``exp(sim / T)`` to its class. ``num_classes`` defaults to ``max(train_labels) + 1``.
    """
    if train_feats.shape[0] != train_labels.shape[0]:
        raise ValueError(
            f"knn_classify: {train_feats.shape[0]} train features but {train_labels.shape[0]} labels"
        )
    if k < 1:
        raise ValueError(f"knn_classify: k must be >= 1, got {k}")
    c = int(train_labels.max()) + 1 if num_classes is None else int(num_classes)
    tr = F.normalize(train_feats.float(), dim=1)
    te = F.normalize(test_feats.float(), dim=1)
    kk = min(k, tr.shape[0])
    out = []
    for s in range(0, te.shape[0], chunk):
        sim = te[s : s + chunk] @ tr.T  # (m, Ntr)
        top, idx = sim.topk(kk, dim=1)  # ties: torch's order (deterministic on CPU)
        w = (top / T).exp()
        cls = train_labels.to(idx.device)[idx]
        scores = torch.zeros(sim.shape[0], c, dtype=w.dtype)
        scores.scatter_add_(1, cls, w)
        out.append(scores)
    return torch.cat(out)


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Top-k accuracy (percent) for each k in ``ks`` (a k above the class count means all classes)."""
    res = {}
    for k in ks:
        kk = min(k, scores.shape[1])
        pred = scores.topk(kk, dim=1).indices
        res[k] = 100.0 * (pred == labels[:, None]).any(1).float().mean().item()
    return res


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    T: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy (percent) of :func:`knn_classify`."""
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_classify(train_feats, train_labels, test_feats, k=k, T=T, num_classes=num_classes)
    return topk_accuracy(scores, test_labels, (1,))[1]


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 100,
    lr: float = 1.0,
    wd: float = 0.0,
    batch_size: int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    return_model: bool = False,
) -> float | tuple[float, nn.Linear]:
    """Top-1 accuracy (percent) of a logistic-regression probe on frozen features.

    Features are standardised with the training mean/std. ``batch_size=None`` (default): full-batch L-BFGS,
    ``epochs`` iterations of at most 20 evaluations each, learning rate ``lr``, L2 term ``wd/2 |W|^2``.
    A ``batch_size`` uses AdamW (``lr``, decoupled weight decay ``wd``) over shuffled minibatches from a
    generator seeded with ``seed``. Everything is deterministic for a given input.
    """
    if train_feats.shape[0] != train_labels.shape[0] or test_feats.shape[0] != test_labels.shape[0]:
        raise ValueError("linear_probe: feature and label counts differ")
    c = int(max(train_labels.max(), test_labels.max())) + 1 if num_classes is None else int(num_classes)
    xtr, xte = train_feats.double(), test_feats.double()
    mu, sd = xtr.mean(0), xtr.std(0, unbiased=False).clamp_min(1e-6)
    xtr, xte = ((xtr - mu) / sd).float(), ((xte - mu) / sd).float()
    ytr = train_labels.long()
    g = torch.Generator().manual_seed(seed)
    clf = nn.Linear(xtr.shape[1], c)
    with torch.no_grad():
        clf.weight.copy_(torch.randn(clf.weight.shape, generator=g) * 0.01)
        clf.bias.zero_()
    with torch.enable_grad():
        if batch_size is None:
            opt = torch.optim.LBFGS(clf.parameters(), lr=lr, max_iter=20, line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = F.cross_entropy(clf(xtr), ytr) + 0.5 * wd * clf.weight.pow(2).sum()
                loss.backward()
                return loss

            for _ in range(epochs):
                opt.step(closure)
        else:
            opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=wd)
            n = xtr.shape[0]
            for _ in range(epochs):
                perm = torch.randperm(n, generator=g)
                for s in range(0, n, batch_size):
                    idx = perm[s : s + batch_size]
                    opt.zero_grad()
                    F.cross_entropy(clf(xtr[idx]), ytr[idx]).backward()
                    opt.step()
    with torch.no_grad():
        acc = 100.0 * (clf(xte).argmax(1) == test_labels.long()).float().mean().item()
    if return_model:
        return acc, clf
    return acc
