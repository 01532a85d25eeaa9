"""DINO (Caron et al., 2021) parts for self-supervised LaSt-ViT: projection head, multi-crop wrapper, loss, EMA.

The backbone is a :class:`~lastvit.models.LastViT` without head; its *readout* (LazyStrike, CLS token, mean ...)
gives the pooled token that the DINO head projects, for the student and for the EMA teacher alike.

* :class:`DINOHead`: MLP (``nlayers`` linear layers, GELU, hidden 2048) to a bottleneck (256), L2-normalise, then a
  weight-normalised bias-free linear layer to ``out_dim`` prototypes. Parameter names follow the official
  repository (``mlp.0``, ``mlp.2``, ``mlp.4``; a 1-layer head is a bare ``mlp`` Linear, ``mlp.weight``;
  ``last_layer.weight_g``, ``last_layer.weight_v``), so a DINO checkpoint's head reads into it unchanged. With
  ``norm_last_layer`` (default True, the official default) the norm ``weight_g`` is fixed to 1.
* :class:`MultiCropWrapper`: runs the backbone once per run of consecutive same-resolution crops and the head once
  on all pooled tokens. LazyStrike's ``k`` given as a fraction resolves per crop size (``resolve_k``); an optional
  separate readout for local crops (``local_aggregator``) can set another K for them.
* :class:`DINOLoss`: cross-entropy between the sharpened, centred teacher distributions of the global crops and the
  student distributions of every crop except the same view; the centre is an EMA of teacher outputs.
* :func:`ema_update`: ``teacher <- m * teacher + (1 - m) * student``, parameter by parameter, without gradient.
* :func:`dino_state_dict`: a wrapper's state in the official layout (``backbone.<timm keys>``, ``head.*``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lastvit.aggregate import build_aggregator
from lastvit.models.vit import LastViT

__all__ = [
    "WeightNormLinear",
    "DINOHead",
    "MultiCropWrapper",
    "DINOLoss",
    "ema_update",
    "teacher_temp_schedule",
    "dino_state_dict",
    "build_local_aggregator",
]


class WeightNormLinear(nn.Module):
    """Bias-free linear layer ``y = x (g * v / |v|)^T`` with the row norm ``g`` and direction ``v`` as parameters.

    The same operator and parameter names (``weight_g`` (out, 1), ``weight_v`` (out, in)) as
    ``torch.nn.utils.weight_norm(nn.Linear(in, out, bias=False))``, the layer DINO uses as its last layer.
    """

    def __init__(self, in_features: int, out_features: int, fix_norm: bool = True) -> None:
        super().__init__()
        lin = nn.Linear(in_features, out_features, bias=False)  # nn.Linear's default init, as DINO's last layer
        self.weight_v = nn.Parameter(lin.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_g.requires_grad_(not fix_norm)
        self.in_features, self.out_features = in_features, out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class DINOHead(nn.Module):
    """DINO projection head: MLP -> bottleneck -> L2-normalise -> weight-normalised prototypes (``out_dim``)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead: nlayers must be >= 1, got {nlayers}")
        self.nlayers = nlayers
        if nlayers == 1:  # the official head: a bare Linear, keys mlp.weight / mlp.bias
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        # lastvit files written before the 1-layer head followed the official layout name it mlp.0.*
        if self.nlayers == 1:
            for name in ("weight", "bias"):
                old = f"{prefix}mlp.0.{name}"
                if old in state_dict and f"{prefix}mlp.{name}" not in state_dict:
                    state_dict[f"{prefix}mlp.{name}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MultiCropWrapper(nn.Module):
    """Backbone (a head-less :class:`LastViT`) + :class:`DINOHead` over a list of crops.

    ``forward(crops)`` concatenates consecutive crops of equal size, runs the backbone once per size (its
    readout pools each crop's own patches, so a fractional LazyStrike ``k`` resolves per crop size), and
    returns the head's outputs for all crops in order, ``(sum_i B_i, out_dim)``. With ``local_aggregator``
    the crops smaller than the first (global) crop are pooled by that readout instead.
    """

    def __init__(self, backbone: LastViT, head: nn.Module, local_aggregator: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.local_aggregator = local_aggregator

    def pooled(self, crops: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Pooled tokens of all crops, in order: ``(sum_i B_i, D)``."""
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        if not crops:
            raise ValueError("MultiCropWrapper: no crops given")
        sizes = [tuple(c.shape[-2:]) for c in crops]
        out, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and sizes[end] == sizes[start]:
                end += 1
            x = torch.cat(list(crops[start:end]))
            is_local = self.local_aggregator is not None and math.prod(sizes[start]) < math.prod(sizes[0])
            if is_local:
                prefix, patches = self.backbone.split(self.backbone.encode(x))
                out.append(self.local_aggregator(patches, prefix))
            else:
                out.append(self.backbone.forward_tokens(x).pooled)
            start = end
        return torch.cat(out)

    def forward(self, crops: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(crops))


def build_local_aggregator(backbone: LastViT, kwargs: dict | None) -> nn.Module | None:
    """A readout of the backbone's kind with other options (e.g. another K) for local crops, or None."""
    if not kwargs:
        return None
    if backbone.aggregator_name.lower() != "lazystrike":
        raise ValueError(f"local_aggregator_kwargs applies to the lazystrike readout, not {backbone.aggregator_name!r}")
    return build_aggregator(backbone.aggregator_name, backbone.embed_dim, **{**backbone.aggregator_kwargs, **kwargs})


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Per-epoch teacher temperature: linear ``warmup_temp -> temp`` over ``warmup_epochs``, then constant."""
    warm = np.linspace(warmup_temp, temp, warmup_epochs) if warmup_epochs > 0 else np.zeros(0)
    return np.concatenate([warm, np.full(max(epochs - warmup_epochs, 0), temp)])


class DINOLoss(nn.Module):
    """DINO's self-distillation loss with teacher centring and sharpening.

    ``forward(student_out, teacher_out, epoch)``: ``student_out`` is ``(ncrops * B, K)`` (the two global crops
    first), ``teacher_out`` ``(2 * B, K)`` for the global crops. Teacher probabilities are
    ``softmax((t - center) / T_teacher(epoch))``, student log-probabilities ``log_softmax(s / T_student)``;
    the loss is the mean over (teacher view ``i``, student view ``j != i``) pairs of the batch-mean
    cross-entropy. Afterwards the centre moves: ``c <- m c + (1 - m) mean_batch(teacher_out)``.
    """

    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        epochs: int = 100,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        n_global: int = 2,
    ) -> None:
        super().__init__()
        if ncrops < n_global:
            raise ValueError(f"DINOLoss: ncrops ({ncrops}) must be >= the number of global crops ({n_global})")
        self.ncrops, self.n_global = ncrops, n_global
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temps = teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs,
                                                   epochs)
        self.final_teacher_temp = teacher_temp

    def teacher_temp(self, epoch: int) -> float:
        return float(self.teacher_temps[epoch]) if epoch < len(self.teacher_temps) else self.final_teacher_temp

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        s = (student_out.float() / self.student_temp).chunk(self.ncrops)
        t = teacher_out.detach().float()
        q = F.softmax((t - self.center) / self.teacher_temp(epoch), dim=-1).chunk(self.n_global)
        total, terms = student_out.new_zeros((), dtype=torch.float32), 0
        for iq, qi in enumerate(q):
            for v in range(self.ncrops):
                if v == iq:
                    continue
                total = total + torch.sum(-qi * F.log_softmax(s[v], dim=-1), dim=-1).mean()
                terms += 1
        self.update_center(t)
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """EMA of the batch mean of teacher outputs (averaged over processes when distributed)."""
        batch_sum = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher_out.shape[0]), device=teacher_out.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_sum)
            torch.distributed.all_reduce(count)
        batch_center = batch_sum / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student`` for every parameter (no gradient)."""
    tp, sp = list(teacher.parameters()), list(student.parameters())
    if len(tp) != len(sp):
        raise ValueError(f"ema_update: teacher has {len(tp)} parameters, student {len(sp)}")
    torch._foreach_mul_(tp, momentum)
    torch._foreach_add_(tp, [p.detach() for p in sp], alpha=1.0 - momentum)


def dino_state_dict(wrapper: MultiCropWrapper, prefix: str = "") -> dict[str, torch.Tensor]:
    """The wrapper's weights in the official DINO layout: ``{prefix}backbone.<timm keys>``, ``{prefix}head.*``.

    The encoder's timm keys are written as they are (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
    ``blocks.i.*``, ``norm.*``); a readout with parameters (``attn``) adds ``backbone.aggregator.*``.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in wrapper.backbone.encoder.state_dict().items():
        out[f"{prefix}backbone.{k}"] = v.detach().cpu().clone()
    for k, v in wrapper.backbone.aggregator.state_dict().items():
        out[f"{prefix}backbone.aggregator.{k}"] = v.detach().cpu().clone()
    for k, v in wrapper.head.state_dict().items():
        out[f"{prefix}head.{k}"] = v.detach().cpu().clone()
    return out
