"""Downstream evaluations: classification probes, zero-shot / coarse segmentation, object discovery.

Every number a paper table needs is one call: :func:`classification` (head top-1/top-5, kNN, linear probe),
:func:`coarse_segmentation` (Table 6, both candidate protocols), :func:`zeroshot_segmentation` (training-free
CLIP segmentation), :func:`discover` (object discovery, CorLoc). ``lastvit evaluate`` only parses arguments and
calls them. See docs/evaluate.md for the protocols.
"""

from lastvit.evaluate.classify import MODES, classification, evaluate_head
from lastvit.evaluate.coarse_seg import PROTOCOLS, evaluate_coarse_seg, object_masks, threshold_scores
from lastvit.evaluate.dense import VARIANTS, dense_features, fvit_taps
from lastvit.evaluate.discovery import (
    DiscoveryResult,
    component_box,
    discover,
    lazystrike_box,
    lost_box,
    tokencut_box,
)
from lastvit.evaluate.metrics import SegConfusion, box_iou, corloc_hits
from lastvit.evaluate.presets import SEG_PRESETS
from lastvit.evaluate.probe import extract_features, knn_accuracy, knn_classify, linear_probe, topk_accuracy
from lastvit.evaluate.zeroshot_seg import (
    ZeroShotSegConfig,
    evaluate_zeroshot_seg,
    postprocess,
    read_classnames,
    slide_inference,
    text_queries,
)

#: Table 6 coarse segmentation (:func:`lastvit.evaluate.coarse_seg.evaluate_coarse_seg`)
coarse_segmentation = evaluate_coarse_seg
#: zero-shot semantic segmentation (:func:`lastvit.evaluate.zeroshot_seg.evaluate_zeroshot_seg`)
zeroshot_segmentation = evaluate_zeroshot_seg

__all__ = [
    "MODES",
    "PROTOCOLS",
    "classification",
    "coarse_segmentation",
    "object_masks",
    "zeroshot_segmentation",
    "DiscoveryResult",
    "SEG_PRESETS",
    "SegConfusion",
    "VARIANTS",
    "ZeroShotSegConfig",
    "box_iou",
    "component_box",
    "corloc_hits",
    "dense_features",
    "fvit_taps",
    "discover",
    "evaluate_coarse_seg",
    "evaluate_head",
    "evaluate_zeroshot_seg",
    "extract_features",
    "knn_accuracy",
    "knn_classify",
    "lazystrike_box",
    "linear_probe",
    "lost_box",
    "postprocess",
    "read_classnames",
    "slide_inference",
    "text_queries",
    "threshold_scores",
    "tokencut_box",
    "topk_accuracy",
]
