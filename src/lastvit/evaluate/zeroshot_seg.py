"""Training-free zero-shot semantic segmentation with a CLIP whose image tower is a LastViT (paper Table 4).

Protocol (SCLIP lineage, re-implemented without mmseg):

1. the image's short side is resized to ``short_side`` (bilinear; e.g. 336 for VOC / Context, 448 for
   COCO / ADE / Cityscapes crops in ClearCLIP), keeping the aspect ratio;
2. sliding windows of ``crop`` pixels with ``stride`` (224 / 112 by default). Window origins are
   ``i * stride`` and the last window of a row / column is moved back so it ends at the image border
   (``y1 = max(y2 - crop, 0)``); an image smaller than the crop is one window of its own size. A window whose
   size is not a multiple of the patch size is zero-padded (bottom / right) and its logits cropped back;
3. per window: dense features of the image tower (:func:`lastvit.evaluate.dense.dense_features`, final-normed
   patch tokens -> projection, with an optional last-block ``variant``), L2-normalised, cosine with every text
   query, logits (Q, h, w) upsampled bilinearly to the window, summed into the image and divided by the number of
   windows covering each pixel; then upsampled bilinearly to the ground-truth size;
4. text queries: each class-file line is ``"name1, synonym2, ..."``; every name is embedded with the 80 ImageNet
   templates (``lastvit.evaluate.zeroshot.zero_shot_classifier``: mean of normalised template embeddings,
   renormalised). ``synonyms="max"`` (SCLIP): probabilities are a softmax over *all* queries of
   ``logit_scale * cosine`` and a class takes the max over its names; ``synonyms="mean"``: a class embedding is
   the renormalised mean of its names' embeddings and the softmax runs over classes;
5. optional PAMR refinement (``pamr_steps > 0``; NACLIP's released numbers use 10 steps, dilations 8 and 16) of
   the query logits at the ground-truth size, guided by the image resized to that size (:func:`pamr`);
6. optional ``area_thd`` (SCLIP's rule): a class whose arg-max area is at most ``area_thd`` of the pixels predicted
   non-background (of all pixels when the dataset has no background class) gets probability 0 -- class 0 is never
   suppressed; ``prob_thd``: pixels whose top probability is below it become class 0 (background) -- only for
   datasets whose class 0 is background (``background=True``, whose class 0 is reported as ``"background"``);
7. mIoU over the dataset's confusion matrix with ignore index 255 (:class:`lastvit.evaluate.metrics.SegConfusion`;
   classes absent from both ground truth and prediction are left out of the mean, as mmseg does).

Defaults: ``logit_scale=40`` (SCLIP's base config), ``prob_thd=0``, ``area_thd=None``, no PAMR; the dataset presets
(:mod:`lastvit.evaluate.presets`) carry SCLIP's per-dataset values.

Reference: SCLIP's ``clip_segmentor.py`` (``forward_slide``, ``postprocess_result``) and NACLIP's ``naclip.py``.
Remaining differences: a window whose size is not a multiple of the patch size is zero-padded here (SCLIP and NACLIP
feed it as is, their CLIP dropping the remainder in the patch convolution); mmseg's long-side cap of 2048 in the
resize is not applied. PAMR runs, as in both, on the query logits at the ground-truth size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

from lastvit.evaluate.dense import dense_features
from lastvit.evaluate.metrics import SegConfusion
from lastvit.models.vit import as_vit

__all__ = [
    "CLASSNAME_FILES",
    "read_classnames",
    "text_queries",
    "slide_inference",
    "window_logits",
    "postprocess",
    "resize_short_side",
    "pamr",
    "ZeroShotSegConfig",
    "evaluate_zeroshot_seg",
]

CLASSNAME_FILES = ("voc20", "voc21", "context59", "context60", "coco_stuff171", "coco_object", "cityscapes",
                   "ade20k")
BACKGROUND_SETS = {"voc21", "context60", "coco_object"}


class ClassNameError(ValueError):
    """A class-name file is missing or malformed."""


def read_classnames(name_or_path: str | os.PathLike) -> list[list[str]]:
    """Classes as lists of names from a shipped name (``"voc21"``...) or a file of ``"name, synonym, ..."`` lines."""
    s = os.fspath(name_or_path)
    if s in CLASSNAME_FILES:
        text = (resources.files("lastvit") / "resources" / "classnames" / f"{s}.txt").read_text("utf-8")
        src = f"lastvit/resources/classnames/{s}.txt"
    else:
        if not os.path.isfile(s):
            raise FileNotFoundError(f"{s}: no such class-name file (or shipped list; known: {CLASSNAME_FILES})")
        with open(s, encoding="utf-8") as f:
            text = f.read()
        src = s
    classes = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        names = [n.strip() for n in line.split(",")]
        if any(not n for n in names):
            raise ClassNameError(f"{src}: line {i} has an empty name: {line!r}")
        classes.append(names)
    if not classes:
        raise ClassNameError(f"{src}: no class names")
    return classes


@torch.no_grad()
def text_queries(
    clip: nn.Module, classes: Sequence[Sequence[str]], templates: Sequence[str] | None = None, synonyms: str = "max"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised text queries (Q, E) and their class index (Q,)."""
    from lastvit.evaluate.zeroshot import zero_shot_classifier

    names = [n for c in classes for n in c]
    idx = torch.tensor([i for i, c in enumerate(classes) for _ in c])
    emb = zero_shot_classifier(clip, names, templates)
    if synonyms == "max":
        return F.normalize(emb.float(), dim=-1), idx
    if synonyms == "mean":
        out = torch.zeros(len(classes), emb.shape[1], dtype=torch.float32, device=emb.device)
        out.index_add_(0, idx.to(emb.device), emb.float())
        return F.normalize(out, dim=-1), torch.arange(len(classes))
    raise ValueError(f"synonyms must be 'max' or 'mean', got {synonyms!r}")


def resize_short_side(image: torch.Tensor, short_side: int | None) -> torch.Tensor:
    """Bilinearly resize (B, 3, H, W) so that min(H, W) == short_side (aspect kept; rounding to nearest)."""
    if not short_side:
        return image
    h, w = image.shape[-2:]
    s = short_side / min(h, w)
    size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
    if size == (h, w):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def window_logits(
    vit: nn.Module, text: torch.Tensor, variant: str = "vanilla", gaussian_std: float = 5.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function window (B, 3, h, w) -> cosine logits (B, Q, h, w) of the image tower against ``text``."""
    p = vit.patch_size

    def fn(win: torch.Tensor) -> torch.Tensor:
        h, w = win.shape[-2:]
        ph, pw = (-h) % p, (-w) % p
        x = F.pad(win, (0, pw, 0, ph)) if (ph or pw) else win
        feats, (gh, gw) = dense_features(vit, x, variant, gaussian_std)
        feats = F.normalize(feats.float(), dim=-1)
        logits = feats @ text.to(feats.device, feats.dtype).T  # (B, N, Q)
        logits = logits.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]

    return fn


@torch.no_grad()
def slide_inference(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    num_out: int,
    crop: int = 224,
    stride: int = 112,
    window_batch: int = 16,
) -> torch.Tensor:
    """Sliding-window logits (B, num_out, H, W): windows as described in the module docstring, averaged.

    Windows of equal size are sent through ``fn`` together, ``window_batch`` images' windows at a time.
    """
    if crop <= 0 or stride <= 0:
        raise ValueError(f"crop and stride must be positive, got {crop}, {stride}")
    b, _, h, w = image.shape
    hg = max(h - crop + stride - 1, 0) // stride + 1
    wg = max(w - crop + stride - 1, 0) // stride + 1
    boxes = []
    for i in range(hg):
        for j in range(wg):
            y1, x1 = i * stride, j * stride
            y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            boxes.append((y1, y2, x1, x2))
    out = image.new_zeros((b, num_out, h, w), dtype=torch.float32)
    count = image.new_zeros((1, 1, h, w), dtype=torch.float32)
    per = max(1, window_batch // max(1, b))
    for s in range(0, len(boxes), per):
        chunk = boxes[s : s + per]
        sizes = {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in chunk}
        groups = [chunk] if len(sizes) == 1 else [[bx] for bx in chunk]
        for g in groups:
            wins = torch.cat([image[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in g])
            logits = fn(wins).float()
            for n, (y1, y2, x1, x2) in enumerate(g):
                out[:, :, y1:y2, x1:x2] += logits[n * b : (n + 1) * b]
                count[:, :, y1:y2, x1:x2] += 1
    return out / count


def postprocess(
    logits: torch.Tensor,
    query_idx: torch.Tensor,
    num_classes: int,
    logit_scale: float = 40.0,
    prob_thd: float = 0.0,
    area_thd: float | None = None,
    background: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (C, H, W) and prediction (H, W) from query logits (Q, H, W) (SCLIP's rule)."""
    probs_q = (logits.float() * logit_scale).softmax(0)
    qi = query_idx.to(logits.device)
    if probs_q.shape[0] == num_classes and torch.equal(qi, torch.arange(num_classes, device=qi.device)):
        probs = probs_q
    else:
        probs = probs_q.new_full((num_classes, *probs_q.shape[1:]), -1.0)
        index = qi.reshape(-1, *([1] * (probs_q.dim() - 1))).expand_as(probs_q)
        probs = probs.scatter_reduce_(0, index, probs_q, "amax", include_self=True)
    if area_thd is not None:  # SCLIP: area against the pixels predicted non-background
        pred = probs.argmax(0)
        area = torch.bincount(pred.reshape(-1), minlength=num_classes).float()
        start = 1 if background else 0
        keep = area > area_thd * area[start:].sum()
        probs[start:] *= keep[start:, None, None].to(probs.dtype)
    pred = probs.argmax(0)
    if prob_thd > 0:
        if not background:
            raise ValueError("prob_thd assigns low-confidence pixels to class 0, which needs a background class")
        pred[probs.max(0).values < prob_thd] = 0
    return probs, pred


@torch.no_grad()
def pamr(image: torch.Tensor, logits: torch.Tensor, num_iter: int = 10, dilations: Sequence[int] = (8, 16)
         ) -> torch.Tensor:
    """Pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020) of ``logits`` (B, C, H, W) guided by ``image``.

    For each pixel ``i`` and each of its 8 neighbours ``j`` at every dilation ``d`` (a dilated 3 x 3 neighbourhood,
    borders replicated), the affinity is ``k_ij = -mean_channels(|I_i - I_j| / (1e-8 + 0.1 * sigma_i))``, with
    ``sigma_i`` the per-channel standard deviation (unbiased) of the 9 samples of every dilated neighbourhood
    (centre included, all dilations together); ``a_ij = softmax_j(k_ij)``. Then ``num_iter`` times
    ``m_i <- sum_j a_ij m_j``. ``logits`` at another size are first resized bilinearly (corners aligned).
    """
    if image.dim() == 3:
        image = image[None]
    if logits.dim() == 3:
        return pamr(image, logits[None], num_iter, dilations)[0]
    h, w = image.shape[-2:]
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)
    if not dilations or num_iter <= 0:
        return logits
    offsets = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    pad = max(int(d) for d in dilations)

    def neighbour(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:  # t shifted so pixel i holds t at i + (dy, dx)
        return t[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]

    img = image.float()
    ip = F.pad(img, [pad] * 4, mode="replicate")
    samples = [img] * len(dilations) + [neighbour(ip, dy, dx) for dy, dx in offsets]
    sigma = torch.stack(samples, 2).std(2)  # (B, 3, H, W)
    kappa = torch.stack([-(img - neighbour(ip, dy, dx)).abs() / (1e-8 + 0.1 * sigma) for dy, dx in offsets], 2)
    alpha = kappa.mean(1).softmax(1)  # (B, P, H, W)
    m = logits.float()
    for _ in range(num_iter):
        mp = F.pad(m, [pad] * 4, mode="replicate")
        acc = torch.zeros_like(m)
        for j, (dy, dx) in enumerate(offsets):
            acc += alpha[:, j : j + 1] * neighbour(mp, dy, dx)
        m = acc
    return m.to(logits.dtype)


@dataclass
class ZeroShotSegConfig:
    """Options of :func:`evaluate_zeroshot_seg` (echoed into metrics.json)."""

    classnames: str = "voc21"
    variant: str = "vanilla"
    short_side: int | None = 336
    crop: int = 224
    stride: int = 112
    logit_scale: float = 40.0
    prob_thd: float = 0.0
    area_thd: float | None = None
    synonyms: str = "max"
    background: bool | None = None  # None: True for the shipped voc21 / context60 / coco_object lists
    gaussian_std: float = 5.0
    ignore_index: int = 255
    window_batch: int = 16
    pamr_steps: int = 0  # > 0: PAMR refinement (NACLIP's released numbers: 10)
    pamr_dilations: tuple[int, ...] = (8, 16)

    def has_background(self) -> bool:
        if self.background is not None:
            return bool(self.background)
        return os.fspath(self.classnames) in BACKGROUND_SETS


@torch.no_grad()
def evaluate_zeroshot_seg(
    clip: nn.Module,
    samples: Iterable[dict],
    cfg: ZeroShotSegConfig,
    device: torch.device | str = "cpu",
    templates: Sequence[str] | None = None,
    on_image: Callable[[dict], None] | None = None,
) -> dict:
    """Zero-shot segmentation over ``samples`` (dicts with ``image`` (3, H, W), ``seg`` (H, W), ``id``).

    Returns ``{"mIoU", "aAcc", "mAcc", "per_class": [{"class", "IoU", "Acc"}], "per_image": [...],
    "images"}``; per-image rows hold ``id``, pixel accuracy and the image's own mIoU (classes present in its
    ground truth or prediction).
    """
    device = torch.device(device)
    clip.eval().to(device)
    classes = read_classnames(cfg.classnames)
    c = len(classes)
    text, qidx = text_queries(clip, classes, templates, cfg.synonyms)
    text, qidx = text.to(device), qidx.to(device)
    bg = cfg.has_background()
    fn = window_logits(as_vit(clip), text, cfg.variant, cfg.gaussian_std)
    conf = SegConfusion(c, cfg.ignore_index)
    rows = []
    for i, s in enumerate(samples):
        if "seg" not in s:
            raise ValueError(f"sample {s.get('id', i)} has no 'seg' map: zero-shot segmentation needs a seg dataset")
        gt = torch.as_tensor(s["seg"])
        img = resize_short_side(s["image"][None].to(device).float(), cfg.short_side)
        logits = slide_inference(fn, img, text.shape[0], cfg.crop, cfg.stride, cfg.window_batch)
        logits = F.interpolate(logits, size=gt.shape[-2:], mode="bilinear", align_corners=False)
        if cfg.pamr_steps > 0:
            guide = F.interpolate(img, size=gt.shape[-2:], mode="bilinear", align_corners=False)
            logits = pamr(guide, logits, cfg.pamr_steps, cfg.pamr_dilations)
        logits = logits[0]
        _, pred = postprocess(logits, qidx, c, cfg.logit_scale, cfg.prob_thd, cfg.area_thd, bg)
        m = conf.update(pred.cpu(), gt)
        iou = SegConfusion.iou_from(m)
        valid = ~torch.isnan(iou)
        tot = int(m.sum())
        rows.append({
            "id": str(s.get("id", i)),
            "pixel_acc": 100.0 * float(m.diag().sum()) / tot if tot else math.nan,
            "mIoU": 100.0 * float(iou[valid].mean()) if bool(valid.any()) else math.nan,
        })
        if on_image is not None:
            on_image(rows[-1])
    r = conf.compute()
    names = [cl[0] for cl in classes]
    if bg:  # SCLIP's lists spell the background class as its stuff synonyms ("sky, wall, ..."); report its role
        names[0] = "background"
    return {
        "mIoU": r["mIoU"], "aAcc": r["aAcc"], "mAcc": r["mAcc"], "images": len(rows), "pixels": r["pixels"],
        "per_class": [{"class": n, "IoU": a, "Acc": b} for n, a, b in zip(names, r["IoU"], r["Acc"])],
        "per_image": rows,
    }
