"""DINO's multi-crop augmentation (Caron et al., 2021; facebookresearch/dino ``DataAugmentationDINO``).

Two global crops and ``n_local`` local crops of every image. The defaults are the official recipe:
RandomResizedCrop (global scale (0.4, 1), local (0.05, 0.4), aspect ratio (3/4, 4/3)), horizontal flip p 0.5,
colour jitter p 0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1), greyscale p 0.2, Gaussian blur with
sigma in [0.1, 2.0] px at 224 px with p 1.0 / 0.1 / 0.5 (global 1 / global 2 / local; kernel 23 px at 224 px in the
PIL version), solarisation p 0.2 on the second global crop only. Every one of them is a keyword (a ``crops.*`` key of
a DINO recipe, docs/dino.md); an augmentation whose probability is 0 leaves the crop unchanged.

:class:`BatchMultiCrop` runs on a batch of un-normalised tensors (the synthetic benchmark, in memory) as batched
tensor ops; ``keep_object=True`` then draws every crop so that it overlaps the object's box by at least half of the
smaller of the two sides on each axis (the synthetic data carries boxes). :class:`MultiCropTransform` is the same
recipe as torchvision transforms on one PIL image (image folders). Differences of the tensor version: bilinear
``grid_sample`` (no antialiasing) instead of bicubic resizing, a YIQ rotation for the hue shift, blur sigmas scaled by
``size / 224`` with a 3-sigma kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from lastvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["AUG_DEFAULTS", "BatchMultiCrop", "MultiCropTransform", "collate_crops"]

#: DINO's official augmentation settings (the ``crops`` keys of a DINO recipe besides sizes, scales and counts)
AUG_DEFAULTS: dict[str, Any] = {
    "flip": True,  # horizontal flip, p 0.5
    "jitter_p": 0.8,  # probability of the colour jitter
    "brightness": 0.4,  # factor in [1 - b, 1 + b]
    "contrast": 0.4,
    "saturation": 0.2,
    "hue": 0.1,  # shift in [-h, h] turns (h <= 0.5)
    "gray_p": 0.2,
    "blur_p": [1.0, 0.1, 0.5],  # global 1, global 2, local
    "blur_sigma": [0.1, 2.0],  # px at 224 px
    "solarize_p": 0.2,  # second global crop only
    "keep_object": False,  # tensor version: every crop overlaps the object box (needs boxes)
}


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, (B, 1, H, W), as torchvision's rgb_to_grayscale."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _bern(n: int, p: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def _hue_rotate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma of RGB images by ``shift`` turns (YIQ rotation; a close, batched stand-in for HSV hue)."""
    rgb2yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq2rgb = torch.linalg.inv(rgb2yiq)
    y = torch.einsum("ij,bjhw->bihw", rgb2yiq, x)
    a = 2 * math.pi * shift.to(x)
    c, s = torch.cos(a)[:, None, None], torch.sin(a)[:, None, None]
    i, q = y[:, 1], y[:, 2]
    y = torch.stack([y[:, 0], c * i - s * q, s * i + c * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", yiq2rgb, y)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur (reflect padding), sigma in pixels, shape (B,)."""
    b, c, h, w = x.shape
    radius = int(min(math.ceil(3 * float(sigma.max())), (min(h, w) - 1) // 2))
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.to(x)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 2r+1)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    return y.reshape(b, c, h, w)


def _check(opts: dict[str, Any]) -> dict[str, Any]:
    unknown = set(opts) - set(AUG_DEFAULTS)
    if unknown:
        raise ValueError(f"multi-crop: unknown options {sorted(unknown)}; known: {sorted(AUG_DEFAULTS)}")
    o = {**AUG_DEFAULTS, **opts}
    for k in ("jitter_p", "gray_p", "solarize_p"):
        if not 0.0 <= float(o[k]) <= 1.0:
            raise ValueError(f"multi-crop: {k} must be in [0, 1], got {o[k]}")
    if len(o["blur_p"]) != 3 or not all(0.0 <= float(p) <= 1.0 for p in o["blur_p"]):
        raise ValueError(f"multi-crop: blur_p must be 3 probabilities (global 1, global 2, local), got {o['blur_p']}")
    lo, hi = (float(v) for v in o["blur_sigma"])
    if not 0 < lo <= hi:
        raise ValueError(f"multi-crop: blur_sigma must satisfy 0 < lo <= hi, got {o['blur_sigma']}")
    for k in ("brightness", "contrast", "saturation"):
        if not 0.0 <= float(o[k]) < 1.0:
            raise ValueError(f"multi-crop: {k} must be in [0, 1), got {o[k]}")
    if not 0.0 <= float(o["hue"]) <= 0.5:
        raise ValueError(f"multi-crop: hue must be in [0, 0.5], got {o['hue']}")
    return o


class BatchMultiCrop:
    """DINO's multi-crop augmentation on a batch of un-normalised images ``(B, 3, H, W)`` in [0, 1].

    Returns ``[global_1, global_2, local_1, ...]``, each ``(B, 3, size, size)`` normalised with ``mean``/``std``.
    Random-resized crops (area fraction ``scale``, aspect ratio in [3/4, 4/3], box clipped to the image) and flips
    are one bilinear ``grid_sample``; jitter, greyscale, blur and solarisation are per-sample tensor ops. ``aug``:
    the options of :data:`AUG_DEFAULTS` (official DINO values by default).
    """

    def __init__(
        self,
        global_size: int = 64,
        local_size: int = 32,
        n_local: int = 6,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        **aug: Any,
    ) -> None:
        self.global_size, self.local_size, self.n_local = int(global_size), int(local_size), int(n_local)
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.aug = _check(aug)

    @property
    def ncrops(self) -> int:
        return 2 + self.n_local

    def resized_crop(
        self, x: torch.Tensor, size: int, scale: Sequence[float], g: torch.Generator | None = None,
        boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Random-resized crop + horizontal flip (p 0.5 when ``flip``) of every image, ``(B, 3, size, size)``.

        ``boxes`` (B, 4) xyxy in pixels: each crop overlaps its box by at least half of the smaller side (crop or
        box) on each axis."""
        b, _, h, w = x.shape
        area = _uniform(b, scale[0], scale[1], g)
        logr = _uniform(b, math.log(3 / 4), math.log(4 / 3), g)
        ratio = torch.exp(logr) * h / w  # aspect ratio in pixels -> in relative units
        cw = torch.sqrt(area * ratio).clamp(max=1.0)
        ch = torch.sqrt(area / ratio).clamp(max=1.0)
        ux, uy = torch.rand(b, generator=g), torch.rand(b, generator=g)
        if boxes is None:
            cx = (1 - cw) * ux + cw / 2
            cy = (1 - ch) * uy + ch / 2
        else:
            bx = boxes.to(torch.float32)
            cx = _centre_overlapping(ux, cw, bx[:, 0] / w, bx[:, 2] / w)
            cy = _centre_overlapping(uy, ch, bx[:, 1] / h, bx[:, 3] / h)
        flip_draw = _bern(b, 0.5, g)
        flip = torch.where(flip_draw & bool(self.aug["flip"]), -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = cw * flip
        theta[:, 0, 2] = 2 * cx - 1
        theta[:, 1, 1] = ch
        theta[:, 1, 2] = 2 * cy - 1
        grid = F.affine_grid(theta.to(x), [b, 3, size, size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def photometric(
        self, x: torch.Tensor, blur_p: float, solarize_p: float, g: torch.Generator | None = None
    ) -> torch.Tensor:
        """Colour jitter (``jitter_p``), greyscale (``gray_p``), blur (``blur_p``), solarise (``solarize_p``),
        normalise. The random draws are the same whatever the probabilities, so turning one augmentation off
        changes nothing else."""
        a = self.aug
        b = x.shape[0]
        jit = _bern(b, float(a["jitter_p"]), g)[:, None, None, None]
        br, co, sa, hu = (float(a[k]) for k in ("brightness", "contrast", "saturation", "hue"))
        y = (x * _uniform(b, 1 - br, 1 + br, g)[:, None, None, None]).clamp(0, 1)  # brightness
        m = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
        y = ((y - m) * _uniform(b, 1 - co, 1 + co, g)[:, None, None, None] + m).clamp(0, 1)  # contrast
        gr = _gray(y)
        y = ((y - gr) * _uniform(b, 1 - sa, 1 + sa, g)[:, None, None, None] + gr).clamp(0, 1)  # saturation
        y = _hue_rotate(y, _uniform(b, -hu, hu, g)).clamp(0, 1)  # hue
        x = torch.where(jit, y, x)
        x = torch.where(_bern(b, float(a["gray_p"]), g)[:, None, None, None], _gray(x).expand_as(x), x)
        lo, hi = (float(v) for v in a["blur_sigma"])
        sigma = _uniform(b, lo, hi, g) * x.shape[-1] / 224
        use_blur = _bern(b, blur_p, g)[:, None, None, None]
        if bool(use_blur.any()):
            x = torch.where(use_blur, _gaussian_blur(x, sigma), x)
        if solarize_p > 0:
            x = torch.where(_bern(b, solarize_p, g)[:, None, None, None], torch.where(x >= 0.5, 1 - x, x), x)
        return (x - self.mean.to(x)) / self.std.to(x)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None,
                 boxes: torch.Tensor | None = None) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"BatchMultiCrop expects images (B, 3, H, W), got {tuple(images.shape)}")
        if self.aug["keep_object"] and boxes is None:
            raise ValueError("BatchMultiCrop: keep_object needs the object boxes of the batch")
        boxes = boxes if self.aug["keep_object"] else None
        x = images.float()
        g = generator
        p1, p2, pl = (float(p) for p in self.aug["blur_p"])
        sol = float(self.aug["solarize_p"])
        crops = [
            self.photometric(self.resized_crop(x, self.global_size, self.global_scale, g, boxes), p1, 0.0, g),
            self.photometric(self.resized_crop(x, self.global_size, self.global_scale, g, boxes), p2, sol, g),
        ]
        for _ in range(self.n_local):
            crops.append(self.photometric(self.resized_crop(x, self.local_size, self.local_scale, g, boxes), pl,
                                          0.0, g))
        return crops


def _centre_overlapping(u: torch.Tensor, c: torch.Tensor, b0: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
    """Crop centres (relative units) uniform among those that keep the crop (side ``c``) inside the image and
    overlapping the box ``[b0, b1]`` by at least half of ``min(c, b1 - b0)``."""
    m = 0.5 * torch.minimum(c, (b1 - b0).clamp(min=0))
    lo = torch.maximum(c / 2, b0 - c / 2 + m)
    hi = torch.minimum(1 - c / 2, b1 + c / 2 - m)
    hi = torch.maximum(hi, lo)  # a box at the image edge: the extreme position still overlaps it
    return lo + (hi - lo) * u


class MultiCropTransform:
    """DINO's multi-crop as torchvision transforms on one PIL image (for image folders): a list of tensors.
    ``aug``: the options of :data:`AUG_DEFAULTS` except ``keep_object`` (image folders carry no boxes)."""

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_local: int = 10,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        **aug: Any,
    ) -> None:
        from torchvision import transforms as T

        a = _check(aug)
        if a["keep_object"]:
            raise ValueError("multi-crop: keep_object needs object boxes; image folders have none")
        flip_jitter = T.Compose([
            T.RandomHorizontalFlip(p=0.5 if a["flip"] else 0.0),
            T.RandomApply([T.ColorJitter(a["brightness"], a["contrast"], a["saturation"], a["hue"])],
                          p=float(a["jitter_p"])),
            T.RandomGrayscale(p=float(a["gray_p"])),
        ])
        norm = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
        bicubic = T.InterpolationMode.BICUBIC
        sigma = tuple(float(s) for s in a["blur_sigma"])

        def blur(p: float) -> T.RandomApply:
            return T.RandomApply([T.GaussianBlur(kernel_size=23, sigma=sigma)], p=float(p))

        p1, p2, pl = a["blur_p"]
        self.global1 = T.Compose([T.RandomResizedCrop(global_size, scale=tuple(global_scale),
                                                      interpolation=bicubic), flip_jitter, blur(p1), norm])
        self.global2 = T.Compose([T.RandomResizedCrop(global_size, scale=tuple(global_scale),
                                                      interpolation=bicubic), flip_jitter, blur(p2),
                                  T.RandomSolarize(128, p=float(a["solarize_p"])), norm])
        self.local = T.Compose([T.RandomResizedCrop(local_size, scale=tuple(local_scale), interpolation=bicubic),
                                flip_jitter, blur(pl), norm])
        self.n_local = int(n_local)

    def __call__(self, image: Any) -> list[torch.Tensor]:
        image = image.convert("RGB")
        return [self.global1(image), self.global2(image)] + [self.local(image) for _ in range(self.n_local)]


def collate_crops(samples: list[tuple[list[torch.Tensor], int]]) -> dict[str, Any]:
    """``[(crops, label), ...]`` -> ``{"crops": [stacked crop i], "label": (B,)}``."""
    n = len(samples[0][0])
    crops = [torch.stack([s[0][i] for s in samples]) for i in range(n)]
    return {"crops": crops, "label": torch.tensor([int(s[1]) for s in samples])}
