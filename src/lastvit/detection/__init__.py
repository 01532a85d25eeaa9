"""Open-vocabulary detection and instance segmentation (paper Table 5): F-ViT on a frozen LaSt-ViT CLIP.

See docs/ovdet.md. Modules: :mod:`~lastvit.detection.backbone` (frozen taps + simple pyramid),
:mod:`~lastvit.detection.model` (the detector and its torchvision overrides), :mod:`~lastvit.detection.ensemble`,
:mod:`~lastvit.detection.text` (class text embeddings), :mod:`~lastvit.detection.data` (COCO/LVIS JSON datasets,
large-scale jitter), :mod:`~lastvit.detection.splits` (OV-COCO / OV-LVIS split makers),
:mod:`~lastvit.detection.metrics`, :mod:`~lastvit.detection.evaluate`. The CPU miniature is
:mod:`lastvit.ovdet_miniature` (a story, above training); the commands are in :mod:`lastvit.cli._ovdet`.
"""

from lastvit.detection.ensemble import ensemble_scores
from lastvit.detection.model import DETECTOR_DEFAULTS, FViTDetector, build_fvit

__all__ = ["DETECTOR_DEFAULTS", "FViTDetector", "build_fvit", "ensemble_scores"]
