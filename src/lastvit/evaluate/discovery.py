"""Unsupervised single-object discovery: the LazyStrike patch-score rule, LOST and TokenCut, and CorLoc.

All box extractors work on one image's patch grid and return an xyxy box in *pixel* coordinates of the
(padded) network input, clipped to the unpadded image size: patch (row r, col c) covers pixels
``[c*p, (c+1)*p) x [r*p, (r+1)*p)``, so a component spanning columns ``c0..c1`` gives ``x0 = c0*p``,
``x1 = (c1+1)*p`` (LOST's convention). Connected components use :func:`scipy.ndimage.label`; the default
structure is 4-connectivity (LOST's and TokenCut's choice), ``connectivity=8`` uses a 3x3 structure.

* LazyStrike rule (paper Sec. 6.5): patch scores (Eq. 3, cosine of every final-normed patch token with the
  pooled token) on the grid; foreground = ``score > mean + n_std * std`` (population std over the image's
  patches, ``n_std = 1``); the box is that of the connected foreground component holding the top-scoring patch
  (``component="top"``) or of the largest foreground component (``component="largest"``; ties -> the one
  holding the higher-scoring patch).
* LOST (Simeoni et al., BMVC 2021): features = keys of the last attention layer (all heads concatenated,
  prefix tokens dropped; :func:`last_block_keys`); ``A = F F^T``; degree d_i = #{j != i : A_ij > 0}; patches
  sorted by increasing degree (stable: ties keep the lower index); seed = first; ``S`` = those of the first
  ``k_patches`` sorted patches with ``A[seed, j] > 0`` (the seed itself included); mask =
  ``sum_{j in S} A[j, :] > 0``; box = the seed's 4-connected component of the mask.
* TokenCut (Wang et al., CVPR 2022): keys L2-normalised; ``W_ij = 1`` if cos > tau else ``eps``;
  second-smallest generalised eigenvector of ``(D - W) x = lambda D x``; bipartition = ``x > mean(x)``;
  seed = ``argmax |x|``; when the seed falls outside the foreground side the partition is flipped; box = the
  seed's component. The eigenvector is the same one the reference's ``scipy.linalg.eigh(D - W, D)`` returns (up
  to sign and scale, which the rule ignores), found on the symmetric normalised form ``M = D^-1/2 W D^-1/2``
  (``x = D^-1/2 y`` for the second-largest eigenvector ``y`` of ``M``): ``solver="lanczos"`` (default, ARPACK
  on ``M`` with its known top eigenpair ``(1, D^1/2 1)`` deflated, machine-precision tolerance, fixed start
  vector; falls back to ``"dense"`` if it does not converge), ``"dense"`` (LAPACK partial ``eigh`` of ``M``) or
  ``"generalized"`` (the reference's own call). See benchmarks/README.md for the timings that chose the default.

Batching: :func:`discover` with ``batch_size > 1`` stacks consecutive images of the same size into one
forward pass (after ``--resize``/``--image-size`` all images share a size); every box is still extracted per
image, so the boxes are those of batch 1. COCO20k: :data:`COCO_PROTOCOLS` holds the reader options of each
ground-truth protocol; ``"lost"`` (the official one, the default) rounds boxes to integers and keeps images whose
only objects are crowds (they count as misses); ``"float"`` keeps float boxes and skips such images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.ndimage
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from torch import nn

from lastvit.analysis.scores import patch_scores
from lastvit.evaluate.metrics import corloc_hits

__all__ = [
    "component_box",
    "lazystrike_box",
    "lost_box",
    "lost_scores",
    "tokencut_box",
    "fiedler_vector",
    "last_block_keys",
    "LastKeys",
    "DiscoveryResult",
    "discover",
    "pad_to_patch",
    "model_patch_scores",
    "METHODS",
    "EIG_SOLVERS",
    "COCO_PROTOCOLS",
    "coco_reader_options",
]

METHODS = ("lazystrike", "lazystrike-largest", "lost", "tokencut")
EIG_SOLVERS = ("lanczos", "dense", "generalized")

#: Reader options (``build_eval_dataset("coco", ..., **opts)``) of each COCO20k ground-truth protocol.
#: ``lost``: LOST's ``extract_gt_COCO`` (boxes ``int(round(.))`` of x0, y0, x0 + w, y0 + h; crowd boxes removed;
#: an image left without a box stays in and counts as a miss). ``float``: float boxes, such images skipped.
COCO_PROTOCOLS: dict[str, dict[str, bool]] = {
    "lost": {"round_boxes": True, "keep_crowd": False, "skip_empty": False},
    "float": {"round_boxes": False, "keep_crowd": False, "skip_empty": True},
}


def coco_reader_options(protocol: str = "lost") -> dict[str, bool]:
    """The COCO reader options of a discovery ground-truth protocol (a key of :data:`COCO_PROTOCOLS`)."""
    if protocol not in COCO_PROTOCOLS:
        raise ValueError(f"unknown COCO discovery protocol {protocol!r}; choose from {sorted(COCO_PROTOCOLS)}")
    return dict(COCO_PROTOCOLS[protocol])


def _structure(connectivity: int) -> np.ndarray | None:
    if connectivity == 4:
        return None  # scipy's default cross
    if connectivity == 8:
        return np.ones((3, 3), dtype=bool)
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")


def _box_of(mask: np.ndarray, patch_size: int, image_size: tuple[int, int] | None) -> list[float]:
    rows, cols = np.nonzero(mask)
    y0, y1 = int(rows.min()), int(rows.max()) + 1
    x0, x1 = int(cols.min()), int(cols.max()) + 1
    box = [float(x0 * patch_size), float(y0 * patch_size), float(x1 * patch_size), float(y1 * patch_size)]
    if image_size is not None:
        h, w = image_size
        box[2], box[3] = min(box[2], float(w)), min(box[3], float(h))
    return box


def component_box(
    mask: np.ndarray | torch.Tensor,
    seed: tuple[int, int] | None = None,
    patch_size: int = 1,
    image_size: tuple[int, int] | None = None,
    connectivity: int = 4,
    component: str = "seed",
    scores: np.ndarray | None = None,
) -> tuple[list[float], np.ndarray]:
    """Box (xyxy pixels) and boolean component mask of one connected component of a (h, w) grid mask.

    ``component="seed"``: the component holding ``seed`` (row, col) — when the seed is not in the mask the
    seed patch alone is used. ``component="largest"``: the largest component (ties: the one holding the highest
    ``scores`` entry, else the lowest label). An empty mask gives the seed patch, or the whole grid.
    """
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool)
    labels, n = scipy.ndimage.label(m, structure=_structure(connectivity))
    if component == "seed":
        if seed is None:
            raise ValueError("component='seed' needs a seed (row, col)")
        lab = labels[seed]
        comp = labels == lab if lab > 0 else np.zeros_like(m)
        if lab == 0:
            comp[seed] = True
    elif component == "largest":
        if n == 0:
            comp = np.zeros_like(m)
            if seed is not None:
                comp[seed] = True
            else:
                comp[:] = True
        else:
            sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            best = np.flatnonzero(sizes == sizes.max()) + 1
            if len(best) > 1 and scores is not None:
                peak = [float(np.max(np.where(labels == b, scores, -np.inf))) for b in best]
                lab = int(best[int(np.argmax(peak))])
            else:
                lab = int(best[0])
            comp = labels == lab
    else:
        raise ValueError(f"component must be 'seed' or 'largest', got {component!r}")
    return _box_of(comp, patch_size, image_size), comp


def lazystrike_box(
    scores: torch.Tensor,
    patch_size: int,
    image_size: tuple[int, int] | None = None,
    n_std: float = 1.0,
    component: str = "top",
    connectivity: int = 4,
) -> tuple[list[float], np.ndarray]:
    """The LazyStrike discovery rule on one (h, w) patch-score map; returns (box, component mask)."""
    s = scores.detach().double().cpu()
    thr = s.mean() + n_std * s.std(unbiased=False)
    fg = (s > thr).numpy()
    sn = s.numpy()
    top = np.unravel_index(int(np.argmax(sn)), sn.shape)
    if component == "top":
        return component_box(fg, top, patch_size, image_size, connectivity, "seed")
    if component == "largest":
        return component_box(fg, top, patch_size, image_size, connectivity, "largest", scores=sn)
    raise ValueError(f"component must be 'top' or 'largest', got {component!r}")


def lost_scores(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LOST's inverse-degree ordering: (patch order by increasing degree (stable), degrees)."""
    B = A.clone()
    B.fill_diagonal_(0)
    deg = (B > 0).sum(1)
    order = torch.sort(deg, stable=True).indices
    return order, deg


def lost_box(
    feats: torch.Tensor,
    grid: tuple[int, int],
    patch_size: int,
    image_size: tuple[int, int] | None = None,
    k_patches: int = 100,
    connectivity: int = 4,
    affinity: torch.Tensor | None = None,
) -> tuple[list[float], dict]:
    """LOST on one image's patch features (N, D) (or a given affinity (N, N)); returns (box, details)."""
    A = affinity if affinity is not None else feats.float() @ feats.float().T  # LOST works in float32
    A = A.float()
    order, deg = lost_scores(A)
    seed = int(order[0])
    potentials = order[:k_patches]
    similars = potentials[A[seed, potentials] > 0]
    M = A[similars].sum(0)
    h, w = grid
    mask = (M > 0).reshape(h, w).cpu().numpy()
    seed_rc = (seed // w, seed % w)
    box, comp = component_box(mask, seed_rc, patch_size, image_size, connectivity, "seed")
    return box, {"seed": seed, "similars": similars.tolist(), "mask": mask, "component": comp, "degree": deg}


def fiedler_vector(W: np.ndarray, solver: str = "lanczos") -> np.ndarray:
    """Second-smallest generalised eigenvector x of ``(D - W) x = lambda D x`` (``D = diag(W 1)``), W symmetric
    with positive degrees; returned in the D-orthonormal scale (``x^T D x = 1``), sign unspecified."""
    if solver not in EIG_SOLVERS:
        raise ValueError(f"unknown eigensolver {solver!r}; choose from {EIG_SOLVERS}")
    d = W.sum(1)
    if solver == "generalized":
        _, vecs = scipy.linalg.eigh(np.diag(d) - W, np.diag(d), subset_by_index=[1, 1])
        return vecs[:, 0]
    n = W.shape[0]
    r = 1.0 / np.sqrt(d)
    M = W * r[:, None] * r[None, :]  # D^-1/2 W D^-1/2: eigenvalues 1 - lambda, top pair (1, D^1/2 1)
    y = None
    if solver == "lanczos" and n > 3:
        u = np.sqrt(d) / np.sqrt(d.sum())
        Md = M - 2.0 * np.outer(u, u)  # the top eigenvalue 1 moves to -1, below every other one (>= -1)
        v0 = np.random.default_rng(0).standard_normal(n)
        try:
            _, vecs = scipy.sparse.linalg.eigsh(Md, k=1, which="LA", v0=v0, tol=0)
            y = vecs[:, 0]
        except scipy.sparse.linalg.ArpackNoConvergence:
            y = None
    if y is None:
        _, vecs = scipy.linalg.eigh(M, subset_by_index=[n - 2, n - 2])
        y = vecs[:, 0]
    return y * r


def tokencut_box(
    feats: torch.Tensor,
    grid: tuple[int, int],
    patch_size: int,
    image_size: tuple[int, int] | None = None,
    tau: float = 0.2,
    eps: float = 1e-5,
    connectivity: int = 4,
    solver: str = "lanczos",
) -> tuple[list[float], dict]:
    """TokenCut (Normalised Cut on a thresholded cosine graph) on one image's features (N, D)."""
    f = F.normalize(feats.double(), dim=1)
    cos = (f @ f.T).cpu().numpy()
    W = np.where(cos > tau, 1.0, eps)
    x = fiedler_vector(W, solver)
    part = x > x.mean()
    seed = int(np.argmax(np.abs(x)))
    if not part[seed]:
        x = -x
        part = ~part
    h, w = grid
    seed_rc = (seed // w, seed % w)
    box, comp = component_box(part.reshape(h, w), seed_rc, patch_size, image_size, connectivity, "seed")
    return box, {"seed": seed, "eigvec": x, "partition": part.reshape(h, w), "component": comp}


@torch.no_grad()
def last_block_keys(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Keys of the last attention layer (B, P + N, D), all heads concatenated, as LOST and TokenCut take them:
    the model's token path (``embed``, ``forward_blocks`` up to the last block) and the last block's ``qkv``
    projection of its normed input; the last block's attention and MLP are not run."""
    tokens, grid = model.embed(images)
    x = model.forward_blocks(tokens, grid, upto=model.depth - 1)
    blk = model.encoder.blocks[-1]
    qkv = blk.attn.qkv(blk.norm1(x))
    d = qkv.shape[-1] // 3
    return qkv[..., d : 2 * d]


class LastKeys:
    """Context manager: a forward hook on ``encoder.blocks[-1].attn.qkv`` that keeps the keys (B, L, D) of any
    forward pass run inside it (:func:`last_block_keys` gives the same keys without running the last block)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.keys: torch.Tensor | None = None
        self._h = None

    def _hook(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        d = output.shape[-1] // 3
        self.keys = output[..., d : 2 * d]

    def __enter__(self) -> LastKeys:
        self._h = self.model.encoder.blocks[-1].attn.qkv.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._h is not None:
            self._h.remove()


def pad_to_patch(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Zero-pad (bottom / right) normalised images to multiples of the patch size (LOST's padding)."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % patch_size, (-w) % patch_size
    if ph or pw:
        images = F.pad(images, (0, pw, 0, ph))
    return images


@dataclass
class DiscoveryResult:
    """Per-image boxes and hits of one method, CorLoc (percent) and throughput."""

    method: str
    ids: list[str] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    hits: list[bool] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def corloc(self) -> float:
        return 100.0 * sum(self.hits) / max(1, len(self.hits))

    @property
    def images_per_s(self) -> float:
        return len(self.hits) / self.seconds if self.seconds > 0 else float("nan")


def model_patch_scores(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 3 maps (B, h, w) from ``lastvit.analysis.patch_scores`` (the analysis package's definition)."""
    return patch_scores(model, images)[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(samples: Iterable[dict], batch_size: int):
    """Consecutive runs of at most ``batch_size`` samples of the same image size: (index, sample) lists."""
    run: list[tuple[int, dict]] = []
    key = None
    for i, s in enumerate(samples):
        k = tuple(s["image"].shape[-2:])
        if run and (k != key or len(run) >= batch_size):
            yield run
            run = []
        key = k
        run.append((i, s))
    if run:
        yield run


@torch.no_grad()
def discover(
    model: nn.Module,
    samples: Iterable[dict],
    methods: Iterable[str] = ("lazystrike", "lost"),
    device: torch.device | str = "cpu",
    k_patches: int = 100,
    n_std: float = 1.0,
    connectivity: int = 4,
    tau: float = 0.2,
    eps: float = 1e-5,
    iou_thr: float = 0.5,
    on_image: Callable[[], None] | None = None,
    batch_size: int = 1,
    solver: str = "lanczos",
) -> dict[str, DiscoveryResult]:
    """Run discovery methods and score CorLoc; batch 1 (as LOST does) unless ``batch_size > 1``.

    ``samples`` yields lastvit sample dicts (``image`` (3, H, W) normalised, ``boxes`` (M, 4), ``id``).
    Each method does its own forward pass so that its time (forward + box extraction) is measured separately;
    ``images_per_s`` counts images over that time. With ``batch_size > 1``, consecutive images of the same
    size share a forward pass (boxes are still extracted image by image: the same boxes as batch 1).
    ``solver`` is TokenCut's eigensolver (:func:`fiedler_vector`).
    """
    device = torch.device(device)
    methods = list(methods)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown discovery method {m!r}; choose from {METHODS}")
    if solver not in EIG_SOLVERS:
        raise ValueError(f"unknown eigensolver {solver!r}; choose from {EIG_SOLVERS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval().to(device)
    p = model.patch_size
    npre = model.num_prefix_tokens
    res = {m: DiscoveryResult(m) for m in methods}
    for run in _batches(samples, batch_size):
        sizes = [tuple(s["image"].shape[-2:]) for _, s in run]
        x = pad_to_patch(torch.stack([s["image"] for _, s in run]).to(device), p)
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        gts = []
        for _, s in run:
            gt = s.get("boxes")
            gts.append(torch.zeros(0, 4) if gt is None else torch.as_tensor(gt).reshape(-1, 4))
        for m in methods:
            _sync(device)
            t0 = time.perf_counter()
            boxes = []
            if m.startswith("lazystrike"):
                sc = model_patch_scores(model, x)
                comp = "largest" if m.endswith("largest") else "top"
                for j, hw in enumerate(sizes):
                    boxes.append(lazystrike_box(sc[j], p, hw, n_std=n_std, connectivity=connectivity,
                                                component=comp)[0])
            else:
                keys = last_block_keys(model, x)[:, npre:]
                for j, hw in enumerate(sizes):
                    if m == "lost":
                        box, _ = lost_box(keys[j], grid, p, hw, k_patches=k_patches, connectivity=connectivity)
                    else:
                        box, _ = tokencut_box(keys[j], grid, p, hw, tau=tau, eps=eps, connectivity=connectivity,
                                              solver=solver)
                    boxes.append(box)
            _sync(device)
            r = res[m]
            r.seconds += time.perf_counter() - t0
            for (i, s), box, gt in zip(run, boxes, gts, strict=True):
                r.ids.append(str(s.get("id", i)))
                r.boxes.append(box)
                r.hits.append(corloc_hits([box], [gt], iou_thr)[0])
        if on_image is not None:
            for _ in run:
                on_image()
    return res
