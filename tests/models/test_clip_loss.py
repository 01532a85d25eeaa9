"""Contrastive loss: a hand-computed value, and 2-process DDP gather == one process with the full batch."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from lastvit.models.clip_loss import clip_loss


def test_clip_loss_hand_computed():
    # 2 pairs, unit features: img = [e1, e2], txt = [e1, (e1+e2)/sqrt2], scale 2.
    r = 1 / math.sqrt(2)
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [r, r]])
    # logits = 2 * img @ txt.T = [[2, 2r], [0, 2r]]
    # each cross-entropy row reduces to log(1 + exp(other - target)):
    # image->text: row0 (2, 2r) -> log(1 + e^(2r-2)); row1 (0, 2r) -> log(1 + e^(-2r))
    # text->image: col0 (2, 0) -> log(1 + e^-2);    col1 (2r, 2r) -> log 2
    l_i = (math.log1p(math.exp(2 * r - 2)) + math.log1p(math.exp(-2 * r))) / 2
    l_t = (math.log1p(math.exp(-2)) + math.log(2)) / 2
    expected = (l_i + l_t) / 2
    got = clip_loss(img, txt, torch.tensor(2.0))
    assert abs(got.item() - expected) < 1e-6
    assert abs(expected - 0.370061) < 1e-6  # 0.5 * (0.330085 + 0.410038)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gather_equals_full_batch(tmp_path, monkeypatch):
    # spawn pickles the worker by module name: make its helper module importable in the children
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import clip_ddp_worker
    from clip_ddp_worker import features, loss_and_grads

    w_img, w_txt, x_img, x_txt = features()
    scale = torch.tensor(math.log(10.0))
    ref_loss, ref_grads = loss_and_grads(w_img, w_txt, scale, x_img, x_txt)  # one process, full batch
    mp.spawn(clip_ddp_worker.worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        res = torch.load(tmp_path / f"rank{rank}.pt")
        losses, grads = res[False]
        # full logits: every rank computes exactly the full-batch loss
        torch.testing.assert_close(losses, ref_loss.expand(2), atol=1e-6, rtol=0)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
        losses, grads = res[True]
        # local rows only (4 + 4): per-rank losses differ, their mean is the full-batch loss, and the
        # DDP-averaged gradients are the full-batch gradients
        assert not torch.allclose(losses[0], losses[1])
        assert abs(losses.mean().item() - ref_loss.item()) < 1e-6
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
    # the two ranks agree with each other
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for ga, gb in zip(a[False][1], b[False][1]):
        torch.testing.assert_close(ga, gb)
