"""Models: ``LastViT`` (timm ViT encoder + readout + head), CLIP and DINO parts. ``create_model`` (which also reads
checkpoint files) lives one floor up, in :mod:`lastvit.factory`."""

from lastvit.models.arch import arch_from_timm, resolve_arch
from lastvit.models.vit import ARCH_DEFAULTS, PRESETS, LastViT, TokenRecord, as_vit, build_encoder

__all__ = ["ARCH_DEFAULTS", "PRESETS", "LastViT", "TokenRecord", "arch_from_timm", "as_vit", "build_encoder",
           "resolve_arch"]
