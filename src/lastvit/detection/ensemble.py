"""The test-time geometric ensemble of the detector's class probabilities with the frozen CLIP's region scores.

Columns are ``[class_0 .. class_{C-1}, background]``; ``novel`` is a boolean mask over the C classes.

* ``"fvit"`` (F-ViT / CLIPSelf ``FViTBBoxHead.forward``, the default): ``p_det = softmax(det_logits)``,
  ``p_vlm = softmax(vlm_logits)``; base columns AND background get ``p_det^(1-alpha) * p_vlm^alpha``, novel
  columns ``p_det^(1-beta) * p_vlm^beta``; no renormalisation.
* ``"fvlm"`` (F-VLM ``task_heads.py``): the same geometric mean with ``alpha`` (base) and ``beta`` (novel) on the
  class columns, but the background probability is the detector's alone, and every row is renormalised to sum 1.
"""

from __future__ import annotations

import torch

__all__ = ["ENSEMBLES", "ensemble_scores"]

ENSEMBLES = ("fvit", "fvlm", "none")


def ensemble_scores(det_logits: torch.Tensor, vlm_logits: torch.Tensor | None, novel: torch.Tensor, *,
                    alpha: float, beta: float, mode: str = "fvit") -> torch.Tensor:
    """Ensembled probabilities (R, C + 1) from detector logits and CLIP region logits (R, C + 1), both with the
    background column last. ``mode="none"`` (or no ``vlm_logits``) returns the detector's softmax."""
    if mode not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {mode!r}; choose from {ENSEMBLES}")
    p_det = det_logits.float().softmax(-1)
    if mode == "none" or vlm_logits is None:
        return p_det
    if vlm_logits.shape != det_logits.shape:
        raise ValueError(f"ensemble: detector logits {tuple(det_logits.shape)} and CLIP logits "
                         f"{tuple(vlm_logits.shape)} differ in shape")
    c = det_logits.shape[-1] - 1
    novel = torch.as_tensor(novel, dtype=torch.bool, device=det_logits.device)
    if novel.shape != (c,):
        raise ValueError(f"ensemble: novel mask has shape {tuple(novel.shape)}, expected ({c},)")
    p_vlm = vlm_logits.float().softmax(-1)
    w = torch.full((c + 1,), float(alpha), device=det_logits.device)
    w[:c][novel] = float(beta)
    out = p_det.pow(1 - w) * p_vlm.pow(w)
    if mode == "fvlm":
        out[:, c] = p_det[:, c]
        out = out / out.sum(-1, keepdim=True).clamp_min(1e-12)
    return out
