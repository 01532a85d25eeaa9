"""Checkpoints: detect a file's format, convert it to LastViT keys, load it with a key report, and write
lastvit's own format. Loading is safe by default: ``torch.load(weights_only=True)`` with an allow-list of harmless
types (:func:`allowed_globals`); anything else needs ``allow_pickle=True``.

Formats (``FORMATS``): ``lastvit``, ``torchvision``, ``detectron2`` (the LaSt-ViT label-supervised release),
``dino`` (training checkpoints; DINO/DINOv2 backbone-only files are ``timm``), ``timm``, ``open_clip``, ``openai``.
See docs/checkpoints.md.
"""

from lastvit.checkpoints.api import (
    apply_converted,
    build_from_checkpoint,
    build_from_converted,
    load_checkpoint,
    read_checkpoint,
)
from lastvit.checkpoints.arch_from_weights import default_num_heads, infer_arch
from lastvit.checkpoints.clip import ClipLoadError, clip_from_converted, load_clip, load_into_clip, save_clip
from lastvit.checkpoints.formats import FORMATS, detect_format
from lastvit.checkpoints.options import POS_INTERP, LoadOptions, arch_config
from lastvit.checkpoints.read import allowed_globals, load_raw, safe_torch_load
from lastvit.checkpoints.records import (
    ArchitectureGuessWarning,
    CheckpointError,
    CheckpointNotFoundError,
    ConvertedCheckpoint,
    LoadReport,
)
from lastvit.checkpoints.write import atomic_torch_save, save_checkpoint

__all__ = [
    "FORMATS",
    "POS_INTERP",
    "ArchitectureGuessWarning",
    "ClipLoadError",
    "LoadOptions",
    "allowed_globals",
    "arch_config",
    "clip_from_converted",
    "load_clip",
    "load_into_clip",
    "safe_torch_load",
    "save_clip",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConvertedCheckpoint",
    "LoadReport",
    "apply_converted",
    "atomic_torch_save",
    "build_from_checkpoint",
    "build_from_converted",
    "default_num_heads",
    "detect_format",
    "infer_arch",
    "load_checkpoint",
    "load_raw",
    "read_checkpoint",
    "save_checkpoint",
]
