"""Zero-shot classification with prompt templates (CLIP's prompt ensembling) and dense image-text similarity.

``model`` is anything with ``tokenize``, ``encode_text`` and ``encode_image`` (``encode_patches`` for dense maps),
e.g. :class:`lastvit.models.clip.CLIP`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["dense_text_similarity", "load_templates", "zero_shot_accuracy", "zero_shot_classifier"]


def load_templates(name: str = "imagenet") -> list[str]:
    """Prompt templates shipped in ``lastvit/resources/<name>_templates.txt`` (one per line, ``{}`` = class)."""
    text = resources.files("lastvit").joinpath("resources", f"{name}_templates.txt").read_text(encoding="utf-8")
    return [ln for ln in (s.strip() for s in text.splitlines()) if ln]


@torch.no_grad()
def zero_shot_classifier(
    model: Any,
    classnames: Sequence[str],
    templates: Sequence[str] | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """(C, E) class embeddings: per class, the normalised mean of the normalised embeddings of every template
    filled with the class name, normalised again (CLIP's prompt ensembling). ``templates=None``: the 80
    ImageNet templates; ``["{}"]`` uses the bare class names."""
    templates = list(templates) if templates is not None else load_templates("imagenet")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("every template needs a '{}' placeholder for the class name")
    rows = []
    for c in classnames:
        texts = [t.replace("{}", c) for t in templates]
        embs = torch.cat([model.encode_text(model.tokenize(texts[i : i + batch_size]), normalize=True)
                          for i in range(0, len(texts), batch_size)])
        rows.append(F.normalize(embs.mean(dim=0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def zero_shot_accuracy(
    model: Any,
    data: Iterable[Any] | tuple[torch.Tensor, torch.Tensor],
    classifier: torch.Tensor,
    topk: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Top-k accuracy (in %) of ``argmax(image_emb @ classifier.T)``. ``data``: a tuple ``(images, labels)`` or an
    iterable of batches (dicts with ``image``/``label`` or ``(images, labels)`` pairs)."""
    batches = [data] if isinstance(data, tuple) and isinstance(data[0], torch.Tensor) else data
    device = classifier.device
    correct = dict.fromkeys(topk, 0)
    n = 0
    for b in batches:
        images, labels = (b["image"], b["label"]) if isinstance(b, dict) else b
        labels = torch.as_tensor(labels, device=device)
        logits = model.encode_image(images.to(device), normalize=True) @ classifier.t()
        k_max = min(max(topk), logits.shape[1])
        pred = logits.topk(k_max, dim=1).indices
        for k in topk:
            correct[k] += int((pred[:, : min(k, k_max)] == labels[:, None]).any(dim=1).sum())
        n += labels.shape[0]
    if n == 0:
        raise ValueError("zero_shot_accuracy got no images")
    return {f"top{k}": 100.0 * correct[k] / n for k in topk}


@torch.no_grad()
def dense_text_similarity(model: Any, images: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) cosine similarity between every patch (final-normed token projected by the image head) and every
    text embedding (C, E)."""
    patches, (h, w) = model.encode_patches(images, normalize=True)
    t = F.normalize(text_features.to(patches.dtype), dim=-1)
    sim = patches @ t.t()  # (B, N, C)
    return sim.transpose(1, 2).reshape(sim.shape[0], t.shape[0], h, w)
