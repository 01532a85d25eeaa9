"""lastvit: the reference implementation of LaSt-ViT (LazyStrike) from "Vision Transformers Need More Than
Registers" (Shi, Yu, Yang; CVPR 2026): the readout, models, training, diagnostics and evaluations."""

from lastvit.aggregate import AttentionPool, ClsToken, LazyStrike, MaxPool, MeanPool, build_aggregator
from lastvit.checkpoints import LoadOptions, load_checkpoint, read_checkpoint, save_checkpoint
from lastvit.factory import create_model
from lastvit.models import LastViT, TokenRecord

__version__ = "0.1.0"


__all__ = [
    "AttentionPool",
    "ClsToken",
    "LastViT",
    "LazyStrike",
    "LoadOptions",
    "MaxPool",
    "MeanPool",
    "TokenRecord",
    "build_aggregator",
    "create_model",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "__version__",
]
