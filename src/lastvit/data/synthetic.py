"""The embedded synthetic benchmark: one shape object per image on a cluttered background.

A miniature of the paper's setting (ViTs trained with image-level labels let background patches soak up the
global semantics): each image holds ONE foreground object whose class is its SHAPE (colour is random and never
determines the class), small enough that most patches are background, on a background made of a smooth random
gradient, band-limited noise texture and distractor shapes (strokes, dots, thin arcs, blobs) that belong to no class.

Every sample is a pure function of ``(config, split, index)``: its random parameters come from a NumPy generator
seeded with ``(seed, split_id, index)``; rendering is vectorised with torch over the whole batch (coordinate grids
and inside tests evaluated in a small window around each shape, then scattered into the canvas).
"""

from __future__ import annotations

import csv
import functools
import io
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lastvit.io import atomic_write

__all__ = [
    "SHAPES",
    "PATTERN_STYLES",
    "class_pattern",
    "COLOURS",
    "SPLITS",
    "SyntheticConfig",
    "SyntheticDataset",
    "generate_batch",
    "write_imagefolder",
]

#: Class names, in class-index order. ``num_classes=C`` uses the first C.
SHAPES: tuple[str, ...] = (
    "disk", "square", "triangle", "cross", "ring", "star",
    "diamond", "lshape", "barpair", "crescent", "hexagon", "frame",
)

#: Named colours (RGB in [0, 1]); the caption's colour word is the nearest one to the drawn colour.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "orange": (1.0, 0.55, 0.05),
    "yellow": (0.95, 0.9, 0.1),
    "green": (0.1, 0.7, 0.2),
    "blue": (0.1, 0.3, 0.95),
    "purple": (0.6, 0.15, 0.8),
    "white": (0.97, 0.97, 0.97),
    "black": (0.05, 0.05, 0.05),
}
_PALETTE = np.array(list(COLOURS.values()), dtype=np.float64)
_COLOUR_NAMES = list(COLOURS)

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

#: ``SyntheticConfig.pattern_style`` values: ``stripes`` (orientation (c % 4) * 45 degrees, period 3 / 5 / 7 px by
#: c // 4; a horizontal flip maps 45 onto 135 degrees, i.e. class 1's texture onto class 3's) and
#: ``flip_invariant`` (orientation (c % 2) * 90 degrees, period 3 + 2 * (c // 2) px, cosine phase centred on the
#: image: a horizontal flip leaves every class's stripe field unchanged, pixel for pixel).
PATTERN_STYLES: tuple[str, ...] = ("stripes", "flip_invariant")
_LUMA = np.array([0.299, 0.587, 0.114])
_MAX_SIZE = 0.9  # largest object diameter (fraction of the side) SyntheticConfig allows
_CHUNK = 1024  # images rendered at once

_POSITIONS = {
    (0, 0): "in the top left", (1, 0): "at the top", (2, 0): "in the top right",
    (0, 1): "on the left", (1, 1): "in the centre", (2, 1): "on the right",
    (0, 2): "in the bottom left", (1, 2): "at the bottom", (2, 2): "in the bottom right",
}
_DISTRACTOR_TYPES = ("stroke", "dot", "arc", "blob")


@dataclass
class SyntheticConfig:
    """Knobs of the synthetic benchmark (defaults: a CPU demo at 64x64, i.e. an 8x8 grid of 8-px patches).

    ``min_size``/``max_size`` are the object's circumscribed diameter as a fraction of the image side, so the
    tight box area is at most ``max_size**2`` of the image (default 0.45**2 = 0.2025 < 0.25).
    """

    num_classes: int = 10
    image_size: int = 64
    min_size: float = 0.2
    max_size: float = 0.45
    clutter: int = 8  # distractor shapes per image (belong to no class)
    texture: float = 0.15  # amplitude of the band-limited noise texture
    gradient: bool = True  # smooth two-colour background gradient (else flat colour)
    multi_object: int = 0  # 0: one object; >0: up to this many extra, smaller objects of other classes
    colour_jitter: float = 0.08  # std of per-channel Gaussian jitter around a named colour
    pattern: float = 0.0  # amplitude of a class-specific stripe texture on the labelled object (0: plain fill)
    # benchmark variants for self-supervision (defaults: the original benchmark, bit for bit)
    pattern_style: str = "stripes"  # "stripes": (c % 4) * 45 deg; "flip_invariant": 0 / 90 deg, flip-symmetric
    min_object_area: float = 0.0  # >0: raise each object's size so its shape covers >= this fraction of pixels
    background_chroma: float = 1.0  # background colours mixed towards their grey (luma) value; 0: grey
    train_size: int = 5000
    val_size: int = 1000
    test_size: int = 1000
    seed: int = 0
    mean: tuple[float, float, float] = field(default=(0.5, 0.5, 0.5))
    std: tuple[float, float, float] = field(default=(0.25, 0.25, 0.25))

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= len(SHAPES):
            raise ValueError(f"SyntheticConfig.num_classes must be in [2, {len(SHAPES)}], got {self.num_classes}")
        if self.image_size < 16:
            raise ValueError(f"SyntheticConfig.image_size must be >= 16, got {self.image_size}")
        if not 0.0 < self.min_size <= self.max_size <= 0.9:
            raise ValueError(f"SyntheticConfig needs 0 < min_size <= max_size <= 0.9, got "
                             f"{self.min_size}, {self.max_size}")
        if not 0.0 <= self.pattern <= 1.0:
            raise ValueError(f"SyntheticConfig.pattern must be in [0, 1], got {self.pattern}")
        if self.pattern_style not in PATTERN_STYLES:
            raise ValueError(f"SyntheticConfig.pattern_style must be one of {PATTERN_STYLES}, "
                             f"got {self.pattern_style!r}")
        if not 0.0 <= self.min_object_area <= 0.5:
            raise ValueError(f"SyntheticConfig.min_object_area must be in [0, 0.5], got {self.min_object_area}")
        if not 0.0 <= self.background_chroma <= 1.0:
            raise ValueError(f"SyntheticConfig.background_chroma must be in [0, 1], got {self.background_chroma}")
        if self.clutter < 0 or self.multi_object < 0:
            raise ValueError("SyntheticConfig.clutter and multi_object must be >= 0")
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)

    @property
    def classes(self) -> list[str]:
        return list(SHAPES[: self.num_classes])

    def split_size(self, split: str) -> int:
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size}[_check_split(split)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {sorted(SPLITS)}")
    return split


# ----------------------------------------------------------------------------------------------------------
# per-sample parameters (NumPy, one generator per sample)
# ----------------------------------------------------------------------------------------------------------

def _noise_sizes(h: int) -> tuple[int, int]:
    return max(3, h // 16 + 1), max(4, h // 4)


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic): a counter-based hash."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniforms(seed: int, split_id: int, idx: np.ndarray, n: int) -> np.ndarray:
    """(B, n) uniforms in [0, 1): a pure function of (seed, split, index, position)."""
    with np.errstate(over="ignore"):
        key = _splitmix64(np.full(1, int(seed) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64))
        key = _splitmix64(key ^ np.uint64(split_id + 1))
        key = _splitmix64(key ^ idx.astype(np.uint64))  # (B,)
        ctr = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
        bits = _splitmix64(key[:, None] ^ ctr[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _normals(u: np.ndarray) -> np.ndarray:
    """Standard normals from pairs of uniforms (Box-Muller); (B, 2m) -> (B, 2m)."""
    u1, u2 = 1.0 - u[:, 0::2], u[:, 1::2]
    r = np.sqrt(-2.0 * np.log(u1))
    return np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], axis=1)


def _pick_colours(cfg: SyntheticConfig, bg: np.ndarray, u: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(n, 3) named colours (jittered by ``z``) at distance > 0.45 from the background colours ``bg`` (n, 3);
    ``u`` (n,) picks uniformly among the admissible ones."""
    ok = ((_PALETTE[None] - bg[:, None]) ** 2).sum(-1) > 0.45**2  # (n, P)
    ok[ok.sum(1) == 0] = True
    cnt = ok.sum(1)
    r = np.minimum((u * cnt).astype(np.int64), cnt - 1)
    k = np.argmax(ok & (np.cumsum(ok, 1) - 1 == r[:, None]), axis=1)
    return np.clip(_PALETTE[k] + cfg.colour_jitter * z, 0.0, 1.0)


@functools.cache
def _unit_area(name: str) -> float:
    """Area of a class shape in unit coordinates (circumscribed radius 1), on a 1024^2 grid over [-1, 1]^2."""
    n = 1024
    t = (torch.arange(n, dtype=torch.float64) + 0.5) * (2.0 / n) - 1.0
    inside = _shape_inside(name, t[None, :].expand(n, n), t[:, None].expand(n, n))
    return float(inside.double().mean()) * 4.0


def _area_floor(cfg: SyntheticConfig) -> np.ndarray:
    """(num_classes,) the smallest object diameter (fraction of the side) at which each class shape covers
    ``min_object_area`` of the image, with a 4% margin for rasterisation, capped at the largest allowed size."""
    a = np.array([_unit_area(c) for c in cfg.classes])
    # shape area in pixels = unit_area * (size * H / 2)^2; image = H^2  ->  size = 2 * sqrt(frac / unit_area)
    return np.minimum(1.04 * 2.0 * np.sqrt(cfg.min_object_area / a), _MAX_SIZE)


def _size_cap(cfg: SyntheticConfig) -> float:
    """The largest object diameter a config can draw (the window size of the inside tests)."""
    if cfg.min_object_area > 0:
        return max(cfg.max_size, float(_area_floor(cfg).max()))
    return cfg.max_size


def _sample_batch(cfg: SyntheticConfig, split_id: int, seed: int, idx: list[int]) -> dict[str, Any]:
    """Random parameters of samples ``idx``, each a pure function of (seed, split, index), as arrays."""
    H, K, E = cfg.image_size, cfg.clutter, cfg.multi_object
    B = len(idx)
    g1, g2 = _noise_sizes(H)
    nz = 3 * g1 * g1 + 3 * g2 * g2
    n_dn = 2 * ((3 * K + 1) // 2)  # uniforms for the distractors' colour jitter (Box-Muller pairs)
    n_extra = 1 + E * (10 + 40)
    u = _uniforms(seed, split_id, np.asarray(idx, dtype=np.int64), 18 + 8 * K + n_dn + nz + n_extra)
    c0 = 0.2 + 0.6 * u[:, 0:3]
    c1 = 0.2 + 0.6 * u[:, 3:6] if cfg.gradient else c0.copy()
    if cfg.background_chroma != 1.0:  # desaturate towards the luma grey (same draws: nothing else moves)
        s = float(cfg.background_chroma)
        c0 = (c0 @ _LUMA)[:, None] + s * (c0 - (c0 @ _LUMA)[:, None])
        c1 = (c1 @ _LUMA)[:, None] + s * (c1 - (c1 @ _LUMA)[:, None])
    ang = u[:, 6] * 2 * np.pi
    dxy = np.stack([np.cos(ang), np.sin(ang)], 1)

    def bg_at(b: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        t = np.clip(((x - H / 2) * dxy[b, 0] + (y - H / 2) * dxy[b, 1]) / H + 0.5, 0.0, 1.0)
        return c0[b] + (c1[b] - c0[b]) * t[:, None]

    # the labelled object
    cls = np.minimum((u[:, 7] * cfg.num_classes).astype(np.int64), cfg.num_classes - 1)
    size = cfg.min_size + (cfg.max_size - cfg.min_size) * u[:, 8]
    if cfg.min_object_area > 0:
        size = np.maximum(size, _area_floor(cfg)[cls])
    R = size * H / 2
    cx = R + (H - 2 * R) * u[:, 9]
    cy = R + (H - 2 * R) * u[:, 10]
    theta = u[:, 11] * 2 * np.pi
    ar = np.arange(B)
    colour = _pick_colours(cfg, bg_at(ar, cx, cy), u[:, 12], _normals(u[:, 13:17])[:, :3])
    obj = dict(b=ar, k=np.zeros(B, np.int64), cls=cls, size=size, cx=cx, cy=cy, theta=theta, colour=colour)
    # distractors
    o = 18
    ud = u[:, o: o + 8 * K].reshape(B, 8, K)
    o += 8 * K
    dz = _normals(u[:, o: o + n_dn])[:, : 3 * K].reshape(B, K, 3)
    o += n_dn
    dist = dict(
        type=np.minimum((ud[:, 0] * len(_DISTRACTOR_TYPES)).astype(np.int64), len(_DISTRACTOR_TYPES) - 1),
        cx=ud[:, 1] * H, cy=ud[:, 2] * H, theta=ud[:, 3] * 2 * np.pi,
        a=ud[:, 4], b=ud[:, 5], c=ud[:, 6],  # shape-specific size parameters in [0, 1)
        colour=np.clip(_PALETTE[np.minimum((ud[:, 7] * len(_PALETTE)).astype(np.int64), len(_PALETTE) - 1)]
                       + cfg.colour_jitter * dz, 0.0, 1.0),
    )
    # band-limited noise, mostly luminance with a little chroma
    noise_c = u[:, o: o + 3 * g1 * g1].reshape(B, 3, g1, g1)
    noise_f = u[:, o + 3 * g1 * g1: o + nz].reshape(B, 3, g2, g2)
    noise_c = 0.7 * noise_c.mean(1, keepdims=True) + 0.3 * noise_c
    noise_f = 0.7 * noise_f.mean(1, keepdims=True) + 0.3 * noise_f
    o += nz
    # extra objects: smaller, other classes, boxes disjoint from all others (2 px margin), 20 placement tries
    if E > 0:
        ue = u[:, o:]
        n_ex = np.minimum((ue[:, 0] * (E + 1)).astype(np.int64), E)
        extras: list[tuple] = []
        for b in np.flatnonzero(n_ex):
            placed = [(cx[b], cy[b], R[b])]
            for j in range(int(n_ex[b])):
                v = ue[b, 1 + 50 * j: 1 + 50 * (j + 1)]
                ecls = min(int(v[0] * (cfg.num_classes - 1)), cfg.num_classes - 2)
                ecls += ecls >= cls[b]
                esize = size[b] * (0.5 + 0.35 * v[1])
                eR = esize * H / 2
                for t in range(20):
                    ex = eR + (H - 2 * eR) * v[10 + 2 * t]
                    ey = eR + (H - 2 * eR) * v[11 + 2 * t]
                    if all(abs(ex - px) > eR + pR + 2 or abs(ey - py) > eR + pR + 2 for px, py, pR in placed):
                        placed.append((ex, ey, eR))
                        extras.append((b, j + 1, ecls, esize, ex, ey, v[2] * 2 * np.pi, v[3], v[4:8]))
                        break
        if extras:
            eb = np.array([e[0] for e in extras])
            ex_cx, ex_cy = np.array([e[4] for e in extras]), np.array([e[5] for e in extras])
            ecol = _pick_colours(cfg, bg_at(eb, ex_cx, ex_cy), np.array([e[7] for e in extras]),
                                 _normals(np.stack([e[8] for e in extras]))[:, :3])
            add = dict(b=eb, k=np.array([e[1] for e in extras]), cls=np.array([e[2] for e in extras]),
                       size=np.array([e[3] for e in extras]), cx=ex_cx, cy=ex_cy,
                       theta=np.array([e[6] for e in extras]), colour=ecol)
            obj = {key: np.concatenate([obj[key], add[key]]) for key in obj}
    return dict(c0=c0, c1=c1, grad_angle=ang, noise_c=noise_c, noise_f=noise_f, obj=obj, dist=dist, B=B)


# ----------------------------------------------------------------------------------------------------------
# vectorised rendering
# ----------------------------------------------------------------------------------------------------------

def _windows(cx: torch.Tensor, cy: torch.Tensor, theta: torch.Tensor, S: int, H: int):
    """Window origins (n,), flat pixel indices (n, S*S) and rotated local coordinates (n, S, S) in pixels."""
    ox = (torch.round(cx).long() - S // 2).clamp(0, H - S)
    oy = (torch.round(cy).long() - S // 2).clamp(0, H - S)
    j = torch.arange(S)
    xs = ox[:, None] + j[None]  # (n, S)
    ys = oy[:, None] + j[None]
    idx = (ys[:, :, None] * H + xs[:, None, :]).reshape(len(cx), S * S)
    dx = (xs.float() + 0.5 - cx[:, None])[:, None, :]  # (n, 1, S)
    dy = (ys.float() + 0.5 - cy[:, None])[:, :, None]  # (n, S, 1)
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    qx = c * dx + s * dy
    qy = -s * dx + c * dy
    return idx, qx, qy


def _regular_polygon(qx: torch.Tensor, qy: torch.Tensor, n: int, rc: float) -> torch.Tensor:
    r = torch.sqrt(qx * qx + qy * qy)
    phi = torch.atan2(qy, qx)
    sector = 2 * math.pi / n
    local = torch.remainder(phi + sector / 2 - math.pi / 2, sector) - sector / 2  # edge normals off the vertex
    return r * torch.cos(local) <= rc * math.cos(math.pi / n)


def _shape_inside(name: str, qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
    """Inside test of a class shape in unit coordinates (the shape fits in the unit disk)."""
    ax, ay = qx.abs(), qy.abs()
    if name == "disk":
        return qx * qx + qy * qy <= 0.9**2
    if name == "square":
        return torch.maximum(ax, ay) <= 0.66
    if name == "triangle":
        return _regular_polygon(qx, qy, 3, 0.97)
    if name == "cross":
        return ((ax <= 0.24) & (ay <= 0.92)) | ((ay <= 0.24) & (ax <= 0.92))
    if name == "ring":
        r2 = qx * qx + qy * qy
        return (r2 <= 0.92**2) & (r2 >= 0.52**2)
    if name == "star":
        r = torch.sqrt(qx * qx + qy * qy)
        phi = torch.atan2(qy, qx)
        sector = 2 * math.pi / 5
        local = (torch.remainder(phi - math.pi / 2, sector) - sector / 2).abs() / (sector / 2)  # 0 at gaps
        return r <= 0.42 + 0.55 * local  # tips where local == 1
    if name == "diamond":
        return ax / 0.95 + ay / 0.5 <= 1.0
    if name == "lshape":
        return (((qx >= -0.65) & (qx <= -0.2) & (ay <= 0.7))
                | ((qy >= 0.25) & (qy <= 0.7) & (ax <= 0.65)))
    if name == "barpair":
        return (ax <= 0.75) & ((qy - 0.42).abs() <= 0.17) | (ax <= 0.75) & ((qy + 0.42).abs() <= 0.17)
    if name == "crescent":
        return (qx * qx + qy * qy <= 0.92**2) & ((qx - 0.42) ** 2 + qy * qy > 0.72**2)
    if name == "hexagon":
        return _regular_polygon(qx, qy, 6, 0.93)
    if name == "frame":
        m = torch.maximum(ax, ay)
        return (m <= 0.67) & (m >= 0.4)
    raise KeyError(name)


def _distractor_inside(t: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                       c: torch.Tensor, s: float) -> torch.Tensor:
    """Inside tests of distractors (pixel units): stroke, dot, arc, blob; parameters a, b, c in [0, 1)."""
    a, b, c = a[:, None, None], b[:, None, None], c[:, None, None]
    t = t[:, None, None]
    ax = qx.abs()
    r = torch.sqrt(qx * qx + qy * qy)
    # stroke: segment of length 5..12 px, width 1..1.8 px
    half = s * (2.5 + 3.5 * a)
    w = s * (0.5 + 0.4 * b)
    stroke = (ax - half).clamp(min=0) ** 2 + qy * qy <= w * w
    # dot: radius 1..2.2 px
    dot = r <= s * (1.0 + 1.2 * a)
    # arc: radius 3..5.5 px, half-width 0.5..0.9 px, angular span 60..216 degrees
    ra = s * (3.0 + 2.5 * a)
    span = math.pi / 3 + 0.6 * math.pi * c
    arc = ((r - ra).abs() <= s * (0.5 + 0.4 * b)) & (torch.atan2(qy, qx).abs() <= span / 2)
    # blob: irregular ellipse, semi-axes 2..4 px
    ea = s * (2.0 + 2.0 * a)
    eb = ea * (0.45 + 0.55 * b)
    phi = torch.atan2(qy, qx)
    wobble = 1.0 + 0.2 * torch.sin(3 * phi + 6.283 * c)
    blob = (qx / ea) ** 2 + (qy / eb) ** 2 <= wobble * wobble
    return torch.where(t == 0, stroke, torch.where(t == 1, dot, torch.where(t == 2, arc, blob)))


@functools.lru_cache(maxsize=16)
def _upsample_matrix(n: int, size: int, mode: str) -> torch.Tensor:
    """(size, n) matrix U with U @ x == 1-D interpolation of x (length n) to ``size`` samples."""
    eye = torch.eye(n, dtype=torch.float32)[:, None, :]  # n signals of length n
    mode1 = "linear" if mode == "bilinear" else mode
    if mode1 == "bicubic":  # no 1-D bicubic in torch: use the 2-D one on a (1, n) strip
        up = F.interpolate(eye[:, :, None, :].expand(-1, -1, 1, -1), size=(1, size), mode="bicubic",
                           align_corners=False)[:, 0, 0]
    else:
        up = F.interpolate(eye, size=size, mode=mode1, align_corners=False)[:, 0]
    return up.T.contiguous()


def _render(cfg: SyntheticConfig, params: dict[str, Any]) -> dict[str, Any]:
    H = cfg.image_size
    B = params["B"]
    HW = H * H
    f32 = torch.float32
    # background: gradient + band-limited noise texture (two octaves)
    yy = torch.arange(H, dtype=f32)[:, None] + 0.5 - H / 2
    xx = torch.arange(H, dtype=f32)[None, :] + 0.5 - H / 2
    ang = torch.tensor(params["grad_angle"], dtype=f32)
    t = (xx[None] * (torch.cos(ang) / H)[:, None, None] + yy[None] * (torch.sin(ang) / H)[:, None, None])
    t = (t + 0.5).clamp_(0, 1)[:, None]  # (B,1,H,W)
    c0 = torch.tensor(params["c0"], dtype=f32)[:, :, None, None]
    c1 = torch.tensor(params["c1"], dtype=f32)[:, :, None, None]
    nc = torch.tensor(params["noise_c"], dtype=f32)
    nf = torch.tensor(params["noise_f"], dtype=f32)
    # two octaves: the coarse noise is first interpolated (bicubic) onto the fine grid, the sum then (bilinear)
    # onto the image, as separable matrix products. Interpolation rows sum to 1, so the affine map
    # 2 * (0.6 * coarse + 0.4 * fine - 0.5) in [-1, 1], scaled by the texture amplitude, is applied on the grid.
    g2 = nf.shape[-1]
    uc, uf = _upsample_matrix(nc.shape[-1], g2, "bicubic"), _upsample_matrix(g2, H, "bilinear")
    grid = (uc @ nc @ uc.T).mul_(1.2).add_(nf, alpha=0.8).sub_(1.0).mul_(cfg.texture)
    noise = uf @ grid @ uf.T  # (B, 3, H, W), texture-scaled
    bg = torch.addcmul(c0, c1 - c0, t)  # (B, 3, H, W)

    # objects (primary first, then extras): inside tests in a window around each, grouped by class
    po = params["obj"]
    n = len(po["b"])
    ob = torch.from_numpy(po["b"])
    ok_ = torch.from_numpy(po["k"])
    ocls = torch.from_numpy(po["cls"])
    geo = torch.tensor(np.stack([po["size"] * H / 2, po["cx"], po["cy"], po["theta"]], 1), dtype=f32)
    ocol = torch.tensor(po["colour"], dtype=f32)
    S = min(H, int(math.ceil(_size_cap(cfg) * H)) + 2)
    oidx, qx, qy = _windows(geo[:, 1], geo[:, 2], geo[:, 3], S, H)
    inv_r = (1.0 / geo[:, 0])[:, None, None]
    qx, qy = qx * inv_r, qy * inv_r
    omask = torch.zeros(n, S, S, dtype=torch.bool)
    for c in torch.unique(ocls).tolist():
        sel = (ocls == c).nonzero().squeeze(1)
        omask[sel] = _shape_inside(SHAPES[c], qx[sel], qy[sel])
    # tight boxes (xyxy, pixel edges: pixel i spans [i, i+1)) from the window masks
    ox = (oidx[:, 0] % H)
    oy = (oidx[:, 0] // H)
    ar = torch.arange(S)
    cols, rows = omask.any(1), omask.any(2)
    x0 = torch.where(cols, ar, S).min(1).values + ox
    x1 = torch.where(cols, ar, -1).max(1).values + 1 + ox
    y0 = torch.where(rows, ar, S).min(1).values + oy
    y1 = torch.where(rows, ar, -1).max(1).values + 1 + oy
    all_boxes_t = torch.stack([x0, y0, x1, y1], 1).float()
    omask_f = omask.reshape(n, S * S)
    # compositing by layer ids: 0 background, 1..K distractors, then extra objects, the labelled object on top.
    # Each pixel takes the colour of its highest layer (one scatter-amax for all layers).
    K = cfg.clutter
    M = int(ok_.max())
    layer = K + 1 + M - ok_  # (n,): primary (k = 0) highest
    ids = torch.zeros(B * HW, dtype=torch.int64)
    table = torch.zeros(B, 3, K + M + 2, dtype=f32)
    table[ob, :, layer] = ocol
    if K:
        # distractors (inside tests in a small window each)
        def dcat(key: str) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(params["dist"][key])).reshape(B * K, -1).squeeze(1)

        dgeo = torch.stack([dcat("cx"), dcat("cy"), dcat("theta"), dcat("a"), dcat("b"), dcat("c")]).to(f32)
        Sd = min(H, int(math.ceil(0.2 * H)) + 2)
        didx, dqx, dqy = _windows(dgeo[0], dgeo[1], dgeo[2], Sd, H)
        dm = _distractor_inside(dcat("type"), dqx, dqy, dgeo[3], dgeo[4], dgeo[5], H / 64.0)
        db = torch.arange(B).repeat_interleave(K)
        dlayer = torch.arange(1, K + 1).repeat(B)
        vals = torch.where(dm.reshape(B * K, Sd * Sd), dlayer[:, None], 0)
        ids.scatter_reduce_(0, (db[:, None] * HW + didx).reshape(-1), vals.reshape(-1), reduce="amax")
        table[:, :, 1: K + 1] = dcat("colour").to(f32).reshape(B, K, 3).transpose(1, 2)
    vals = torch.where(omask_f, layer[:, None], 0)
    ids.scatter_reduce_(0, (ob[:, None] * HW + oidx).reshape(-1), vals.reshape(-1), reduce="amax")
    if K:
        # keep distractors at least 2 px away from every object: object masks dilated by 2 px (in windows
        # padded by 2) mark a keep-out zone where distractor pixels revert to background
        dil = F.pad(omask, (4, 4, 4, 4))  # (n, S+8, S+8) bool; separable 5x5 dilation by shifted ORs
        dil = dil[:, :, 0:-4] | dil[:, :, 1:-3] | dil[:, :, 2:-2] | dil[:, :, 3:-1] | dil[:, :, 4:]
        dil = dil[:, 0:-4] | dil[:, 1:-3] | dil[:, 2:-2] | dil[:, 3:-1] | dil[:, 4:]  # (n, S+4, S+4)
        jj = torch.arange(-2, S + 2)
        gx = ox[:, None] + jj[None]
        gy = oy[:, None] + jj[None]
        valid = dil & ((gx >= 0) & (gx < H))[:, None, :] & ((gy >= 0) & (gy < H))[:, :, None]
        flat = ob[:, None, None] * HW + gy.clamp(0, H - 1)[:, :, None] * H + gx.clamp(0, H - 1)[:, None, :]
        keep_out = torch.zeros(B * HW, dtype=torch.bool)
        keep_out.scatter_(0, flat[valid], True)
        ids = torch.where(keep_out & (ids <= K), 0, ids)
    ids = ids.reshape(B, 1, HW)
    primary = ok_ == 0
    masks = (ids[:, 0] == K + 1 + M).reshape(B, H, H)
    fg = ids > 0
    colour = torch.gather(table, 2, ids.expand(B, 3, HW))
    base = torch.where(fg, colour, bg.reshape(B, 3, HW))
    if cfg.pattern > 0:
        # class-specific stripes on the labelled object: orientation (c % 4) * 45 degrees, period 3/5/7 px by
        # c // 4; added to the fill colour, so every object patch carries local evidence of its class
        stripes = class_pattern(cfg, ocls[primary]).reshape(B, 1, HW)
        base = torch.where(masks.reshape(B, 1, HW), base + 0.5 * cfg.pattern * stripes, base)
    factor = torch.where(fg, 0.5, 1.0)
    images = base.addcmul_(factor, noise.reshape(B, 3, HW)).clamp_(0, 1).reshape(B, 3, H, H)
    all_boxes = [all_boxes_t[ob == b] for b in range(B)] if n > B else list(all_boxes_t[:, None])
    all_labels = [ocls[ob == b] for b in range(B)] if n > B else list(ocls[:, None])
    # instance masks of every object: its own layer id (objects are disjoint with a 2 px margin, so exact)
    obj_masks = ids.reshape(B, H, H)[ob] == layer[:, None, None]  # (n, H, W)
    all_masks = [obj_masks[ob == b] for b in range(B)] if n > B else list(obj_masks[:, None])
    return dict(images=images, masks=masks, all_boxes=all_boxes, all_labels=all_labels, all_masks=all_masks,
                boxes=all_boxes_t[primary], obj_colours=ocol[primary])


def class_pattern(cfg: SyntheticConfig, classes: torch.Tensor) -> torch.Tensor:
    """(B, H, W) the class-specific stripe field in [-1, 1] (before the ``0.5 * pattern`` amplitude) that the
    renderer adds to the labelled object of class ``classes[b]``; see :data:`PATTERN_STYLES`."""
    H = cfg.image_size
    f32 = torch.float32
    pc = torch.as_tensor(classes).to(f32)
    yy = torch.arange(H, dtype=f32)[:, None] + 0.5 - H / 2
    xx = torch.arange(H, dtype=f32)[None, :] + 0.5 - H / 2
    if cfg.pattern_style == "flip_invariant":
        # 0 / 90 degrees with exact 1 / 0 direction cosines, phase centred on the image (cos is even in x):
        # a horizontal flip maps every class's field onto itself
        vertical = (pc % 2 == 1).to(f32)
        period = 3.0 + 2.0 * torch.div(pc, 2, rounding_mode="floor")
        phase = ((xx[None] * (1.0 - vertical)[:, None, None] + yy[None] * vertical[:, None, None])
                 / period[:, None, None])
        return torch.cos(2 * math.pi * phase)
    th = (pc % 4) * (math.pi / 4)
    period = 3.0 + 2.0 * torch.div(pc, 4, rounding_mode="floor")
    px, py = (xx + H / 2).expand(H, H)[None], (yy + H / 2).expand(H, H)[None]
    phase = (px * torch.cos(th)[:, None, None] + py * torch.sin(th)[:, None, None]) / period[:, None, None]
    return torch.cos(2 * math.pi * phase)


def _describe(cfg: SyntheticConfig, sizes: torch.Tensor, classes: torch.Tensor, boxes: torch.Tensor,
              colours: torch.Tensor) -> list[dict[str, str]]:
    """Caption attributes of the labelled objects: shape, colour word, size word, position words."""
    H = cfg.image_size
    span = cfg.max_size - cfg.min_size
    rel = (sizes - cfg.min_size) / span if span > 0 else torch.full_like(sizes, 0.5)
    size_i = (rel >= 1 / 3).long() + (rel >= 2 / 3).long()
    col_i = torch.cdist(colours.double(), torch.from_numpy(_PALETTE)).argmin(1)
    cx = ((boxes[:, 0] + boxes[:, 2]) / (2 * H) * 3).long().clamp(0, 2)
    cy = ((boxes[:, 1] + boxes[:, 3]) / (2 * H) * 3).long().clamp(0, 2)
    words = ("small", "medium", "large")
    return [dict(shape=SHAPES[c], colour=_COLOUR_NAMES[k], size=words[s], position=_POSITIONS[(x, y)])
            for c, k, s, x, y in zip(classes.tolist(), col_i.tolist(), size_i.tolist(), cx.tolist(), cy.tolist())]


def generate_batch(cfg: SyntheticConfig, indices, split: str = "train", seed: int | None = None) -> dict[str, Any]:
    """Render samples ``indices`` of ``split``: ``images`` (B,3,H,W) float in [0, 1] (not normalised), ``labels``
    (B,), ``boxes`` (B,4) tight xyxy box of the labelled object, ``masks`` (B,H,W) bool, ``captions`` list,
    ``attributes`` list of dicts, and ``all_boxes`` / ``all_labels`` / ``all_masks`` ((n_b, H, W) bool instance masks)
    of every object of each image (labelled object first).
    """
    split_id = SPLITS[_check_split(split)]
    seed = cfg.seed if seed is None else int(seed)
    idx = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
    if not idx:
        raise ValueError("generate_batch needs at least one index")
    # sample and render in chunks to bound memory (results do not depend on chunking)
    chunks = [_sample_batch(cfg, split_id, seed, idx[c: c + _CHUNK]) for c in range(0, len(idx), _CHUNK)]
    parts = [_render(cfg, p) for p in chunks]
    out = parts[0] if len(parts) == 1 else {
        k: (torch.cat([p[k] for p in parts]) if isinstance(parts[0][k], torch.Tensor)
            else [v for p in parts for v in p[k]]) for k in parts[0]}
    boxes = out["boxes"]
    labels = torch.from_numpy(np.concatenate([p["obj"]["cls"][: p["B"]] for p in chunks])).long()
    sizes = torch.from_numpy(np.concatenate([p["obj"]["size"][: p["B"]] for p in chunks]))
    attrs = _describe(cfg, sizes, labels, boxes, out["obj_colours"])
    captions = [f"a {a['size']} {a['colour']} {a['shape']} {a['position']}" for a in attrs]
    return dict(
        images=out["images"],
        labels=labels,
        boxes=boxes,
        masks=out["masks"],
        captions=captions,
        attributes=attrs,
        all_boxes=out["all_boxes"],
        all_labels=out["all_labels"],
        all_masks=out["all_masks"],
        indices=idx,
    )


class SyntheticDataset(torch.utils.data.Dataset):
    """A split of the synthetic benchmark. ``ds[i]`` is a sample dict (see docs/ARCHITECTURE.md "Data samples");
    ``ds[[i, j, ...]]`` and ``ds.batch(indices)`` return the collated batch (fast path for loaders)."""

    def __init__(self, cfg: SyntheticConfig | None = None, split: str = "train", size: int | None = None,
                 seed: int | None = None) -> None:
        self.cfg = cfg or SyntheticConfig()
        self.split = _check_split(split)
        self.size = self.cfg.split_size(split) if size is None else int(size)
        self.seed = self.cfg.seed if seed is None else int(seed)
        self.mean = self.cfg.mean
        self.std = self.cfg.std
        self.classes = self.cfg.classes
        self.num_classes = len(self.classes)
        self._mean_t = torch.tensor(self.mean).view(1, 3, 1, 1)
        self._std_t = torch.tensor(self.std).view(1, 3, 1, 1)

    @property
    def num_images(self) -> int:
        return self.size

    def __len__(self) -> int:
        return self.size

    def _check(self, idx: list[int]) -> list[int]:
        out = []
        for i in idx:
            j = i + self.size if i < 0 else i
            if not 0 <= j < self.size:
                raise IndexError(f"index {i} out of range for synthetic {self.split} split of size {self.size}")
            out.append(j)
        return out

    def generate_batch(self, indices) -> dict[str, Any]:
        """Un-normalised batch (images in [0, 1]); see :func:`generate_batch`."""
        return generate_batch(self.cfg, self._check(list(indices)), self.split, self.seed)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self._mean_t.to(images)) / self._std_t.to(images)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        return images * self._std_t.to(images) + self._mean_t.to(images)

    def batch(self, indices) -> dict[str, Any]:
        """Collated, normalised batch: ``image`` (B,3,H,W), ``label`` (B,), ``mask`` (B,H,W), ``boxes``,
        ``caption``, ``id``, ``box_labels`` (class of every box, labelled object first) as lists."""
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        g = self.generate_batch(indices)
        return dict(
            image=self.normalize(g["images"]),
            label=g["labels"],
            mask=g["masks"],
            boxes=g["all_boxes"],
            caption=g["captions"],
            id=[f"{self.split}_{i:06d}" for i in g["indices"]],
            box_labels=[lb.tolist() for lb in g["all_labels"]],
        )

    def __getitem__(self, index):
        if isinstance(index, (list, tuple, torch.Tensor, np.ndarray)):
            return self.batch(list(np.asarray(index).reshape(-1).tolist()))
        b = self.batch([int(index)])
        return dict(image=b["image"][0], label=int(b["label"][0]), boxes=b["boxes"][0], mask=b["mask"][0],
                    caption=b["caption"][0], id=b["id"][0], box_labels=b["box_labels"][0])


# ----------------------------------------------------------------------------------------------------------
# writing an ImageFolder tree that the real-data readers read
# ----------------------------------------------------------------------------------------------------------

def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, data)


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _xml_annotation(folder: str, filename: str, w: int, h: int, objects: list[tuple[str, list[int]]]) -> str:
    lines = ["<annotation>", f"  <folder>{folder}</folder>", f"  <filename>{filename}</filename>",
             f"  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>"]
    for name, (x0, y0, x1, y1) in objects:
        lines += ["  <object>", f"    <name>{name}</name>", "    <bndbox>", f"      <xmin>{x0}</xmin>",
                  f"      <ymin>{y0}</ymin>", f"      <xmax>{x1}</xmax>", f"      <ymax>{y1}</ymax>",
                  "    </bndbox>", "  </object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def write_imagefolder(dataset: SyntheticDataset, root: str | os.PathLike, *, split_name: str | None = None,
                      batch_size: int = 256) -> Path:
    """Write ``dataset`` as an ImageFolder tree readable by ``build_eval_dataset("synthetic"|"imagenet"|...)``:

    ``root/<split>/<class>/<id>.png``, ``root/Annotations/<split>/<id>.xml`` (ILSVRC-style, box = pixel-edge xyxy,
    labelled object first), ``root/Masks/<split>/<id>.png`` (0/255), ``root/Segmentation/<split>/<class>/<id>.png``
    (class map of the labelled object: 0 background, c + 1 class c; the ``seg`` reader's layout),
    ``root/captions.csv`` (path,caption; merged with rows of other splits already there), ``root/classes.txt`` and
    ``root/seg_classes.txt`` (``background`` then the classes). Every file is written atomically.
    """
    root = Path(root)
    split = split_name or dataset.split
    classes = dataset.classes
    rows: list[tuple[str, str]] = []
    H = dataset.cfg.image_size
    for start in range(0, len(dataset), batch_size):
        g = dataset.generate_batch(range(start, min(start + batch_size, len(dataset))))
        imgs = (g["images"].permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        masks = g["masks"].numpy().astype(np.uint8) * 255
        for j, i in enumerate(g["indices"]):
            sid = f"{split}_{i:06d}"
            cname = classes[int(g["labels"][j])]
            rel = f"{split}/{cname}/{sid}.png"
            _atomic_write_bytes(root / rel, _png_bytes(imgs[j]))
            _atomic_write_bytes(root / "Masks" / split / f"{sid}.png", _png_bytes(masks[j]))
            seg = (masks[j] > 0).astype(np.uint8) * np.uint8(int(g["labels"][j]) + 1)
            _atomic_write_bytes(root / "Segmentation" / rel, _png_bytes(seg))
            objs = [(classes[int(c)], [int(v) for v in b.tolist()])
                    for c, b in zip(g["all_labels"][j], g["all_boxes"][j])]
            xml = _xml_annotation(split, f"{sid}.png", H, H, objs)
            _atomic_write_bytes(root / "Annotations" / split / f"{sid}.xml", xml.encode())
            rows.append((rel, g["captions"][j]))
    _atomic_write_bytes(root / "classes.txt", ("\n".join(classes) + "\n").encode())
    _atomic_write_bytes(root / "seg_classes.txt", ("\n".join(["background", *classes]) + "\n").encode())
    cap_path = root / "captions.csv"
    old: list[tuple[str, str]] = []
    if cap_path.exists():
        with open(cap_path, newline="") as f:
            old = [(r["path"], r["caption"]) for r in csv.DictReader(f) if not r["path"].startswith(f"{split}/")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "caption"])
    w.writerows(old + rows)
    _atomic_write_bytes(cap_path, buf.getvalue().encode())
    return root
