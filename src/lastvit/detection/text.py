"""Class text embeddings for any vocabulary (the detector's fixed classifier), cached on disk.

CLIPSelf's recipe (``F-ViT/tools/clip_utils.py``): each name is processed (``_`` -> space, ``/`` -> " or ",
lower case, trailing dots removed), put into the 63 templates of ``resources/ovdet/clipself_templates.txt``
(``{article}`` is "an" before a vowel, else "a"), and "This is " is prepended to every prompt that starts with "a"
or "the"; the per-prompt embeddings are normalised, averaged and normalised again. A ``"background"`` row is added
last, built the same way. ``templates="imagenet"`` uses the project's 80 ImageNet templates (no "This is ");
a list of strings or a text file (one template per line, ``{}`` = the name) uses those.

The cache file is ``<cache_dir>/<key>.pt`` with ``key`` = sha256 of the text tower's weights, the names and the
prompts, so a different tower or vocabulary never reads a stale file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lastvit.io import atomic_write

__all__ = ["load_vocabulary", "process_name", "article", "prompts_for", "text_tower_hash", "class_text_embeddings",
           "read_names"]


def read_names(name: str) -> list[str]:
    """A class list shipped in ``resources/ovdet/<name>.txt`` (``coco_base``, ``coco_novel``)."""
    text = resources.files("lastvit").joinpath("resources", "ovdet", f"{name}.txt").read_text(encoding="utf-8")
    return [s.strip() for s in text.splitlines() if s.strip()]


def process_name(name: str) -> str:
    """CLIPSelf's name processing: ``_`` -> space, ``/`` -> " or ", lower case, trailing dots removed."""
    return name.replace("_", " ").replace("/", " or ").lower().rstrip(".")


def article(name: str) -> str:
    return "an" if name[:1] in "aeiou" and name else "a"


def load_vocabulary(templates: str | Sequence[str]) -> tuple[list[str], bool]:
    """(templates, clipself_style) from ``"clipself"``, ``"imagenet"``, a file path or a list."""
    if isinstance(templates, str):
        if templates in ("clipself", "imagenet"):
            sub = ("ovdet", "clipself_templates.txt") if templates == "clipself" else ("imagenet_templates.txt",)
            text = resources.files("lastvit").joinpath("resources", *sub).read_text(encoding="utf-8")
            out = [s.strip() for s in text.splitlines() if s.strip()]
            return out, templates == "clipself"
        p = Path(templates)
        if not p.is_file():
            raise FileNotFoundError(f"{templates}: not a template file (nor 'clipself' / 'imagenet')")
        out = [s.strip() for s in p.read_text(encoding="utf-8").splitlines() if s.strip()]
        if not out:
            raise ValueError(f"{templates}: no templates in the file")
    else:
        out = list(templates)
    bad = [t for t in out if "{}" not in t]
    if bad:
        raise ValueError(f"template {bad[0]!r} has no '{{}}' placeholder for the class name")
    return out, False


def prompts_for(name: str, templates: Sequence[str], clipself: bool) -> list[str]:
    """The prompts of one class name (CLIPSelf style: article filled, "This is " prepended to "a"/"the" prompts)."""
    n = process_name(name) if clipself else name
    texts = [t.replace("{article}", article(n)).replace("{}", n) for t in templates]
    if clipself:
        texts = ["This is " + t if t.startswith("a") or t.startswith("the") else t for t in texts]
    return texts


def text_tower_hash(clip: Any) -> str:
    """sha256 over the text tower's tensors (names, shapes, bytes), hex."""
    h = hashlib.sha256()
    for k, v in sorted(clip.text.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@torch.no_grad()
def class_text_embeddings(clip: Any, names: Sequence[str], templates: str | Sequence[str] = "clipself", *,
                          background: bool = True, cache_dir: str | os.PathLike | None = None,
                          batch_size: int = 256) -> torch.Tensor:
    """(C [+ 1], E) normalised embeddings of ``names`` (plus ``"background"`` last) from the text tower of ``clip``."""
    tmpl, clipself = load_vocabulary(templates)
    allnames = list(names) + (["background"] if background else [])
    prompts = [prompts_for(n, tmpl, clipself) for n in allnames]
    path = None
    if cache_dir is not None:
        h = hashlib.sha256(text_tower_hash(clip).encode())
        for ps in prompts:
            h.update(("\x1f".join(ps) + "\x1e").encode())
        path = Path(cache_dir) / f"text_{h.hexdigest()[:32]}.pt"
        if path.is_file():
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if obj.get("names") == allnames:
                return obj["embeddings"]
    was = clip.training
    clip.eval()
    rows = []
    for ps in prompts:
        embs = torch.cat([clip.encode_text(clip.tokenize(ps[i: i + batch_size]), normalize=True)
                          for i in range(0, len(ps), batch_size)])
        rows.append(F.normalize(embs.float().mean(0), dim=-1))
    clip.train(was)
    out = torch.stack(rows).cpu()
    if path is not None:
        import io as _io

        buf = _io.BytesIO()
        torch.save({"names": allnames, "embeddings": out}, buf)
        atomic_write(path, buf.getvalue())
    return out
