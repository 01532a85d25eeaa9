"""Format detection and conversion of every supported checkpoint layout to LastViT keys.

Every converter turns the file into timm encoder names (``encoder.*``) plus ``head.*``, records what it skipped
(trainer state, DINO head, CLIP text tower) and infers the architecture from the weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from lastvit.checkpoints.arch_from_weights import default_num_heads, infer_arch
from lastvit.checkpoints.records import CheckpointError, ConvertedCheckpoint

__all__ = ["FORMATS", "FORMAT_ALIASES", "detect_format", "convert", "normalise_format"]

FORMATS: dict[str, str] = {
    "lastvit": "lastvit's own file (config + state_dict + extra)",
    "torchvision": "torchvision VisionTransformer state dict",
    "detectron2": "LaSt-ViT label-supervised release: detectron2 checkpoint of a torchvision ViT",
    "dino": "DINO training checkpoint (student / teacher, backbone + DINO head)",
    "timm": "timm VisionTransformer state dict (also DINO / DINOv2 backbone-only files)",
    "open_clip": "open_clip CLIP state dict or open_clip training checkpoint (ViT towers; EVA-02 towers as "
                 "visual.trunk.* of a timm Eva)",
    "eva_clip": "BAAI EVA-CLIP file (EVA repo layout: visual.blocks.N.attn.q_proj / q_bias / v_bias / "
                "inner_attn_ln, mlp.w1 / w2 / w3 / ffn_ln; text.* tower)",
    "openai": "OpenAI CLIP file (TorchScript archive or plain state dict)",
}
FORMAT_ALIASES = {
    "auto": "auto",
    "release": "detectron2",
    "lastvit-release": "detectron2",
    "dino-backbone": "timm",
    "dinov2": "timm",
    "openclip": "open_clip",
    "open-clip": "open_clip",
    "clip": "open_clip",
    "tv": "torchvision",
    "eva": "eva_clip",
    "eva-clip": "eva_clip",
    "evaclip": "eva_clip",
}

TRAINER_KEYS = ("optimizer", "scheduler", "lr_scheduler", "iteration", "epoch", "args", "dino_loss", "name",
                "scaler", "grad_scaler", "step", "global_step", "trainer", "cfg", "config", "version",
                "pytorch-lightning_version", "loops", "callbacks", "optimizer_states", "lr_schedulers",
                "hparams_name", "hyper_parameters", "ema", "model_ema", "amp")

TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection",
             "logit_scale", "logit_bias", "attn_mask")
OPENAI_META = ("input_resolution", "context_length", "vocab_size")
#: how the note of a guessed CLIP activation begins (a guess: ``ConvertedCheckpoint.guesses``)
ACTIVATION_GUESS = "the activation is not recorded in CLIP files"


def normalise_format(fmt: str) -> str:
    f = FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if f != "auto" and f not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose auto or one of {sorted(FORMATS)}")
    return f


# ---------------------------------------------------------------------------------------------- helpers
def _tensors(d: Mapping) -> dict[str, torch.Tensor]:
    return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}


def _strip(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def _strip_module(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Remove DDP / EMA wrappers (``module.``, ``_orig_mod.``) at the start of every key."""
    out = {}
    for k, v in sd.items():
        while True:
            for p in ("module.", "_orig_mod."):
                if k.startswith(p):
                    k = k[len(p):]
                    break
            else:
                break
        out[k] = v
    return out


def _find_prefix(keys: list[str], anchor: str) -> str | None:
    """The prefix under which ``anchor`` appears (shortest), or None."""
    found = [k[: -len(anchor)] for k in keys if k.endswith(anchor)]
    return min(found, key=len) if found else None


def _is_torchvision(keys: list[str]) -> str | None:
    p = _find_prefix(keys, "conv_proj.weight")
    if p is None:
        p = _find_prefix(keys, "encoder.layers.encoder_layer_0.ln_1.weight")
    return p


def _model_payload(obj: Mapping) -> tuple[str | None, Mapping | None]:
    for key in ("model", "state_dict", "model_state_dict", "model_ema", "net", "module"):
        v = obj.get(key)
        if isinstance(v, Mapping) and any(isinstance(t, torch.Tensor) for t in v.values()):
            return key, v
    return None, None


def _trainer_keys(obj: Mapping, payload_key: str | None) -> list[str]:
    return [k for k in obj if k != payload_key]


# ---------------------------------------------------------------------------------------------- detection
def detect_format(obj: Any, path: str) -> str:
    """The format of a loaded checkpoint object (see :data:`FORMATS`)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dictionary")
    if not obj:
        raise CheckpointError(f"{path}: empty dictionary, no tensors")
    if obj.get("format") == "lastvit":
        return "lastvit"
    if isinstance(obj.get("teacher"), Mapping) or isinstance(obj.get("student"), Mapping):
        return "dino"
    key, payload = _model_payload(obj)
    sd = payload if payload is not None else obj
    keys = list(_strip_module(sd))
    if not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {sorted(map(str, obj))[:8]})")
    if any(k.endswith("visual.trunk.patch_embed.proj.weight") for k in keys):
        return "open_clip"  # an open_clip CLIP with a timm image tower (EVA-02: CustomTextCLIP, text.*)
    if any(k.endswith("visual.patch_embed.proj.weight") for k in keys) and _eva_layout(keys):
        return "eva_clip"
    if any(k.endswith("visual.conv1.weight") or k.endswith("visual.class_embedding") for k in keys) or (
        "conv1.weight" in keys and "class_embedding" in keys
    ):
        return "openai" if any(m in keys for m in OPENAI_META) else "open_clip"
    if any(k.startswith("visual.layer1.") or k == "visual.attnpool.c_proj.weight" for k in keys):
        raise CheckpointError(f"{path}: a ResNet CLIP (ModifiedResNet image tower), not a ViT")
    tv = _is_torchvision(keys)
    if tv is not None:
        return "detectron2" if key == "model" and tv.startswith("model.") else "torchvision"
    if _find_prefix(keys, "patch_embed.proj.weight") is not None:
        return "timm"
    raise CheckpointError(f"{path}: unrecognised checkpoint layout, no known patch-embedding key "
                          f"(first keys: {', '.join(map(str, keys[:5]))})")


def _eva_layout(keys: list[str]) -> bool:
    """EVA blocks: separate q/k/v projections, q/v biases, SwiGLU (timm fc1_g / BAAI w1) or sub-LN names."""
    marks = (".attn.q_proj.weight", ".attn.q_bias", ".mlp.fc1_g.weight", ".mlp.w1.weight", ".attn.inner_attn_ln.weight")
    return any(re.search(r"blocks\.0" + re.escape(m) + "$", k) for k in keys for m in marks)


# ---------------------------------------------------------------------------------------------- converters
_TV_BLOCK = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$")
_TV_BLOCK_MAP = {
    "ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
    "self_attention.in_proj_weight": "attn.qkv.weight", "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.weight": "attn.proj.weight", "self_attention.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
    "mlp.0.weight": "mlp.fc1.weight", "mlp.0.bias": "mlp.fc1.bias",
    "mlp.3.weight": "mlp.fc2.weight", "mlp.3.bias": "mlp.fc2.bias",
    "mlp.linear_1.weight": "mlp.fc1.weight", "mlp.linear_1.bias": "mlp.fc1.bias",
    "mlp.linear_2.weight": "mlp.fc2.weight", "mlp.linear_2.bias": "mlp.fc2.bias",
}
_TV_TOP = {
    "conv_proj.weight": "patch_embed.proj.weight", "conv_proj.bias": "patch_embed.proj.bias",
    "class_token": "cls_token", "encoder.pos_embedding": "pos_embed",
    "encoder.ln.weight": "norm.weight", "encoder.ln.bias": "norm.bias",
}


def _assemble(ckpt: ConvertedCheckpoint, enc: dict[str, torch.Tensor], head: dict[str, torch.Tensor],
            *, norm_eps: float, act: str, head_kind: str = "linear") -> ConvertedCheckpoint:
    ckpt.arch = infer_arch(enc, ckpt.path, norm_eps=norm_eps, act=act, notes=ckpt.notes)
    ckpt.state_dict = {f"encoder.{k}": v for k, v in enc.items()}
    if head:
        w = head.get("weight")
        if w is None or w.ndim != 2 or w.shape[1] != ckpt.arch["embed_dim"]:
            ckpt.unmapped.extend(f"head.{k}" for k in head)
        else:
            ckpt.state_dict.update({f"head.{k}": v for k, v in head.items()})
            ckpt.head = (head_kind, int(w.shape[0]))
    return ckpt


def _convert_torchvision(sd: Mapping[str, Any], ckpt: ConvertedCheckpoint) -> ConvertedCheckpoint:
    enc: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    pre_logits: list[str] = []
    for k, v in _tensors(sd).items():
        if k in _TV_TOP:
            enc[_TV_TOP[k]] = v
        elif m := _TV_BLOCK.match(k):
            sub = _TV_BLOCK_MAP.get(m.group(2))
            if sub is None:
                ckpt.unmapped.append(k)
            else:
                enc[f"blocks.{m.group(1)}.{sub}"] = v
        elif k.startswith("heads.head."):
            head[k[len("heads.head."):]] = v
        elif k.startswith("heads.pre_logits."):
            pre_logits.append(k)
        else:
            ckpt.unmapped.append(k)
    if pre_logits:
        ckpt.unsupported.append(
            "torchvision heads.pre_logits (representation_size) is not supported: a LastViT head is one Linear; "
            "strict=False drops pre_logits and the classifier head")
        ckpt.skip("pre_logits head (unsupported)", pre_logits + [f"heads.head.{k}" for k in head])
        head = {}
    return _assemble(ckpt, enc, head, norm_eps=1e-6, act="gelu")


def _convert_timm(sd: Mapping[str, Any], ckpt: ConvertedCheckpoint) -> ConvertedCheckpoint:
    sd = _tensors(sd)
    keys = list(sd)
    prefix = _find_prefix(keys, "patch_embed.proj.weight")
    if prefix is None:
        raise CheckpointError(f"{ckpt.path}: not a timm ViT state dict (no patch_embed.proj.weight)")
    # A LastViT state dict (``encoder.*``, ``head.*``, ``aggregator.*``), possibly under a wrapper prefix such as
    # the ``model.`` of a Lightning module.
    base = prefix[: -len("encoder.")] if prefix.endswith("encoder.") else None
    lastvit_sd = base is not None and (base == "" or any(
        k.startswith(base + "head.") or k.startswith(base + "aggregator.") for k in keys))
    enc: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    extra: dict[str, torch.Tensor] = {}
    if lastvit_sd:
        ckpt.notes.append("a LastViT state dict without config: architecture inferred from the weights"
                          + (f" (under the prefix {base!r})" if base else ""))
    elif prefix:
        ckpt.notes.append(f"encoder keys found under the prefix {prefix!r}")
    for k, v in sd.items():
        if not k.startswith(prefix):
            rest = k[len(base):] if lastvit_sd and k.startswith(base) else ""
            if rest.startswith("head."):
                head[rest[len("head."):]] = v
            elif rest.startswith("aggregator."):
                extra[rest] = v
            else:
                ckpt.unmapped.append(k)
            continue
        k2 = k[len(prefix):]
        if k2 in ("head.weight", "head.bias"):
            head[k2[5:]] = v
        elif k2.startswith("head.") or k2.startswith("head_dist.") or k2 == "dist_token":
            ckpt.unmapped.append(k)
        elif k2.startswith("aggregator."):  # a readout with parameters (lastvit's "attn"), e.g. in DINO exports
            extra[k2] = v
        elif k2 == "register_tokens":  # DINOv2's own name
            enc["reg_token"] = v
        elif k2 == "mask_token":
            ckpt.skip("dinov2 mask_token", k)
        else:
            enc[k2] = v
    chunked = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")  # DINOv2 block_chunks: blocks.<chunk>.<global index>.*
    if any(chunked.match(k) for k in enc) and not any(re.match(r"^blocks\.\d+\.norm1\.", k) for k in enc):
        enc = {(f"blocks.{m.group(1)}.{m.group(2)}" if (m := chunked.match(k)) else k): v for k, v in enc.items()}
        ckpt.notes.append("DINOv2 chunked blocks (blocks.<chunk>.<index>) flattened to blocks.<index>")
    if "fc_norm.weight" in enc:
        ckpt.unsupported.append(
            "timm checkpoint with fc_norm (global-average-pool model): its final norm is applied after "
            "pooling, lastvit normalises every token; strict=False maps fc_norm to the per-token final norm")
        fc = {n: enc.pop(f"fc_norm.{n}") for n in ("weight", "bias") if f"fc_norm.{n}" in enc}
        if "norm.weight" not in enc:
            enc.update({f"norm.{n}": t for n, t in fc.items()})
    if "reg_token" in enc and "register_tokens" in [k[len(prefix):] for k in sd] and "cls_token" in enc:
        # DINOv2 layout: pos_embed covers [cls] + patches; registers are inserted after the position embedding.
        pos = enc["pos_embed"]
        n_patch_sq = pos.shape[1] - 1
        if n_patch_sq > 0 and int(n_patch_sq**0.5) ** 2 == n_patch_sq:
            enc["cls_token"] = enc["cls_token"] + pos[:, :1]
            enc["pos_embed"] = pos[:, 1:].clone()
            ckpt.notes.append("DINOv2 register layout: class-token position folded into cls_token, "
                              "pos_embed covers patches only (no_embed_class=True)")
    ckpt = _assemble(ckpt, enc, head, norm_eps=1e-6, act="gelu")
    ckpt.state_dict.update(extra)
    return ckpt


def _sidecar_quick_gelu(path: str) -> tuple[bool, str] | None:
    """``model_cfg.quick_gelu`` of an ``open_clip_config.json`` beside the file (open_clip's hub layout), if any."""
    import json
    import os

    side = os.path.join(os.path.dirname(os.path.abspath(path)), "open_clip_config.json")
    if not os.path.isfile(side):
        return None
    try:
        with open(side, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{side}: not a readable open_clip config ({type(e).__name__}: {e})") from None
    model_cfg = cfg.get("model_cfg", cfg) if isinstance(cfg, dict) else None
    if not isinstance(model_cfg, dict) or not isinstance(model_cfg.get("vision_cfg"), dict):
        raise CheckpointError(f"{side}: not an open_clip config (no model_cfg.vision_cfg)")
    return bool(model_cfg.get("quick_gelu", False)), side


def _convert_clip(sd: Mapping[str, Any], ckpt: ConvertedCheckpoint, *, openai: bool,
                  quick_gelu: bool | None, path: str | None = None) -> ConvertedCheckpoint:
    sd = _strip_module(_tensors(sd))
    if "visual.conv1.weight" not in sd and "conv1.weight" in sd:
        sd = {f"visual.{k}": v for k, v in sd.items()}  # an image tower saved on its own
    side = _sidecar_quick_gelu(path) if (quick_gelu is None and not openai and path) else None
    if quick_gelu is None and openai:
        quick_gelu = True
        ckpt.notes.append("QuickGELU: every OpenAI CLIP tower uses it (the activation is not stored in the file)")
    elif quick_gelu is None and side is not None:
        quick_gelu = side[0]
        ckpt.notes.append(f"activation from the recorded config {side[1]}: {'QuickGELU' if quick_gelu else 'GELU'}")
    elif quick_gelu is None:
        quick_gelu = False
        ckpt.notes.append(
            f"{ACTIVATION_GUESS}: assumed GELU (open_clip format; MetaCLIP and other '-quickgelu' models use "
            "QuickGELU: pass quick_gelu=True / --quick-gelu or arch='ViT-B-16-quickgelu' / --arch NAME)")
    else:
        ckpt.notes.append(f"activation set by the caller: {'QuickGELU' if quick_gelu else 'GELU'}")
    act = "quick_gelu" if quick_gelu else "gelu"
    enc: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    block = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.(.+)$")
    bmap = {
        "ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
        "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
        "attn.out_proj.weight": "attn.proj.weight", "attn.out_proj.bias": "attn.proj.bias",
        "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
        "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
        "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
        "ls_1.gamma": "ls1.gamma", "ls_2.gamma": "ls2.gamma",
    }
    top = {"visual.conv1.weight": "patch_embed.proj.weight", "visual.ln_pre.weight": "norm_pre.weight",
           "visual.ln_pre.bias": "norm_pre.bias", "visual.ln_post.weight": "norm.weight",
           "visual.ln_post.bias": "norm.bias"}
    meta = []
    for k, v in sd.items():
        if k in top:
            enc[top[k]] = v
        elif k == "visual.class_embedding":
            enc["cls_token"] = v.reshape(1, 1, -1)
        elif k == "visual.positional_embedding":
            enc["pos_embed"] = v.reshape(1, v.shape[-2], v.shape[-1])
        elif k == "visual.proj":
            head["weight"] = v.t().contiguous()
        elif m := block.match(k):
            sub = bmap.get(m.group(2))
            if sub is None:
                ckpt.unmapped.append(k)
            else:
                enc[f"blocks.{m.group(1)}.{sub}"] = v
        elif k in OPENAI_META:
            meta.append(k)
        elif any(k.startswith(t) for t in TEXT_KEYS):
            text[k] = v
        else:
            ckpt.unmapped.append(k)
    ckpt.skip("openai metadata", meta)
    ckpt = _assemble(ckpt, enc, head, norm_eps=1e-5, act=act, head_kind="proj")
    ckpt.arch["pos_interp"] = "open_clip"
    ckpt.notes.append("position embeddings resample the open_clip way at other input sizes (bicubic resize of the "
                      "grid to the new size; pos_interp='open_clip', override with pos_interp=...)")
    if text:
        ckpt.skip("clip text tower", sorted(text))
        ckpt.clip = {
            "state_dict": text,
            "config": _text_config(text, ckpt, quick_gelu),
            "embed_dim": ckpt.head[1] if ckpt.head[0] == "proj" else None,
            "quick_gelu": bool(quick_gelu),
            "source": "openai" if openai else "open_clip",
        }
    return ckpt


def _text_config(text: dict[str, torch.Tensor], ckpt: ConvertedCheckpoint, quick_gelu: bool) -> dict[str, Any]:
    tok = text.get("token_embedding.weight")
    pos = text.get("positional_embedding")
    if tok is None or pos is None:
        ckpt.notes.append("CLIP text tower incomplete (no token_embedding / positional_embedding)")
        return {}
    width = int(tok.shape[1])
    layers = {int(m.group(1)) for k in text if (m := re.match(r"^transformer\.resblocks\.(\d+)\.", k))}
    tp = text.get("text_projection")
    if tp is None:
        tp_w = text.get("text_projection.weight")
        embed = int(tp_w.shape[0]) if tp_w is not None else width
    else:
        embed = int(tp.shape[1])
    fc = text.get("transformer.resblocks.0.mlp.c_fc.weight")
    heads = default_num_heads(width)
    ckpt.notes.append(f"CLIP text heads are not stored in the weights: assumed {heads} (width {width} / 64)")
    return {
        "context_length": int(pos.shape[0]),
        "vocab_size": int(tok.shape[0]),
        "width": width,
        "heads": heads,
        "layers": (max(layers) + 1) if layers else 0,
        "mlp_ratio": float(fc.shape[0]) / width if fc is not None else 4.0,
        "embed_dim": embed,
        "norm_eps": 1e-5,
        "quick_gelu": bool(quick_gelu),
    }


# BAAI EVA-CLIP (and timm fused-qkv EVA) block names -> timm Eva names (the key map of timm's
# timm.models.eva.checkpoint_filter_fn, applied to the block-relative rest of a key)
_EVA_RENAMES = (
    ("attn.inner_attn_ln.", "attn.norm."),
    ("mlp.ffn_ln.", "mlp.norm."),
    ("mlp.w1.", "mlp.fc1_g."),  # (mlp.w12 -- packed -- is handled before this table)
    ("mlp.w2.", "mlp.fc1_x."),
    ("mlp.w3.", "mlp.fc2."),
    ("attn.q_bias", "attn.q_proj.bias"),
    ("attn.v_bias", "attn.v_proj.bias"),
)
_EVA_SOURCES = {"open_clip": "visual.trunk.", "eva_clip": "visual.", "timm": ""}


def _convert_eva(sd: Mapping[str, Any], ckpt: ConvertedCheckpoint, *, source: str) -> ConvertedCheckpoint:
    """An EVA image tower (timm ``Eva`` names under ``visual.trunk.`` for open_clip, BAAI names under ``visual.``
    for EVA-CLIP, timm names for a timm file) and, for whole CLIPs, the text tower (``text.*``)."""
    sd = _tensors(sd)
    prefix = _EVA_SOURCES[source]
    if source == "eva_clip" and not any(k.startswith("visual.") for k in sd):
        prefix = ""  # an EVA-CLIP image tower saved on its own
    if source == "timm":  # a timm Eva, possibly under a prefix (open_clip's TimmModel saved alone: trunk.*)
        prefix = _find_prefix(list(sd), "patch_embed.proj.weight") or ""
        if prefix:
            ckpt.notes.append(f"EVA encoder keys found under the prefix {prefix!r}")
    enc: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    rope, fused = [], []
    block = re.compile(r"^blocks\.(\d+)\.(.+)$")
    for k, v in sd.items():
        if k.startswith("text."):
            text[k[len("text."):]] = v
            continue
        if k in ("logit_scale", "logit_bias"):
            text[k] = v
            continue
        if source == "open_clip" and k.startswith("visual.head."):
            rest = k[len("visual.head."):]
            if rest in ("proj.weight", "proj.bias"):  # timm_proj="linear": open_clip's own projection
                head[rest[len("proj."):]] = v
            else:
                ckpt.unmapped.append(k)
            continue
        if prefix and not k.startswith(prefix):
            ckpt.unmapped.append(k)
            continue
        rest = k[len(prefix):]
        if "rope" in rest.split("."):
            rope.append(k)  # fixed sin/cos tables: recomputed for the grid at run time
            continue
        if rest in ("mask_token", "lm_head.weight", "lm_head.bias"):
            ckpt.skip("EVA masked-image-modelling parts", k)
            continue
        if rest in ("head.weight", "head.bias"):
            head[rest[len("head."):]] = v
            continue
        if rest.startswith("fc_norm."):
            ckpt.unsupported.append("EVA tower with fc_norm (mean-pooling model): its final norm follows the "
                                    "pooling; lastvit normalises every token (CLIP towers use the class token)")
            ckpt.unmapped.append(k)
            continue
        m = block.match(rest)
        if m is not None:
            i, sub = m.group(1), m.group(2)
            for a, b in _EVA_RENAMES:
                if sub.startswith(a):
                    sub = b + sub[len(a):]
                    break
            if sub == "attn.qkv.weight":  # fused q/k/v (EVA-01, timm qkv_fused=True): split into projections
                q, kk, vv = v.chunk(3, dim=0)
                enc[f"blocks.{i}.attn.q_proj.weight"] = q
                enc[f"blocks.{i}.attn.k_proj.weight"] = kk
                enc[f"blocks.{i}.attn.v_proj.weight"] = vv
                fused.append(k)
                continue
            if sub == "attn.qkv.bias":
                q, _, vv = v.chunk(3, dim=0)
                enc[f"blocks.{i}.attn.q_proj.bias"] = q
                enc[f"blocks.{i}.attn.v_proj.bias"] = vv
                continue
            if sub.startswith("mlp.w12."):  # packed SwiGLU (gate and value in one matrix): timm's GluMlp fc1
                sub = "mlp.fc1." + sub[len("mlp.w12."):]
            enc[f"blocks.{i}.{sub}"] = v
            continue
        enc[rest] = v
    if rope:
        ckpt.skip("rotary embedding tables (recomputed for the input grid)", rope)
    if fused:
        ckpt.notes.append("fused qkv weights split into q_proj / k_proj / v_proj (k has no bias in EVA)")
    ckpt.notes.append({"open_clip": "open_clip EVA tower (timm Eva under visual.trunk.)",
                       "eva_clip": "BAAI EVA-CLIP layout converted to timm Eva names (q_bias/v_bias, "
                                   "inner_attn_ln, w1/w2/w3, ffn_ln)",
                       "timm": "timm Eva state dict"}[source])
    ckpt = _assemble(ckpt, enc, head, norm_eps=1e-6, act="gelu", head_kind="proj")
    if ckpt.head[0] == "proj" and "bias" in head:
        ckpt.arch["proj_bias"] = True
    if source == "timm" and ckpt.head[0] == "proj" and not text and not prefix.endswith("trunk."):
        ckpt.head = ("linear", ckpt.head[1])  # a timm classifier: a linear head with a bias
        ckpt.arch["proj_bias"] = False
    if source == "eva_clip":
        ckpt.arch["pos_interp"] = "open_clip"
        ckpt.notes.append("position embeddings resample the EVA-CLIP way at other input sizes (interpolate_pos_embed: "
                          "bicubic resize, no antialiasing; pos_interp='open_clip', override with pos_interp=...)")
    else:
        ckpt.notes.append("position embeddings resample the timm way at other input sizes (open_clip's EVA "
                          "towers are timm Eva models: set_input_size / dynamic_img_size; override with pos_interp=)")
    if text:
        logit = {k: text.pop(k) for k in ("logit_scale", "logit_bias") if k in text}
        if "logit_bias" in logit:
            raise CheckpointError(f"{ckpt.path}: SigLIP-style checkpoints (logit_bias) are not supported")
        text.update(logit)
        ckpt.skip("clip text tower", sorted(text))
        ckpt.clip = {
            "state_dict": text,
            "config": _text_config(text, ckpt, False),
            "embed_dim": ckpt.head[1] if ckpt.head[0] == "proj" else None,
            "quick_gelu": False,
            "source": source,
        }
        ckpt.notes.append("EVA-CLIP text tower: GELU (open_clip's EVA02 configs and BAAI's use no QuickGELU)")
    return ckpt


def _convert_lastvit(obj: Mapping[str, Any], ckpt: ConvertedCheckpoint) -> ConvertedCheckpoint:
    version = obj.get("version")
    if version != 1:
        raise CheckpointError(f"{ckpt.path}: lastvit checkpoint version {version!r} is not supported (expected 1)")
    cfg, sd = obj.get("config"), obj.get("state_dict")
    if not isinstance(cfg, Mapping) or not isinstance(sd, Mapping):
        raise CheckpointError(f"{ckpt.path}: lastvit checkpoint without a 'config' dict and a 'state_dict'")
    from lastvit.models.vit import ARCH_DEFAULTS

    ckpt.config = dict(cfg)
    ckpt.model_class = obj.get("model_class")
    ckpt.state_dict = _tensors(sd)
    ckpt.extra = obj.get("extra")
    arch = cfg.get("arch")
    if not isinstance(arch, Mapping) and isinstance(cfg.get("vision"), Mapping):  # a lastvit CLIP: image tower
        arch = cfg["vision"]
    ckpt.arch = {**ARCH_DEFAULTS, **arch} if isinstance(arch, Mapping) else {}
    head = cfg.get("head", "linear")
    if cfg.get("model") == "clip" and cfg.get("embed_dim"):
        ckpt.head = ("proj", int(cfg["embed_dim"]))
    elif head == "proj":
        ckpt.head = ("proj", int(cfg.get("head_dim") or ckpt.arch.get("embed_dim", 0)))
    elif head == "linear" and cfg.get("num_classes", 0):
        ckpt.head = ("linear", int(cfg["num_classes"]))
    if "aggregator" in cfg:
        ckpt.readout = (cfg["aggregator"], dict(cfg.get("aggregator_kwargs") or {}))
    return ckpt


def convert(obj: Any, path: str, fmt: str = "auto", *, dino_branch: str = "teacher",
            quick_gelu: bool | None = None) -> ConvertedCheckpoint:
    """Convert a loaded checkpoint object to a :class:`ConvertedCheckpoint`."""
    fmt = normalise_format(fmt)
    detected = detect_format(obj, path)
    if fmt == "auto":
        fmt = detected
    ckpt = ConvertedCheckpoint(path=path, format=fmt, arch={}, state_dict={})
    if fmt != detected and not (fmt in ("open_clip", "openai") and detected in ("open_clip", "openai")) and not (
            fmt == "eva_clip" and detected == "timm"):
        ckpt.notes.append(f"format {fmt!r} forced by the caller (auto-detection says {detected!r})")
    if fmt == "lastvit":
        if obj.get("format") != "lastvit":
            raise CheckpointError(f"{path}: not a lastvit checkpoint (no format='lastvit' entry)")
        return _convert_lastvit(obj, ckpt)
    if fmt == "dino":
        return _convert_dino(obj, ckpt, dino_branch)
    key, payload = _model_payload(obj)
    sd = payload if payload is not None else obj
    ckpt.skip("trainer state", _trainer_keys(obj, key) if payload is not None else
              [k for k, v in obj.items() if not isinstance(v, torch.Tensor)])
    if payload is not None and key != "model":
        ckpt.notes.append(f"model weights read from the {key!r} entry")
    if fmt in ("torchvision", "detectron2"):
        sd = _strip_module(_tensors(sd))
        p = _is_torchvision(list(sd))
        if p is None:
            raise CheckpointError(f"{path}: not a torchvision ViT state dict (no conv_proj / encoder.layers keys)")
        if p:
            ckpt.unmapped.extend(k for k in sd if not k.startswith(p))
            sd = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
        ckpt = _convert_torchvision(sd, ckpt)
        if fmt == "detectron2":
            ckpt.readout = ("lazystrike", {"k": 1})
            ckpt.notes.append("LaSt-ViT release (detectron2): default readout LazyStrike k=1, as trained")
        return ckpt
    if fmt == "timm":
        sd = _strip_module(sd)
        if _eva_layout(list(sd)):
            return _convert_eva(sd, ckpt, source="timm")
        return _convert_timm(sd, ckpt)
    if fmt == "eva_clip":
        return _convert_eva(_strip_module(sd), ckpt, source="eva_clip")
    if fmt in ("open_clip", "openai"):
        if any(k.endswith("visual.trunk.patch_embed.proj.weight") for k in _strip_module(sd)):
            return _convert_eva(_strip_module(sd), ckpt, source="open_clip")
        return _convert_clip(sd, ckpt, openai=fmt == "openai", quick_gelu=quick_gelu, path=path)
    raise CheckpointError(f"{path}: format {fmt!r} has no converter")  # pragma: no cover - FORMATS is closed


def _convert_dino(obj: Mapping[str, Any], ckpt: ConvertedCheckpoint, branch: str) -> ConvertedCheckpoint:
    if branch not in ("teacher", "student"):
        raise CheckpointError(f"dino_branch must be 'teacher' or 'student', got {branch!r}")
    sd = obj.get(branch)
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{ckpt.path}: DINO checkpoint without a {branch!r} branch "
                              f"(top-level keys: {sorted(map(str, obj))[:8]})")
    other = "student" if branch == "teacher" else "teacher"
    if isinstance(obj.get(other), Mapping):
        ckpt.skip(f"dino {other} branch", [f"{other}.{k}" for k in obj[other]])
    ckpt.skip("trainer state", [k for k in obj if k not in ("student", "teacher")])
    sd = _strip_module(_tensors(sd))
    backbone = {k: v for k, v in sd.items() if k.startswith("backbone.")}
    if not backbone:
        backbone = {k: v for k, v in sd.items() if not k.startswith("head.")}
    else:
        backbone = _strip(backbone, "backbone.")
    head = [k for k in sd if k.startswith("head.")]
    ckpt.skip("dino head", [f"{branch}.{k}" for k in head])
    ckpt.unmapped.extend(f"{branch}.{k}" for k in sd
                         if not k.startswith("head.") and not k.startswith("backbone.")
                         and k not in backbone)
    ckpt.notes.append(f"DINO {branch} backbone loaded" + (" (default; dino_branch='student' for the student)"
                                                          if branch == "teacher" else ""))
    out = _convert_timm(backbone, ckpt)
    out.arch["pos_interp"] = "dino"
    out.notes.append("position embeddings resample the DINO way at other input sizes (interpolate_pos_encoding; "
                     "pos_interp='dino', override with pos_interp=...)")
    args = obj.get("args")
    args = vars(args) if hasattr(args, "__dict__") and not isinstance(args, Mapping) else args
    if isinstance(args, Mapping):
        if isinstance(args.get("aggregator"), str):
            out.readout = (args["aggregator"], dict(args.get("aggregator_kwargs") or {}))
            out.notes.append(f"readout {args['aggregator']!r} recorded in the DINO args")
        from lastvit.models.vit import PRESETS

        preset = PRESETS.get(str(args.get("arch")))
        if preset and preset.get("embed_dim") == out.arch.get("embed_dim") and "num_heads" in preset:
            out.arch["num_heads"] = preset["num_heads"]
            out.notes = [n for n in out.notes if not n.startswith("num_heads is not stored")]
            out.notes.append(f"num_heads={preset['num_heads']} from the DINO args (arch {args.get('arch')!r})")
    if out.head[0] != "none":
        out.notes.append("backbone head weights found and kept as a linear head")
    return out
