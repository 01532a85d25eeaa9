"""Diagnostics of lazy aggregation: patch scores (Eq. 3), Point-in-Box, fg/bg score distributions, the masking probe,
feature norms, LazyStrike votes (Eq. 8), PCA and class-token attention maps, and training dynamics; ``diagnose``
runs the set on one model (:mod:`lastvit.analysis.suite`), :data:`lastvit.analysis.runs.KINDS` one diagnostic over
a loader (``lastvit analyze``)."""

from lastvit.analysis.attention import block_attention, cls_attention_maps
from lastvit.analysis.distributions import auroc, normalise_scores, per_image_scores, score_distributions
from lastvit.analysis.masking import encode_kept, forward_kept, masking_probe, pixel_mask, run_masking_probe
from lastvit.analysis.norms import layer_summary, outlier_stats, outlier_threshold, token_norms
from lastvit.analysis.pca import foreground_pca_rgb, pca_basis, pca_rgb
from lastvit.analysis.pib import PiBMeter, box_cells, evaluate_pib, foreground_patches, foreground_share, point_in_box
from lastvit.analysis.scores import convnet_patch_scores, global_representation, patch_scores, scores_from_record
from lastvit.analysis.suite import Diagnosis, diagnose
from lastvit.analysis.votes import threshold_votes, vote_maps

__all__ = [
    "Diagnosis",
    "PiBMeter",
    "auroc",
    "block_attention",
    "box_cells",
    "cls_attention_maps",
    "diagnose",
    "convnet_patch_scores",
    "encode_kept",
    "evaluate_pib",
    "foreground_patches",
    "foreground_pca_rgb",
    "foreground_share",
    "forward_kept",
    "global_representation",
    "layer_summary",
    "masking_probe",
    "normalise_scores",
    "outlier_stats",
    "outlier_threshold",
    "patch_scores",
    "pca_basis",
    "pca_rgb",
    "per_image_scores",
    "pixel_mask",
    "point_in_box",
    "run_masking_probe",
    "score_distributions",
    "scores_from_record",
    "threshold_votes",
    "token_norms",
    "vote_maps",
]
