"""Fixtures shared by the whole suite: tiny random models built in memory (nothing is downloaded).

- ``micro_vit``: a factory for ``vit_micro_patch8_64`` LastViTs (seeded, eval mode, 5 classes unless told).
- ``manual_encode``: the micro ViT's encoder written out by hand (an independent reference for the token path).
- ``tiny_text_clips``: places the two tiny (untrained) text-supervised CLIPs the OV-detection miniature would train
  into its cache (``tiny_text_clips(cache, seed)``).
- ``ckpt_builders``: the module ``tests/checkpoints/_builders.py`` (torchvision / timm / open_clip models and an
  OpenAI TorchScript archive, in those libraries' real layouts).

The suite runs with ``--import-mode=importlib`` (pyproject.toml), so test folders are not on ``sys.path``: shared
helpers are handed to tests as fixtures rather than imported.
"""

from __future__ import annotations

import importlib.util
import pathlib
import types
from collections.abc import Callable

import pytest
import torch

import lastvit

_BUILDERS = pathlib.Path(__file__).parent / "checkpoints" / "_builders.py"


def _micro_vit(aggregator: str = "lazystrike", seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    kw.setdefault("num_classes", 5)
    return lastvit.create_model("vit_micro_patch8_64", aggregator=aggregator, **kw).eval()


def _manual_encode(model, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The encoder by hand: conv patch embedding, + pos embed, [cls, regs, kept patches], blocks, final norm."""
    enc = model.encoder
    b = images.shape[0]
    x = enc.patch_embed.proj(images).flatten(2).transpose(1, 2)  # (B, N, D)
    p = enc.num_prefix_tokens
    pos = enc.pos_embed  # (1, 1 + N, D) cls slot first (no_embed_class False, no registers here)
    assert not enc.no_embed_class and enc.num_reg_tokens == 0
    x = x + pos[:, 1:]
    cls = enc.cls_token.expand(b, -1, -1) + pos[:, :1]
    if keep is not None:
        x = torch.stack([x[i, keep[i]] for i in range(b)])
    x = torch.cat([cls, x], dim=1)
    assert p == 1
    for blk in enc.blocks:
        x = blk(x)
    return enc.norm(x)


@pytest.fixture(scope="session")
def micro_vit() -> Callable[..., torch.nn.Module]:
    """``micro_vit(aggregator="lazystrike", seed=0, **create_model_kwargs)`` -> a seeded micro LastViT in eval mode."""
    return _micro_vit


@pytest.fixture(scope="session")
def manual_encode() -> Callable[..., torch.Tensor]:
    """``manual_encode(model, images, keep=None)`` -> the micro ViT's normed tokens, computed by hand."""
    return _manual_encode


@pytest.fixture(scope="session")
def ckpt_builders() -> types.ModuleType:
    """The third-party model builders of ``tests/checkpoints/_builders.py``, loaded once per session."""
    spec = importlib.util.spec_from_file_location("_ckpt_builders", _BUILDERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_text_clips(cache: pathlib.Path, seed: int, suffix: str = "_quick") -> None:
    from lastvit.checkpoints import save_clip
    from lastvit.models.clip import CLIP

    for readout in ("cls", "lazystrike"):
        torch.manual_seed(0)
        clip = CLIP({"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2},
                    {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}, 16,
                    aggregator=readout)
        save_clip(clip, pathlib.Path(cache) / f"clip_{readout}_s{seed}{suffix}" / "model.pt")


@pytest.fixture
def tiny_text_clips() -> Callable[..., None]:
    return _tiny_text_clips
