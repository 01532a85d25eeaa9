"""``diagnose(model, dataset)``: every diagnostic of lazy aggregation for one model on a held-out split.

One pass over the first ``num_images`` images gives accuracy (through ``predict``), Point-in-Box (any-overlap, patch
centre and mask rules, :class:`~lastvit.analysis.pib.PiBMeter`), the foreground/background patch-score
distributions and their AUROC, patch-token norms and high-norm outliers (after the final norm and at the last block
output); then the masking probe on the first 256 images (it needs the model's own head). ``lastvit demo``, the study
(through :mod:`lastvit.paradigms`) and Python callers all use this one function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Diagnosis", "diagnose", "OUTLIER_KEYS"]

#: the outlier statistics kept in the metrics (see :func:`lastvit.analysis.norms.outlier_stats`)
OUTLIER_KEYS = ("threshold", "outlier_fraction", "num_outliers", "background_share", "background_fraction")
_PROBE_KEYS = ("fractions", "num_removed", "accuracy", "num_patches")


@dataclass
class Diagnosis:
    """What :func:`diagnose` measured.

    ``metrics``: the JSON-ready numbers (``accuracy``, ``pib``, ``pib_center``, ``pib_mask``, ``num_images``,
    ``score_source``, ``score_auroc``, ``score_mean_fg`` / ``_bg``, ``norm_final_median`` / ``_max``,
    ``outliers_final``, ``norm_block_median`` / ``_max``, ``outliers_last_block``, ``masking``). The tensors are what
    the figures and the probes need: pooled ``features`` (N, D) and ``labels`` (N,), patch ``scores`` and
    ``foreground`` (N, h, w), patch-token ``norms`` after the final norm and ``block_norms`` at the last block output
    (N, h, w), the score ``distribution`` (:func:`~lastvit.analysis.distributions.score_distributions`), the masking
    ``probe`` curves (None when skipped) and the per-image Point-in-Box ``pib_rows``.
    """

    metrics: dict[str, Any]
    features: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    foreground: torch.Tensor
    norms: torch.Tensor
    block_norms: torch.Tensor
    distribution: dict[str, Any]
    probe: dict[str, Any] | None = None
    pib_rows: list[dict[str, Any]] = field(default_factory=list)


def _batches(ds: Any, n: int, batch: int) -> Iterator[dict[str, Any]]:
    if hasattr(ds, "batch"):  # SyntheticDataset: rendered in batches
        for i in range(0, n, batch):
            yield ds.batch(list(range(i, min(n, i + batch))))
        return
    from lastvit.data import collate

    for i in range(0, n, batch):
        yield collate([ds[j] for j in range(i, min(n, i + batch))])


@torch.no_grad()
def diagnose(model: torch.nn.Module, dataset: Any, *, num_images: int,
             predict: str | Callable[[torch.Tensor], torch.Tensor] | None = "head", masking: bool = True,
             fractions: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9), source: str = "auto",
             batch_size: int = 128, masking_images: int = 256) -> Diagnosis:
    """Diagnose ``model`` (a ``LastViT``) on the first ``num_images`` images of ``dataset``.

    ``dataset``: a :class:`~lastvit.data.synthetic.SyntheticDataset` (or any dataset of sample dicts with
    ``image``, ``boxes``, ``label`` and optionally ``mask``). ``predict`` maps pooled tokens to class logits for the
    accuracy: ``"head"`` is the model's own head, a callable anything else (a zero-shot classifier), ``None`` leaves
    the accuracy out (``None`` in the metrics). ``masking=False`` skips the masking probe. ``source``: the token the
    patch scores compare with (``auto``: the class token for a ``cls`` readout, the pooled token otherwise).
    """
    from lastvit.analysis.distributions import score_distributions
    from lastvit.analysis.masking import run_masking_probe
    from lastvit.analysis.norms import outlier_stats, token_norms
    from lastvit.analysis.pib import PiBMeter, foreground_patches
    from lastvit.analysis.scores import patch_scores, resolve_source

    if num_images < 1:
        raise ValueError(f"diagnose needs at least one image, got num_images={num_images}")
    model.eval()
    if predict == "head":
        predict = model.forward_head
    meter = PiBMeter(patch_size=model.patch_size)
    correct = total = 0
    scores, fg, final_norms, block_norms, feats, labels = [], [], [], [], [], []
    for b in _batches(dataset, num_images, batch_size):
        s, rec = patch_scores(model, b["image"], source=source)
        size = tuple(b["image"].shape[-2:])
        meter.update(s, b["boxes"], b.get("mask"), b.get("id"), b.get("label"), image_size=size)
        y = torch.as_tensor(b["label"])
        if predict is not None:
            correct += int((predict(rec.pooled).argmax(1) == y).sum())
        total += len(y)
        feats.append(rec.pooled.float())
        labels.append(y)
        scores.append(s)
        fg.append(foreground_patches(b["boxes"], rec.grid, image_size=size, patch_size=model.patch_size,
                                     masks=b.get("mask")))
        n = token_norms(model, b["image"])
        final_norms.append(n["final"])
        block_norms.append(n["blocks"][-1])
    all_scores, all_fg = torch.cat(scores), torch.cat(fg)
    pib = meter.compute()
    dist = score_distributions(all_scores, all_fg)
    final, last_block = torch.cat(final_norms), torch.cat(block_norms)
    out_final = outlier_stats(final, foreground=all_fg)
    out_block = outlier_stats(last_block, foreground=all_fg)
    probe = (run_masking_probe(model, _batches(dataset, min(num_images, masking_images), batch_size),
                               fractions=fractions, mode="pixel", fill="mean") if masking else None)
    metrics = {
        "accuracy": correct / max(total, 1) if predict is not None else None,
        "pib": pib["pib"],
        "pib_center": pib["pib_center"],
        "pib_mask": pib.get("pib_mask", math.nan),
        "num_images": pib["num_images"],
        "score_source": resolve_source(model, source),
        "score_auroc": dist["auroc"],
        "score_mean_fg": dist["mean_fg"],
        "score_mean_bg": dist["mean_bg"],
        "norm_final_median": float(final.median()),
        "norm_final_max": float(final.max()),
        "outliers_final": {k: out_final[k] for k in OUTLIER_KEYS if k in out_final},
        "norm_block_median": float(last_block.median()),
        "norm_block_max": float(last_block.max()),
        "outliers_last_block": {k: out_block[k] for k in OUTLIER_KEYS if k in out_block},
        "masking": {k: probe[k] for k in _PROBE_KEYS if k in probe} if probe is not None else None,
    }
    return Diagnosis(metrics=metrics, features=torch.cat(feats), labels=torch.cat(labels), scores=all_scores,
                     foreground=all_fg, norms=final, block_norms=last_block, distribution=dist, probe=probe,
                     pib_rows=meter.rows)
