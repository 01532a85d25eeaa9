"""Each torchvision override of the F-ViT detector against a hand-computed case; the ensemble on 3 classes."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RPNHead

from lastvit.detection.backbone import FViTBackbone, frozen_taps
from lastvit.detection.ensemble import ensemble_scores
from lastvit.detection.model import (
    L1RPN,
    FloatStrideAnchorGenerator,
    FViTBoxHead,
    FViTRoIHeads,
    FViTTransform,
    ScaledRoIAlign,
    region_logits,
)
from lastvit.models.vit import LastViT

torch.set_num_threads(1)


def test_float_stride_anchors_hand_case():
    gen = FloatStrideAnchorGenerator([(7.0,)], [(1.0,)], [3.5])
    images = ImageList(torch.zeros(1, 3, 7, 7), [(7, 7)])
    (anchors,) = gen(images, [torch.zeros(1, 1, 2, 2)])
    want = torch.tensor([[-3.5, -3.5, 3.5, 3.5], [0.0, -3.5, 7.0, 3.5], [-3.5, 0.0, 3.5, 7.0], [0.0, 0.0, 7.0, 7.0]])
    torch.testing.assert_close(anchors, want)
    # aspect ratio 2 (h / w), not rounded: w = 4 / sqrt(2), h = 4 * sqrt(2)
    gen2 = FloatStrideAnchorGenerator([(4.0,)], [(2.0,)], [3.5])
    (a2,) = gen2(images, [torch.zeros(1, 1, 1, 1)])
    w, h = 4 / math.sqrt(2), 4 * math.sqrt(2)
    torch.testing.assert_close(a2, torch.tensor([[-w / 2, -h / 2, w / 2, h / 2]]))


def test_scaled_roi_align_levels_and_scale():
    pool = ScaledRoIAlign(["0", "1", "2", "3"], [3.5, 7.0, 14.0, 28.0], 1, finest_scale=56.0)
    sides = torch.tensor([20.0, 56.0, 111.0, 112.0, 224.0, 448.0, 1000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], 1)
    assert pool.levels(boxes).tolist() == [0, 0, 0, 1, 2, 3, 3]
    # level 0 map whose value is its column index; box [0, 7] x [0, 7] at scale 1/3.5 covers feature coordinates
    # [-0.5, 1.5] (aligned=True); adaptive sampling takes 2 x 2 points at 0 and 1 -> mean 0.5
    cols = torch.arange(8.0).repeat(8, 1)[None, None]
    feats = {"0": cols, **{str(i): torch.full((1, 1, 32, 32), 100.0 * i) for i in (1, 2, 3)}}
    out = pool(feats, [torch.tensor([[0.0, 0.0, 7.0, 7.0], [0.0, 0.0, 112.0, 112.0]])])
    assert out.shape == (2, 1, 1, 1)
    assert out[0].item() == pytest.approx(0.5)
    assert out[1].item() == pytest.approx(100.0)  # the 112-px box is pooled from level 1 (constant 100)


def test_l1_rpn_loss_hand_case():
    gen = FloatStrideAnchorGenerator([(8.0,)], [(1.0,)], [4.0])
    rpn = L1RPN(gen, RPNHead(4, 1), 0.7, 0.3, 256, 0.5, {"training": 10, "testing": 10},
                {"training": 10, "testing": 10}, 0.7)
    objectness = torch.tensor([[2.0], [-1.0], [0.5], [3.0]])
    deltas = torch.tensor([[0.1, 0.2, 0.3, 0.4], [9.0, 9.0, 9.0, 9.0], [0.0, -0.5, 0.0, 0.5], [7.0, 7.0, 7.0, 7.0]])
    labels = [torch.tensor([1.0, 0.0, 1.0, -1.0])]  # two positives, one negative, one ignored
    targets = [torch.zeros(4, 4)]
    obj, box = rpn.compute_loss(objectness, deltas, labels, targets)
    assert box.item() == pytest.approx((1.0 + 1.0) / 3)  # |0.1|+|0.2|+|0.3|+|0.4| + |-0.5|+|0.5|, / 3 sampled
    bce = -(math.log(1 / (1 + math.exp(-2.0))) + math.log(1 - 1 / (1 + math.exp(1.0)))
            + math.log(1 / (1 + math.exp(-0.5)))) / 3
    assert obj.item() == pytest.approx(bce, rel=1e-5)


def test_transform_no_resize_in_training_square_pad():
    t = FViTTransform(64, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], size_divisible=16)
    small = torch.ones(3, 20, 30)
    t.train()
    il, _ = t([small], [{"boxes": torch.tensor([[1.0, 2.0, 10.0, 12.0]]), "labels": torch.tensor([1])}])
    assert il.tensors.shape == (1, 3, 64, 64) and il.image_sizes == [(20, 30)]
    assert il.tensors[0, :, :20, :30].eq(1).all() and il.tensors[0, :, 20:].eq(0).all()
    t.eval()
    il, _ = t([torch.ones(3, 16, 32)])
    assert il.image_sizes == [(32, 64)] and il.tensors.shape == (1, 3, 64, 64)  # longer side -> 64, square pad


def _roi_heads(**kw) -> FViTRoIHeads:
    pool = ScaledRoIAlign(["0"], [1.0], 2)
    head = FViTBoxHead(1, 2, 2, num_convs=0, num_fcs=1, fc_dim=4)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    args = dict(bg_weight=0.6, alpha=0.1, beta=0.8, vlm_temperature=75.0)
    args.update(kw)
    return FViTRoIHeads(pool, head, text, [False, False, True], **args)


def test_background_column_and_weighted_masked_ce():
    roi = _roi_heads()
    assert roi.columns(torch.tensor([0, 1, 3])).tolist() == [3, 0, 2]  # background is the last column
    assert roi.class_weights().tolist() == pytest.approx([1.0, 1.0, 0.0, 0.6])
    logits = torch.tensor([[2.0, 1.0, 5.0, 0.0], [0.5, 0.0, 9.0, 1.5]])
    labels = torch.tensor([1, 0])  # class 0, background
    # novel column 2 is -inf: softmax over columns 0, 1, 3
    ce1 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.0) + math.exp(0.0)))
    ce2 = -math.log(math.exp(1.5) / (math.exp(0.5) + math.exp(0.0) + math.exp(1.5)))
    want = (1.0 * ce1 + 0.6 * ce2) / 2  # mmdet: weighted sum over the number of samples
    assert roi.classification_loss(logits, labels).item() == pytest.approx(want, rel=1e-6)


def test_cosine_classifier_with_temperature():
    roi = _roi_heads(init_temperature=50.0)
    emb = torch.tensor([[3.0, 0.0]])
    logits = roi.det_logits(emb)
    torch.testing.assert_close(logits, 50.0 * torch.tensor([[1.0, 0.0, 1 / math.sqrt(2), -1.0]]))
    assert roi.temperature.requires_grad


def test_postprocess_uses_given_probabilities_class_agnostic_boxes():
    roi = _roi_heads(score_thresh=0.1)
    props = [torch.tensor([[10.0, 10.0, 30.0, 20.0]])]
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.9]])  # background (last) is dropped whatever its value
    b, s, lab = roi.postprocess(probs, torch.zeros(1, 4), props, [(64, 64)])
    assert lab[0].tolist() == [1, 3] and s[0].tolist() == pytest.approx([0.5, 0.3])  # no softmax applied
    torch.testing.assert_close(b[0], props[0].expand(2, 4))
    # one delta for every class: dx = 0.1 moves the box by 0.1 * w / 10 (weights 10, 10, 5, 5)
    b, _, _ = roi.postprocess(probs, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), props, [(64, 64)])
    torch.testing.assert_close(b[0][:, 0], torch.tensor([12.0, 12.0]))


def test_region_logits_one_cell():
    dense = torch.zeros(1, 2, 2, 2)
    dense[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    dense[0, :, 1, 1] = torch.tensor([0.0, 2.0])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out = region_logits(dense, [torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0]])], 8.0, text, 10.0)
    c = 1 / math.sqrt(2)
    torch.testing.assert_close(out, torch.tensor([[10.0, 0.0, 10 * c], [0.0, 10.0, 10 * c]]))


def test_ensemble_three_classes_hand_computed():
    p_det = torch.tensor([[0.5, 0.2, 0.2, 0.1]])
    p_vlm = torch.tensor([[0.1, 0.3, 0.4, 0.2]])
    novel = torch.tensor([False, False, True])
    out = ensemble_scores(p_det.log(), p_vlm.log(), novel, alpha=0.5, beta=0.75)
    want = [math.sqrt(0.5 * 0.1), math.sqrt(0.2 * 0.3), 0.2**0.25 * 0.4**0.75, math.sqrt(0.1 * 0.2)]
    assert out[0].tolist() == pytest.approx(want, rel=1e-5)  # background takes alpha, no renormalisation
    fvlm = ensemble_scores(p_det.log(), p_vlm.log(), novel, alpha=0.5, beta=0.75, mode="fvlm")
    raw = [want[0], want[1], want[2], 0.1]  # background from the detector alone, then renormalised
    assert fvlm[0].tolist() == pytest.approx([v / sum(raw) for v in raw], rel=1e-5)
    torch.testing.assert_close(ensemble_scores(p_det.log(), None, novel, alpha=0.5, beta=0.75), p_det)


def _tiny_vit() -> LastViT:
    torch.manual_seed(0)
    return LastViT({"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2},
                   aggregator="cls", head="proj", head_dim=16)


def test_fvit_last_block_is_value_path_with_residual_and_ffn():
    vit = _tiny_vit().eval()
    images = torch.randn(2, 3, 32, 32)
    tokens, grid = vit.embed(images)
    x = vit.forward_blocks(tokens, grid, upto=3)
    blk = vit.encoder.blocks[-1]
    v = blk.attn.qkv(blk.norm1(x))[..., 64:]  # the value third of qkv (heads are contiguous)
    y = x + blk.attn.proj(v)
    want = y + blk.mlp(blk.norm2(y))
    maps, dmap = frozen_taps(vit, images, (0, 1, 2, 3), "fvit", dense=True)
    torch.testing.assert_close(maps[3], want[:, 1:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2))
    proj = torch.nn.functional.normalize(vit.head(vit.encoder.norm(want)[:, 1:]), dim=-1)
    torch.testing.assert_close(dmap, proj.reshape(2, 4, 4, 16).permute(0, 3, 1, 2))


def test_backbone_frozen_taps_and_pyramid_strides():
    vit = _tiny_vit()
    bb = FViTBackbone(vit, taps=(0, 1, 2, 3))
    bb.train()
    assert not bb.vit.training and all(not p.requires_grad for p in bb.vit.parameters())
    images = torch.randn(2, 3, 32, 32)
    feats, dense = bb(images)
    assert dense is None
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert bb.strides == (2.0, 4.0, 8.0, 16.0)
    maps, dmap = frozen_taps(vit, images, (0, 1, 2, 3), "vanilla", dense=True)
    _, inter = vit.forward_intermediates(images, [0, 1, 2, 3])  # not normed, prefix dropped
    for a, b in zip(maps, inter):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(dmap.norm(dim=1), torch.ones(2, 4, 4))
    assert FViTBackbone(_tiny_vit(), taps=(0, 1, 2, 3), last_block="fvit").strides[0] == 2.0
    with pytest.raises(ValueError, match="last_block"):
        FViTBackbone(vit, last_block="maskclip")
