"""``create_model``: build a ``LastViT`` by name, by architecture keys, or from a checkpoint file of any format.

This floor stands above :mod:`lastvit.models` (the model classes) and :mod:`lastvit.checkpoints` (file formats): a
model class never reads files, the file reader hands a converted checkpoint to the classes.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lastvit.checkpoints import LoadOptions, build_from_checkpoint
from lastvit.models.arch import resolve_arch
from lastvit.models.vit import LastViT

__all__ = ["create_model"]

def create_model(
    name: str | None = None,
    *,
    aggregator: str | None = None,
    num_classes: int | None = None,
    checkpoint: str | None = None,
    format: str = "auto",
    strict: bool = True,
    head: str | None = None,
    head_dim: int | None = None,
    aggregator_kwargs: dict[str, Any] | None = None,
    drop_path_rate: float = 0.0,
    quick_gelu: bool | None = None,
    visual_only: bool = False,
    verbose: bool = False,
    options: LoadOptions | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a LaSt-ViT (or any-readout ViT) model.

    Args:
        name: a lastvit preset (``lastvit.models.PRESETS``) or any timm ViT name; ``None`` with a checkpoint
            infers the architecture from the file.
        aggregator: ``"lazystrike"`` (default), ``"cls"``, ``"mean"``, ``"max"`` or ``"attn"``. A lastvit
            checkpoint brings its own readout unless this is given.
        num_classes: size of the linear head (0: no head, the model returns the pooled token).
        checkpoint: a local file in any supported format (see :func:`lastvit.load_checkpoint`).
        format / strict: passed to the checkpoint loader.
        head: ``"linear"`` | ``"proj"`` (bias-free projection, CLIP image towers) | ``"none"``.
        aggregator_kwargs: options of the readout, e.g. ``{"k": 7}`` for LazyStrike.
        quick_gelu: activation override for checkpoints (OpenAI CLIP towers use QuickGELU).
        visual_only: for a whole-CLIP checkpoint, build only the image tower (a LastViT).
        options: a :class:`lastvit.checkpoints.LoadOptions` for the checkpoint (the keywords here replace its
            fields).
        **kwargs: architecture keys (``img_size``, ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``,
            ``reg_tokens``, ``window_size`` ...), see ``lastvit.models.ARCH_DEFAULTS``; with a checkpoint also the
            other :class:`~lastvit.checkpoints.LoadOptions` fields.

    With ``checkpoint=``, ``num_heads=`` / ``text_heads=`` (or ``arch="ViT-B-16"``, an open_clip model name or
    config JSON) fix head counts that weights do not record (the default guess is width / 64, reported as an
    ``ArchitectureGuessWarning``), ``dino_branch="student"`` picks the DINO student, ``allow_pickle=True`` opts in
    to unpickling objects off the allow-list (trusted files only) and ``pos_interp=`` overrides the
    position-embedding family. A whole-CLIP checkpoint returns a :class:`lastvit.models.clip.CLIP` unless
    ``visual_only=True``.
    """
    if checkpoint is None:
        if options is not None:
            raise TypeError("create_model: options= applies to a checkpoint; pass checkpoint=... too")
        arch = resolve_arch(name, kwargs)
        if quick_gelu is not None:
            arch["act"] = "quick_gelu" if quick_gelu else "gelu"
        return LastViT(
            arch,
            aggregator=aggregator or "lazystrike",
            aggregator_kwargs=dict(aggregator_kwargs or {}),
            num_classes=1000 if num_classes is None else num_classes,
            head=head or "linear",
            head_dim=head_dim,
            drop_path_rate=drop_path_rate,
            name=name,
        )
    given = dict(name=name, aggregator=aggregator, aggregator_kwargs=aggregator_kwargs, num_classes=num_classes,
                 head=head, head_dim=head_dim, quick_gelu=quick_gelu)
    fields: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if options is None or format != "auto":
        fields["format"] = format
    if options is None or not strict:
        fields["strict"] = strict
    if options is None or drop_path_rate:
        fields["drop_path_rate"] = drop_path_rate
    if options is None or visual_only:
        fields["visual_only"] = visual_only
    if options is None or verbose:
        fields["verbose"] = verbose
    return build_from_checkpoint(checkpoint, options, **fields, **kwargs)
