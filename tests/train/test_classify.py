"""ClassifyModule: learning on a fixed batch, exact top-k counts, deterministic samplers, ImageFolder loader."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lastvit.train.classify import ClassifyModule, topk_correct
from lastvit.train.data import ImageFolderDataModule, StepSampler
from lastvit.train.optim import build_optimizer

MODEL = {"name": "vit_micro_patch8_64", "arch": {"img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2},
         "num_classes": 4, "aggregator_kwargs": {}}
OPTIM = {"lr": 3e-3, "weight_decay": 0.05, "betas": [0.9, 0.95], "warmup_frac": 0.0, "warmup_factor": 0.1,
         "min_lr_factor": 0.001}


@pytest.mark.parametrize("aggregator", ["cls", "lazystrike"])
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(aggregator):
    torch.manual_seed(0)
    module = ClassifyModule({**MODEL, "aggregator": aggregator}, OPTIM)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    opt = build_optimizer(module.model, OPTIM)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(module(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_topk_correct_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5], [0.0, 0.2, 0.1]])
    labels = torch.tensor([1, 2, 0, 0])
    c1, c2, c5 = topk_correct(logits, labels, (1, 2, 5))
    assert (int(c1), int(c2), int(c5)) == (1, 2, 4)  # k=5 clipped to the 3 classes


def test_step_sampler_shards_a_global_batch_and_resumes():
    one = StepSampler(20, 6, train=True, world=1, seed=3)
    two = [StepSampler(20, 3, train=True, rank=r, world=2, seed=3) for r in (0, 1)]
    for s in (one, *two):
        s.set_epoch(4)
    b1 = list(one)
    b2 = list(zip(*[list(s) for s in two]))
    assert len(b1) == len(b2) == 3  # 20 // 6, tail dropped
    assert [a + b for a, b in b2] == b1  # rank slices of the same global batches
    assert len({i for b in b1 for i in b}) == 18
    one.set_epoch(5)
    assert list(one) != b1  # a new order each epoch
    one.set_epoch(4)
    one.load_state_dict({"epoch": 4, "consumed": 2})
    assert list(one) == b1[2:]  # resumed mid-epoch: the remaining batches
    assert list(one) == b1  # and only once
    val = [list(StepSampler(11, 4, train=False, rank=r, world=2)) for r in (0, 1)]
    assert val == [[[0, 2, 4, 6], [8, 10]], [[1, 3, 5, 7], [9]]]  # uneven split, every sample once


def test_imagefolder_datamodule(tmp_path):
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 3), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            d = tmp_path / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                arr = (torch.rand(40, 50, 3, generator=g) * 255).byte().numpy()
                Image.fromarray(arr).save(d / f"{wnid}_{i}.JPEG", format="JPEG")
    dm = ImageFolderDataModule(str(tmp_path), batch_size=2, img_size=32, resize=36, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 2
    tb = list(dm.train_dataloader())
    assert len(tb) == 3 and tb[0]["image"].shape == (2, 3, 32, 32)
    vb = list(dm.val_dataloader())
    labels = torch.cat([b["label"] for b in vb]).tolist()
    assert labels == [0, 0, 1, 1] and vb[0]["image"].shape == (2, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderDataModule(str(tmp_path / "nowhere"), batch_size=2).setup("fit")


def test_the_one_synthetic_cache_is_the_dataset_rendered_once():
    from lastvit.data import SyntheticConfig, SyntheticDataset
    from lastvit.train.data import cache_split

    ds = SyntheticDataset(SyntheticConfig(num_classes=3, image_size=32), split="train", size=7)
    whole = ds.batch(list(range(7)))
    c = cache_split(ds, chunk=3)  # chunked rendering gives the same pixels as one batch
    assert torch.equal(c["image"], whole["image"]) and c["caption"] == list(whole["caption"])
    assert torch.equal(c["label"], torch.as_tensor(whole["label"]))
    raw = cache_split(ds, raw=True, chunk=2)
    assert raw["image"].dtype == torch.uint8 and raw["box"].shape == (7, 4)
    g = ds.generate_batch(list(range(7)))
    assert torch.equal(raw["image"], (g["images"].clamp(0, 1) * 255).round().to(torch.uint8))
