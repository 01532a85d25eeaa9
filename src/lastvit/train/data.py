"""DataModules for label-supervised training.

Every train loader walks a per-epoch permutation drawn from a generator seeded by ``(seed, epoch)``, and cuts it
into *global* micro-batches of ``world * per_device`` samples; rank ``r`` takes its slice of each. So the sample
order is the same on one process with the whole global batch and on ``world`` processes with slices of it, and
a run resumed from a mid-epoch checkpoint continues with exactly the batches it would have seen (the loaders
implement ``state_dict`` / ``load_state_dict``, which Lightning stores in its checkpoints). Validation splits the
val set ``rank::world`` (possibly unequal parts; metrics are reduced as sums, see ``ClassifyModule``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

__all__ = [
    "StepSampler",
    "cache_split",
    "TensorBatchSet",
    "BatchSetDataModule",
    "SyntheticDataModule",
    "ImageFolderDataModule",
]


def _epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + salt) % (2**63 - 1))
    return g


class StepSampler:
    """Deterministic, rank-aware, resumable sampler of per-device batches.

    ``train=True``: a seeded permutation per epoch, cut into global micro-batches (incomplete tail dropped);
    yields this rank's slice. ``train=False``: ``range(n)[rank::world]`` in order, in chunks of ``batch_size``.
    With ``keys=True`` it yields ``(indices, epoch)`` (for batch-level datasets), else index lists.
    """

    def __init__(self, n: int, batch_size: int, *, train: bool, rank: int = 0, world: int = 1, seed: int = 0,
                 keys: bool = False) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        if train and n < batch_size * world:
            raise ValueError(f"the training set has {n} samples, fewer than one global batch "
                             f"({world} x {batch_size})")
        self.n, self.batch_size, self.train = n, batch_size, train
        self.rank, self.world, self.seed, self.keys = rank, world, seed, keys
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already consumed)
        self.progress_fn: Callable[[], int] | None = None  # batches processed in the current epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.train:
            return self.n // (self.batch_size * self.world)
        return math.ceil(len(range(self.rank, self.n, self.world)) / self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        b, w = self.batch_size, self.world
        if self.train:
            perm = torch.randperm(self.n, generator=_epoch_generator(self.seed, self.epoch)).tolist()
            start = 0
            if self._resume is not None and self._resume[0] == self.epoch:
                start = self._resume[1]
            self._resume = None
            for m in range(start, len(self)):
                lo = m * b * w + self.rank * b
                idx = perm[lo:lo + b]
                yield (idx, self.epoch) if self.keys else idx
        else:
            own = list(range(self.rank, self.n, w))
            for i in range(0, len(own), b):
                idx = own[i:i + b]
                yield (idx, self.epoch) if self.keys else idx

    def state_dict(self) -> dict[str, int]:
        consumed = int(self.progress_fn()) if self.progress_fn is not None else 0
        return {"epoch": self.epoch, "consumed": consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["consumed"]))


class _ResumableLoader(DataLoader):
    """A DataLoader whose position (epoch, batches consumed) goes into Lightning checkpoints."""

    def __init__(self, *args: Any, step_sampler: StepSampler, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_sampler = step_sampler

    def state_dict(self) -> dict[str, int]:
        return self.step_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step_sampler.load_state_dict(state)


def cache_split(ds: Any, *, raw: bool = False, chunk: int = 512) -> dict[str, Any]:
    """The one in-memory cache of a synthetic split (every task uses it): the whole split rendered once, in chunks
    (the renderer's intermediates scale with the batch; each sample has its own generator, so the chunk size does
    not change the pixels).

    ``raw=False``: ``image`` normalised float (N, 3, H, W), ``label`` (N,), ``caption`` (list): label supervision
    and CLIP. ``raw=True``: ``image`` un-normalised uint8 (N, 3, H, W) in [0, 255], ``label``, ``box`` (N, 4) xyxy px
    of the labelled object: DINO, whose multi-crop augments raw pixels and keeps the object with its box.
    """
    images, labels, extra = [], [], []
    for s in range(0, len(ds), chunk):
        idx = list(range(s, min(s + chunk, len(ds))))
        if raw:
            g = ds.generate_batch(idx)
            images.append((g["images"].clamp(0, 1) * 255).round().to(torch.uint8))
            labels.append(torch.as_tensor(g["labels"], dtype=torch.long))
            extra.append(torch.as_tensor(g["boxes"], dtype=torch.float32).reshape(-1, 4))
        else:
            b = ds.batch(idx)
            images.append(b["image"])
            labels.append(torch.as_tensor(b["label"], dtype=torch.long))
            extra.extend(list(b["caption"]))
    out: dict[str, Any] = {"image": torch.cat(images), "label": torch.cat(labels)}
    if raw:
        out["box"] = torch.cat(extra)
    else:
        out["caption"] = extra
    return out


class TensorBatchSet:
    """In-memory images (N, 3, H, W, already normalised) and labels (N,), read a batch at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> None:
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"TensorBatchSet needs images (N,3,H,W) and labels (N,), got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        self.images, self.labels = images.float().contiguous(), labels.long()
        self.num_classes = int(num_classes if num_classes is not None else int(labels.max()) + 1)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"image": self.images[idx], "label": self.labels[idx]}


class _BatchView(torch.utils.data.Dataset):
    """Adapts a batch-level set (``batch(indices)``) to a DataLoader fed ``(indices, epoch)`` keys; applies a
    horizontal flip to a per-(epoch, sample) seeded half of the training images."""

    def __init__(self, source: Any, flip: bool, seed: int) -> None:
        self.source, self.flip, self.seed = source, flip, seed
        self._flips: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.source)

    def _flip_mask(self, epoch: int) -> torch.Tensor:
        if self._flips is None or self._flips[0] != epoch:
            g = _epoch_generator(self.seed, epoch, salt=1)
            self._flips = (epoch, torch.randint(0, 2, (len(self.source),), generator=g).bool())
        return self._flips[1]

    def __getitem__(self, key: tuple[list[int], int]) -> dict[str, torch.Tensor]:
        indices, epoch = key
        out = self.source.batch(indices)
        image, label = out["image"], torch.as_tensor(out["label"]).long()
        if self.flip:
            m = self._flip_mask(epoch)[torch.as_tensor(indices)]
            if m.any():
                image = image.clone()
                image[m] = image[m].flip(-1)
        return {"image": image, "label": label}


def _rank_world(dm: L.LightningDataModule) -> tuple[int, int]:
    t = dm.trainer
    if t is None:
        return 0, 1
    return t.global_rank, t.world_size


class BatchSetDataModule(L.LightningDataModule):
    """Train/val loaders over batch-level sets (objects with ``__len__`` and ``batch(indices) -> dict``) with
    :class:`StepSampler` (no per-item Python work; ``num_workers=0`` by default)."""

    def __init__(self, train_set: Any = None, val_set: Any = None, *, batch_size: int, val_batch: int | None = None,
                 flip: bool = True, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        self.train_set, self.val_set = train_set, val_set
        self.batch_size, self.val_batch = int(batch_size), int(val_batch or batch_size)
        self.flip, self.seed, self.num_workers = flip, seed, num_workers

    @property
    def num_classes(self) -> int:
        self._ensure_sets()
        return int(self.train_set.num_classes)

    def _ensure_sets(self) -> None:
        """Subclasses build their sets lazily here."""

    def setup(self, stage: str | None = None) -> None:
        self._ensure_sets()

    def _loader(self, source: Any, train: bool) -> DataLoader:
        rank, world = _rank_world(self)
        sampler = StepSampler(len(source), self.batch_size if train else self.val_batch, train=train, rank=rank,
                              world=world, seed=self.seed, keys=True)
        if train and self.trainer is not None:
            loop = self.trainer.fit_loop.epoch_loop
            sampler.progress_fn = lambda: loop.batch_progress.current.processed
        view = _BatchView(source, flip=self.flip and train, seed=self.seed)
        return _ResumableLoader(view, batch_size=None, sampler=sampler, num_workers=self.num_workers,
                                step_sampler=sampler, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)


class SyntheticDataModule(BatchSetDataModule):
    """The embedded synthetic benchmark (``lastvit.data.SyntheticDataset``), generated once into memory
    (``cache=True``) or read with ``SyntheticDataset.batch`` every step."""

    def __init__(self, synthetic: dict[str, Any] | None = None, *, batch_size: int, train_size: int = 2048,
                 val_size: int = 512, data_seed: int = 0, cache: bool = True, **kwargs: Any) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.synthetic = dict(synthetic or {})
        self.train_size, self.val_size, self.data_seed, self.cache = train_size, val_size, data_seed, cache

    def _ensure_sets(self) -> None:
        if self.train_set is not None:
            return
        from lastvit.data import SyntheticConfig, SyntheticDataset

        try:
            scfg = SyntheticConfig(**self.synthetic)
        except TypeError as e:
            raise ValueError(f"data.synthetic: {e}") from None
        sets = []
        for split, size in (("train", self.train_size), ("val", self.val_size)):
            ds = SyntheticDataset(scfg, split=split, size=size, seed=self.data_seed)
            if self.cache:
                c = cache_split(ds)
                ds = TensorBatchSet(c["image"], c["label"], num_classes=_num_classes(ds, scfg))
            sets.append(ds)
        self.train_set, self.val_set = sets


def _num_classes(ds: Any, scfg: Any) -> int:
    for obj, attr in ((ds, "num_classes"), (scfg, "num_classes"), (ds, "classes"), (scfg, "classes")):
        v = getattr(obj, attr, None)
        if isinstance(v, int):
            return v
        if isinstance(v, list | tuple):
            return len(v)
    raise ValueError("cannot tell the number of classes of the synthetic set")


class ImageFolderDataModule(L.LightningDataModule):
    """ImageNet layout ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG``.

    Train: RandomResizedCrop(img_size) + horizontal flip; eval: Resize(resize) + CenterCrop(img_size); both
    normalised with the ImageNet mean/std. Sampling as in :class:`StepSampler` (per-item decoding in workers).
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, root: str, *, batch_size: int, val_batch: int | None = None, img_size: int = 224,
                 resize: int = 256, flip: bool = True, seed: int = 0, num_workers: int = 8) -> None:
        super().__init__()
        self.root, self.batch_size, self.val_batch = root, int(batch_size), int(val_batch or batch_size)
        self.img_size, self.resize, self.flip, self.seed, self.num_workers = img_size, resize, flip, seed, num_workers
        self.train_set = self.val_set = None

    def _ensure_sets(self) -> None:
        if self.train_set is not None:
            return
        from torchvision import datasets
        from torchvision import transforms as T

        for split in ("train", "val"):
            d = os.path.join(self.root, split)
            if not os.path.isdir(d):
                raise FileNotFoundError(f"{d}: no such directory (ImageFolder layout <root>/{split}/<class>/*.JPEG)")
        norm = T.Normalize(self.MEAN, self.STD)
        train_tf = [T.RandomResizedCrop(self.img_size)] + ([T.RandomHorizontalFlip()] if self.flip else [])
        self.train_set = datasets.ImageFolder(os.path.join(self.root, "train"),
                                              T.Compose([*train_tf, T.ToTensor(), norm]))
        self.val_set = datasets.ImageFolder(os.path.join(self.root, "val"), T.Compose(
            [T.Resize(self.resize), T.CenterCrop(self.img_size), T.ToTensor(), norm]))
        if self.val_set.classes != self.train_set.classes:
            raise ValueError(f"{self.root}: train/ and val/ have different class folders")

    @property
    def num_classes(self) -> int:
        self._ensure_sets()
        return len(self.train_set.classes)

    def setup(self, stage: str | None = None) -> None:
        self._ensure_sets()

    @staticmethod
    def _collate(samples: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
        return {"image": torch.stack([s[0] for s in samples]), "label": torch.tensor([s[1] for s in samples])}

    def _loader(self, ds: Any, train: bool) -> DataLoader:
        rank, world = _rank_world(self)
        sampler = StepSampler(len(ds), self.batch_size if train else self.val_batch, train=train, rank=rank,
                              world=world, seed=self.seed)
        if train and self.trainer is not None:
            loop = self.trainer.fit_loop.epoch_loop
            sampler.progress_fn = lambda: loop.batch_progress.current.processed
        return _ResumableLoader(ds, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=self._collate,
                                pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0,
                                step_sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)
