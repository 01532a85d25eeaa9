"""F-ViT (CLIPSelf's open-vocabulary Faster / Mask R-CNN on a frozen CLIP ViT) on torchvision's detection parts.

The torchvision defaults that do not fit F-ViT are overridden in small subclasses (each tested by hand in
tests/detection/test_overrides.py):

=========================  ==========================================================================================
override                   what changes (torchvision default -> F-ViT / mmdet)
=========================  ==========================================================================================
FloatStrideAnchorGenerator anchors at explicit float strides (integer ``image // grid`` -> 3.5 / 7 / 14 / 28 for
                           patch 14); base anchors unrounded (torchvision rounds them), centred on ``k * stride``
ScaledRoIAlign             explicit per-level scales (power-of-two inference -> 1 / stride), mmdet's level rule
                           ``floor(log2(sqrt(wh) / finest_scale + 1e-6))``, ``aligned=True``, adaptive sampling
L1RPN                      RPN box loss L1 (smooth-L1 beta 1/9 -> L1, mmdet ``L1Loss``), same normaliser
FViTTransform              training images are not resized (the dataset's large-scale jitter did it); every batch is
                           padded to a square of side ``image_size`` (rounded up to ``size_divisible``)
FViTRoIHeads               background is the LAST column (torchvision: label 0); cosine classifier on fixed text
                           embeddings x learned temperature; CE with per-class weights (novel 0, background
                           ``bg_weight``), novel logits -inf, normalised by the number of samples (mmdet);
                           class-agnostic box deltas with an L1 loss; post-processing on given probabilities (no
                           softmax inside) with the test-time ensemble; class-agnostic mask head (1 channel)
=========================  ==========================================================================================

Labels follow torchvision at the interface: targets and detections carry ``labels`` = class index + 1.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, roi_align
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from lastvit.data.transforms import CLIP_MEAN, CLIP_STD
from lastvit.detection.backbone import FViTBackbone
from lastvit.detection.ensemble import ensemble_scores

__all__ = ["FloatStrideAnchorGenerator", "ScaledRoIAlign", "L1RPN", "FViTTransform", "FViTBoxHead",
           "FViTRoIHeads", "FViTDetector", "DETECTOR_DEFAULTS", "build_fvit", "region_logits"]


# ------------------------------------------------------------------------------------------------ anchors
class FloatStrideAnchorGenerator(AnchorGenerator):
    """Anchors at explicit (float) strides: level ``l`` has centres ``(k + offset) * strides[l]``, ``k = 0..g-1``,
    and base anchors of ``sizes[l]`` x ``aspect_ratios[l]`` (h / w = ratio), not rounded."""

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[float], offset: float = 0.0) -> None:
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(a) for a in aspect_ratios))
        if len(strides) != len(sizes):
            raise ValueError(f"{len(strides)} strides for {len(sizes)} anchor levels")
        self.strides = tuple(float(s) for s in strides)
        self.offset = float(offset)

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=None):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        ar = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ar)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2  # unrounded (mmdet), torchvision rounds

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"{len(feature_maps)} feature maps for {len(self.strides)} anchor strides")
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        self.set_cell_anchors(dtype, device)
        per_level = []
        for fm, stride, base in zip(feature_maps, self.strides, self.cell_anchors):
            gh, gw = fm.shape[-2:]
            sx = (torch.arange(gw, dtype=torch.float32, device=device) + self.offset) * stride
            sy = (torch.arange(gh, dtype=torch.float32, device=device) + self.offset) * stride
            yy, xx = torch.meshgrid(sy, sx, indexing="ij")
            shifts = torch.stack([xx.reshape(-1), yy.reshape(-1)] * 2, dim=1)
            per_level.append((shifts[:, None, :] + base.float()[None]).reshape(-1, 4).to(dtype))
        anchors = torch.cat(per_level)
        return [anchors for _ in range(len(image_list.image_sizes))]


# ------------------------------------------------------------------------------------------------ RoI pooling
class ScaledRoIAlign(nn.Module):
    """Multi-level RoIAlign with explicit scales (``1 / stride`` per level) and mmdet's level assignment."""

    def __init__(self, featmap_names: Sequence[str], strides: Sequence[float], output_size: int,
                 finest_scale: float = 56.0, sampling_ratio: int = 0, aligned: bool = True) -> None:
        super().__init__()
        if len(featmap_names) != len(strides):
            raise ValueError(f"{len(featmap_names)} feature maps for {len(strides)} strides")
        self.featmap_names = list(featmap_names)
        self.scales = [1.0 / float(s) for s in strides]
        self.output_size = (int(output_size), int(output_size))
        self.finest_scale = float(finest_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """Level of each box (R,): ``floor(log2(sqrt(w h) / finest_scale + 1e-6))`` clamped to the levels."""
        scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0))
        lvl = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return lvl.clamp(0, len(self.scales) - 1).long()

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]] | None = None) -> torch.Tensor:
        feats = [x[k] for k in self.featmap_names]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], *self.output_size))
        if rois.shape[0] == 0:
            return out
        lv = self.levels(rois[:, 1:])
        for i, (f, s) in enumerate(zip(feats, self.scales)):
            idx = torch.nonzero(lv == i).squeeze(1)
            if idx.numel():
                out[idx] = roi_align(f, rois[idx].to(f.dtype), self.output_size, spatial_scale=s,
                                     sampling_ratio=self.sampling_ratio, aligned=self.aligned).to(out.dtype)
        return out


def region_logits(dense: torch.Tensor, boxes: list[torch.Tensor], stride: float, text: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """The frozen CLIP's region score: 1x1 RoIAlign of the dense CLIP map (B, E, h, w) on ``boxes`` (image
    pixels), L2-normalised, cosine with the text embeddings (C + 1, E), times ``temperature``."""
    rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
    feats = roi_align(dense.float(), rois.float(), (1, 1), spatial_scale=1.0 / float(stride), sampling_ratio=0,
                      aligned=True)[:, :, 0, 0]
    return float(temperature) * F.normalize(feats, dim=-1) @ F.normalize(text.float(), dim=-1).T


# ------------------------------------------------------------------------------------------------ RPN
class L1RPN(RegionProposalNetwork):
    """torchvision's RPN with mmdet's L1 box loss (same sampling and normaliser: the number of sampled anchors)."""

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos, dim=0))[0]
        neg = torch.where(torch.cat(neg, dim=0))[0]
        sampled = torch.cat([pos, neg], dim=0)
        objectness = objectness.flatten()
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        box_loss = F.l1_loss(pred_bbox_deltas[pos], regression_targets[pos], reduction="sum") / max(sampled.numel(), 1)
        obj_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
        return obj_loss, box_loss


# ------------------------------------------------------------------------------------------------ transform
class FViTTransform(GeneralizedRCNNTransform):
    """Normalise; in eval resize keeping the aspect ratio so the longer side is ``image_size`` (in training the
    dataset's large-scale jitter has sized the image); pad every batch to a square of side ``image_size``."""

    def __init__(self, image_size: int, image_mean: Sequence[float], image_std: Sequence[float],
                 size_divisible: int = 32) -> None:
        super().__init__(int(image_size), int(image_size), list(image_mean), list(image_std),
                         size_divisible=int(size_divisible))
        self.image_size = int(image_size)

    def resize(self, image, target=None):
        if self.training:
            return image, target
        return super().resize(image, target)

    def batch_images(self, images: list[torch.Tensor], size_divisible: int = 32) -> torch.Tensor:
        d = int(size_divisible)
        side = max(self.image_size, *(max(i.shape[-2:]) for i in images))
        side = int(math.ceil(side / d) * d)
        out = images[0].new_zeros((len(images), images[0].shape[0], side, side))
        for img, pad in zip(images, out):
            pad[:, : img.shape[1], : img.shape[2]].copy_(img)
        return out


# ------------------------------------------------------------------------------------------------ RoI head
class FViTBoxHead(nn.Module):
    """``num_convs`` 3x3 convs (norm + ReLU) then ``num_fcs`` FCs (ReLU) on the pooled RoI, then the
    classification FC (ReLU, F-ViT keeps it) to the text space and the class-agnostic regression FC."""

    def __init__(self, in_channels: int, roi_size: int, embed_dim: int, num_convs: int = 4, num_fcs: int = 2,
                 conv_dim: int = 256, fc_dim: int = 1024, norm: str = "bn") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(num_convs):
            nrm = nn.BatchNorm2d(conv_dim) if norm == "bn" else nn.GroupNorm(min(32, conv_dim), conv_dim)
            layers += [nn.Conv2d(c, conv_dim, 3, padding=1, bias=False), nrm, nn.ReLU(inplace=True)]
            c = conv_dim
        self.convs = nn.Sequential(*layers)
        fcs: list[nn.Module] = []
        f = c * roi_size * roi_size
        for _ in range(num_fcs):
            fcs += [nn.Linear(f, fc_dim), nn.ReLU(inplace=True)]
            f = fc_dim
        self.fcs = nn.Sequential(*fcs)
        self.cls_fc = nn.Linear(f, embed_dim)
        self.reg_fc = nn.Linear(f, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.fcs(self.convs(x).flatten(1))
        return F.relu(self.cls_fc(x)), self.reg_fc(x)


class FViTRoIHeads(RoIHeads):
    """RoI heads of F-ViT; columns ``[classes..., background]``. See the module docstring for every override."""

    def __init__(self, box_roi_pool: nn.Module, box_head: FViTBoxHead, text_embeddings: torch.Tensor,
                 novel: Sequence[bool], *, bg_weight: float, alpha: float, beta: float, vlm_temperature: float,
                 ensemble: str = "fvit", init_temperature: float = 50.0, dense_stride: float = 16.0,
                 mask_roi_pool: nn.Module | None = None, mask_head: nn.Module | None = None,
                 mask_predictor: nn.Module | None = None, fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5,
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
                 score_thresh: float = 0.01, nms_thresh: float = 0.4, detections_per_img: int = 100) -> None:
        super().__init__(box_roi_pool, box_head, None, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
                         positive_fraction, bbox_reg_weights, score_thresh, nms_thresh, detections_per_img,
                         mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=mask_predictor)
        c = text_embeddings.shape[0] - 1
        novel_t = torch.as_tensor(list(novel), dtype=torch.bool)
        if novel_t.shape != (c,):
            raise ValueError(f"novel mask has {novel_t.numel()} entries for {c} classes (+ background)")
        self.register_buffer("text", F.normalize(text_embeddings.float(), dim=-1))
        self.register_buffer("novel", novel_t)
        self.num_classes = c
        self.temperature = nn.Parameter(torch.tensor(float(init_temperature)))
        self.bg_weight, self.alpha, self.beta = float(bg_weight), float(alpha), float(beta)
        self.vlm_temperature, self.ensemble, self.dense_stride = float(vlm_temperature), ensemble, float(dense_stride)

    # label conventions --------------------------------------------------------------------------------
    def columns(self, labels: torch.Tensor) -> torch.Tensor:
        """torchvision labels (0 background, c + 1 class c) -> columns (c, background = C)."""
        return torch.where(labels > 0, labels - 1, torch.full_like(labels, self.num_classes))

    def class_weights(self) -> torch.Tensor:
        w = torch.ones(self.num_classes + 1, device=self.text.device)
        w[: self.num_classes][self.novel] = 0.0
        w[self.num_classes] = self.bg_weight
        return w

    def det_logits(self, emb: torch.Tensor) -> torch.Tensor:
        return self.temperature * F.normalize(emb, dim=-1) @ self.text.T.to(emb.dtype)

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CE over columns with class weights, classes of weight < 1e-5 masked to -inf, sum / number of samples."""
        w = self.class_weights().to(logits.device)
        logits = logits.float().masked_fill((w < 1e-5)[None], float("-inf"))
        cols = self.columns(labels)
        ce = F.cross_entropy(logits, cols, reduction="none")
        return (w[cols] * ce).sum() / max(labels.numel(), 1)

    def box_loss(self, deltas: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Class-agnostic L1 on positive samples, sum / number of samples."""
        pos = torch.where(labels > 0)[0]
        return F.l1_loss(deltas[pos], targets[pos], reduction="sum") / max(labels.numel(), 1)

    def postprocess(self, probs: torch.Tensor, deltas: torch.Tensor, proposals: list[torch.Tensor],
                    image_shapes: list[tuple[int, int]]) -> tuple[list, list, list]:
        """Boxes, scores, labels per image from given probabilities (R, C + 1; no softmax here) and class-agnostic
        deltas (R, 4): background column dropped, score threshold, tiny boxes removed, per-class NMS, top-k."""
        counts = [len(p) for p in proposals]
        boxes_all = self.box_coder.decode(deltas, proposals)[:, 0]  # (R, 4)
        out_b, out_s, out_l = [], [], []
        for boxes, scores, shape in zip(boxes_all.split(counts), probs.split(counts), image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            c = self.num_classes
            scores = scores[:, :c]
            labels = torch.arange(1, c + 1, device=scores.device)[None].expand_as(scores)
            boxes = boxes[:, None].expand(-1, c, 4).reshape(-1, 4)
            scores, labels = scores.reshape(-1), labels.reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.remove_small_boxes(boxes, 1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            out_b.append(boxes[keep])
            out_s.append(scores[keep])
            out_l.append(labels[keep])
        return out_b, out_s, out_l

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict[str, torch.Tensor]] | None = None,
                dense: torch.Tensor | None = None) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        losses: dict[str, torch.Tensor] = {}
        result: list[dict[str, torch.Tensor]] = []
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training")
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
            pooled = self.box_roi_pool(features, proposals, image_shapes)
            emb, deltas = self.box_head(pooled)
            labels_c = torch.cat(labels)
            losses["loss_classifier"] = self.classification_loss(self.det_logits(emb), labels_c)
            losses["loss_box_reg"] = self.box_loss(deltas, labels_c, torch.cat(regression_targets))
        else:
            pooled = self.box_roi_pool(features, proposals, image_shapes)
            emb, deltas = self.box_head(pooled)
            vlm = None
            if dense is not None and self.ensemble != "none":
                vlm = region_logits(dense, proposals, self.dense_stride, self.text, self.vlm_temperature)
            probs = ensemble_scores(self.det_logits(emb), vlm, self.novel, alpha=self.alpha, beta=self.beta,
                                    mode=self.ensemble)
            boxes, scores, labels_l = self.postprocess(probs, deltas, proposals, image_shapes)
            result = [{"boxes": b, "scores": s, "labels": lb} for b, s, lb in zip(boxes, scores, labels_l)]
        if self.has_mask():
            if self.training:
                pos_props, pos_idx = [], []
                for img_id in range(len(proposals)):
                    pos = torch.where(labels[img_id] > 0)[0]
                    pos_props.append(proposals[img_id][pos])
                    pos_idx.append(matched_idxs[img_id][pos])
                mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, pos_props,
                                                                                    image_shapes)))
                gt_masks = [t["masks"] for t in targets]
                zeros = [torch.zeros_like(t["labels"]) for t in targets]  # class-agnostic: channel 0
                losses["loss_mask"] = maskrcnn_loss(mask_logits, pos_props, gt_masks, zeros, pos_idx)
            else:
                mask_props = [r["boxes"] for r in result]
                if sum(len(p) for p in mask_props):
                    mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_props,
                                                                                        image_shapes)))
                    probs_m = maskrcnn_inference(mask_logits, [torch.zeros_like(r["labels"]) for r in result])
                else:
                    probs_m = [features["0"].new_zeros((0, 1, *self.mask_roi_pool.output_size)) for _ in result]
                for m, r in zip(probs_m, result):
                    r["masks"] = m
        return result, losses


class _MaskHead(nn.Sequential):
    """mmdet's FCN mask head: ``num_convs`` 3x3 convs + ReLU, a 2x ConvTranspose + ReLU."""

    def __init__(self, in_channels: int, dim: int, num_convs: int = 4) -> None:
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(c, dim, 3, padding=1), nn.ReLU(inplace=True)]
            c = dim
        layers += [nn.ConvTranspose2d(dim, dim, 2, 2), nn.ReLU(inplace=True)]
        super().__init__(*layers)


# ------------------------------------------------------------------------------------------------ detector
#: Full-scale F-ViT settings (CLIPSelf configs, OV-COCO B/16); the miniature and the recipes override them.
DETECTOR_DEFAULTS: dict[str, Any] = {
    "image_size": 640,
    "taps": None,  # None: F-ViT's (3, 5, 7, 11) / (6, 10, 14, 23) by depth
    "last_block": "fvit",  # fvit | vanilla
    "fpn_dim": 256,
    "norm": "bn",  # bn | gn (pyramid, FPN, RoI convs)
    "anchor_scale": 8.0,  # anchor side = scale x level stride
    "aspect_ratios": [0.5, 1.0, 2.0],
    "rpn_convs": 2,
    "rpn_pre_nms_train": 2000, "rpn_post_nms_train": 1000,
    "rpn_pre_nms_test": 1000, "rpn_post_nms_test": 1000,
    "rpn_nms": 0.7, "rpn_batch": 256, "rpn_fg_iou": 0.7, "rpn_bg_iou": 0.3,
    "roi_size": 7, "finest_scale": 56.0, "roi_convs": 4, "roi_fcs": 2, "roi_conv_dim": 256, "roi_fc_dim": 512,
    "roi_batch": 512, "roi_pos_fraction": 0.25,
    "bg_weight": 0.6,  # 0.6 OV-COCO, 0.9 OV-LVIS
    "init_temperature": 50.0,
    "ensemble": "fvit",  # fvit | fvlm | none
    "alpha": 0.1, "beta": 0.8, "vlm_temperature": 75.0,
    "score_thresh": 0.01, "nms_thresh": 0.4, "detections_per_img": 100,
    "masks": False,  # Mask R-CNN (class-agnostic FCN mask head, RoI 14 -> 28)
    "mask_roi_size": 14, "mask_convs": 4,
    "image_mean": None, "image_std": None,  # None: OpenAI CLIP's normalisation
}
OPENAI_MEAN, OPENAI_STD = CLIP_MEAN, CLIP_STD  # defined once, in lastvit.data.transforms


class FViTDetector(nn.Module):
    """Faster / Mask R-CNN on a frozen CLIP. ``model(images, targets)`` returns the loss dict in training and the
    detections (``boxes``, ``scores``, ``labels`` = class + 1, ``masks``) in eval, like torchvision's models."""

    def __init__(self, backbone: FViTBackbone, neck: nn.Module, transform: FViTTransform, rpn: L1RPN,
                 roi_heads: FViTRoIHeads, class_names: Sequence[str], config: dict[str, Any]) -> None:
        super().__init__()
        self.backbone, self.neck, self.transform, self.rpn, self.roi_heads = backbone, neck, transform, rpn, roi_heads
        self.class_names = list(class_names)
        self.config = dict(config)

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Everything but the frozen CLIP tower."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("backbone.vit.") and p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.vit.")}

    def features(self, images: torch.Tensor) -> tuple[OrderedDict[str, torch.Tensor], torch.Tensor | None]:
        feats, dense = self.backbone(images)
        pyramid = self.neck(feats)
        return pyramid, dense

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None,
                return_proposals: bool = False):
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, targets = self.transform(images, targets)
        pyramid, dense = self.features(image_list.tensors)
        proposals, rpn_losses = self.rpn(image_list, pyramid, targets)
        dets, roi_losses = self.roi_heads(pyramid, proposals, image_list.image_sizes, targets, dense=dense)
        if self.training:
            return {**rpn_losses, **roi_losses}
        dets = self.transform.postprocess(dets, image_list.image_sizes, original_sizes)
        if return_proposals:
            props = []
            for p, s, o in zip(proposals, image_list.image_sizes, original_sizes):
                r = torch.tensor([o[1] / s[1], o[0] / s[0], o[1] / s[1], o[0] / s[0]], device=p.device)
                props.append(p * r)
            return dets, props
        return dets


def build_fvit(clip: nn.Module, text_embeddings: torch.Tensor, class_names: Sequence[str], novel: Sequence[bool],
               cfg: dict[str, Any] | None = None) -> FViTDetector:
    """F-ViT on the frozen image tower of ``clip``; ``text_embeddings`` (C + 1, E) with background last;
    ``novel`` marks the classes masked out in training; ``cfg`` overrides :data:`DETECTOR_DEFAULTS`."""
    unknown = set(cfg or {}) - set(DETECTOR_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown detector keys {sorted(unknown)}; known: {sorted(DETECTOR_DEFAULTS)}")
    c = {**DETECTOR_DEFAULTS, **(cfg or {})}
    if text_embeddings.shape[0] != len(class_names) + 1:
        raise ValueError(f"{text_embeddings.shape[0]} text embeddings for {len(class_names)} classes + background")
    backbone = FViTBackbone(clip, c["taps"], c["last_block"], c["norm"])
    d, fd = backbone.out_channels, int(c["fpn_dim"])
    norm_layer = nn.BatchNorm2d if c["norm"] == "bn" else (lambda ch: nn.GroupNorm(min(32, ch), ch))
    neck = FeaturePyramidNetwork([d] * 4, fd, extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer)
    strides = list(backbone.strides) + [backbone.strides[-1] * 2]  # P6 by max-pool
    anchors = FloatStrideAnchorGenerator([(c["anchor_scale"] * s,) for s in strides],
                                         [tuple(c["aspect_ratios"])] * len(strides), strides)
    rpn = L1RPN(anchors, RPNHead(fd, len(c["aspect_ratios"]), conv_depth=int(c["rpn_convs"])),
                c["rpn_fg_iou"], c["rpn_bg_iou"], int(c["rpn_batch"]), 0.5,
                {"training": int(c["rpn_pre_nms_train"]), "testing": int(c["rpn_pre_nms_test"])},
                {"training": int(c["rpn_post_nms_train"]), "testing": int(c["rpn_post_nms_test"])}, c["rpn_nms"])
    names = ["0", "1", "2", "3"]
    pool = ScaledRoIAlign(names, backbone.strides, int(c["roi_size"]), finest_scale=float(c["finest_scale"]))
    head = FViTBoxHead(fd, int(c["roi_size"]), text_embeddings.shape[1], int(c["roi_convs"]), int(c["roi_fcs"]),
                       int(c["roi_conv_dim"]), int(c["roi_fc_dim"]), c["norm"])
    mask_kw: dict[str, Any] = {}
    if c["masks"]:
        mask_kw = dict(mask_roi_pool=ScaledRoIAlign(names, backbone.strides, int(c["mask_roi_size"]),
                                                    finest_scale=float(c["finest_scale"])),
                       mask_head=_MaskHead(fd, fd, int(c["mask_convs"])), mask_predictor=nn.Conv2d(fd, 1, 1))
    roi = FViTRoIHeads(pool, head, text_embeddings, novel, bg_weight=c["bg_weight"], alpha=c["alpha"],
                       beta=c["beta"], vlm_temperature=c["vlm_temperature"], ensemble=c["ensemble"],
                       init_temperature=c["init_temperature"], dense_stride=float(backbone.vit.patch_size),
                       batch_size_per_image=int(c["roi_batch"]), positive_fraction=float(c["roi_pos_fraction"]),
                       score_thresh=float(c["score_thresh"]), nms_thresh=float(c["nms_thresh"]),
                       detections_per_img=int(c["detections_per_img"]), **mask_kw)
    vit = backbone.vit
    mean, std = c["image_mean"] or OPENAI_MEAN, c["image_std"] or OPENAI_STD
    transform = FViTTransform(int(c["image_size"]), mean, std, size_divisible=2 * vit.patch_size)
    return FViTDetector(backbone, neck, transform, rpn, roi, class_names, c)
