"""Worker for the 2-process DDP test (a plain module: torch.multiprocessing.spawn pickles it by name)."""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lastvit.models.clip_loss import clip_loss


def features(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w_img = torch.randn(5, 4, generator=g)
    w_txt = torch.randn(6, 4, generator=g)
    x_img = torch.randn(8, 5, generator=g)
    x_txt = torch.randn(8, 6, generator=g)
    return w_img, w_txt, x_img, x_txt


def loss_and_grads(w_img, w_txt, scale, x_img, x_txt, local_loss=False):
    w_img = w_img.clone().requires_grad_(True)
    w_txt = w_txt.clone().requires_grad_(True)
    scale = scale.clone().requires_grad_(True)
    img = F.normalize(x_img @ w_img, dim=-1)
    txt = F.normalize(x_txt @ w_txt, dim=-1)
    loss = clip_loss(img, txt, scale.exp(), gather=True, local_loss=local_loss)
    loss.backward()
    return loss.detach(), [w_img.grad, w_txt.grad, scale.grad]


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        w_img, w_txt, x_img, x_txt = features()
        scale = torch.tensor(math.log(10.0))
        res = {}
        # full logits with unequal shards (5 + 3: exercises the padded gather); local loss with equal shards
        for local, cut in ((False, [0, 5, 8]), (True, [0, 4, 8])):
            sl = slice(cut[rank], cut[rank + 1])
            loss, grads = loss_and_grads(w_img, w_txt, scale, x_img[sl], x_txt[sl], local_loss=local)
            losses = [torch.zeros(()) for _ in range(world)]
            dist.all_gather(losses, loss)
            for g in grads:  # what DDP does: average gradients over ranks
                dist.all_reduce(g)
                g /= world
            res[local] = (torch.stack(losses), grads)
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


