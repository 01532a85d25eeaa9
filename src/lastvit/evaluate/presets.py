"""Dataset presets of the zero-shot segmentation benchmarks (mmseg-style converted layouts, as SCLIP uses).

Each preset names the reader of ``lastvit.data.build_eval_dataset`` with its layout options, the shipped
class-name list, whether class 0 is background, how labels are remapped, and the inference defaults. The numbers
are SCLIP's released configs (github.com/wangf3014/SCLIP, ``configs/cfg_*.py`` over ``configs/base_config.py``;
the class lists are its ``configs/cls_*.txt``): the test pipeline ``Resize(scale=(2048, S), keep_ratio=True)`` is a
short side of S (336 for VOC / Context / COCO-Object / ADE20K, 448 for COCO-Stuff, 560 for Cityscapes; mmseg's
rescale also caps the long side at 2048, which lastvit does not), the base config has ``logit_scale=40`` and no
thresholds, VOC21 sets ``logit_scale=65, prob_thd=0.1, area_thd=0.1`` and Context60 / COCO-Object set
``logit_scale=50, prob_thd=0.1``. Sliding windows are 224 / 112 everywhere. PAMR is off in every SCLIP config
(``pamr_steps=0``); NACLIP's released numbers use ``PAMR(10, dilations=(8, 16))``, selectable with
``pamr_steps=10``. Override any of them on the command line.

Label remaps: ``"reduce_zero"`` maps 0 -> 255 (ignore) and ``c -> c - 1`` (mmseg's ``reduce_zero_label``), used
where the label maps carry a background/unlabelled 0 that the class list does not have (VOC20, Context59,
ADE20K, the synthetic trees).

``synthetic`` is not a benchmark: it reads a ``lastvit data synth`` tree (``<split>/<class>/<id>.png`` images,
``Segmentation/<split>/`` class maps with 0 = background, ``classes.txt``) and scores the object classes only
(background pixels ignored), at the images' native size. Its ``{root}`` / ``{split}`` placeholders are filled by
:func:`seg_preset`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["SEG_PRESETS", "remap_labels", "seg_preset"]

_VOC = {"imageset": "Segmentation", "load_seg": True}
_CONTEXT = {"img_dir": "JPEGImages", "ann_dir": "SegmentationClassContext",
            "split_file": "ImageSets/SegmentationContext/val.txt"}

SEG_PRESETS: dict[str, dict[str, Any]] = {
    # SCLIP configs/cfg_voc21.py
    "voc21": dict(reader="voc", split="val", opts=_VOC, classnames="voc21", background=True, label=None,
                  short_side=336, logit_scale=65.0, prob_thd=0.1, area_thd=0.1),
    # SCLIP configs/cfg_voc20.py (base config's logit scale, no thresholds)
    "voc20": dict(reader="voc", split="val", opts=_VOC, classnames="voc20", background=False, label="reduce_zero",
                  short_side=336),
    # SCLIP configs/cfg_context60.py
    "context60": dict(reader="seg", split=None, opts=_CONTEXT, classnames="context60", background=True, label=None,
                      short_side=336, logit_scale=50.0, prob_thd=0.1),
    # SCLIP configs/cfg_context59.py
    "context59": dict(reader="seg", split=None, opts=_CONTEXT, classnames="context59", background=False,
                      label="reduce_zero", short_side=336),
    # SCLIP configs/cfg_coco_stuff164k.py
    "coco_stuff171": dict(reader="seg", split=None, opts={"img_dir": "images/val2017", "ann_dir": "annotations/val2017",
                                                         "seg_suffix": "_labelTrainIds.png"},
                          classnames="coco_stuff171", background=False, label=None, short_side=448),
    # SCLIP configs/cfg_coco_object.py
    "coco_object": dict(reader="seg", split=None, opts={"img_dir": "images/val2017", "ann_dir": "annotations/val2017",
                                                       "seg_suffix": "_instanceTrainIds.png"},
                        classnames="coco_object", background=True, label=None, short_side=336, logit_scale=50.0,
                        prob_thd=0.1),
    # SCLIP configs/cfg_city_scapes.py
    "cityscapes": dict(reader="seg", split=None, opts={"img_dir": "leftImg8bit/val", "ann_dir": "gtFine/val",
                                                      "img_suffix": "_leftImg8bit.png",
                                                      "seg_suffix": "_gtFine_labelTrainIds.png"},
                       classnames="cityscapes", background=False, label=None, short_side=560),
    # SCLIP configs/cfg_ade20k.py: Resize(scale=(2048, 336)), reduce_zero_label
    "ade20k": dict(reader="seg", split=None, opts={"img_dir": "images/validation", "ann_dir": "annotations/validation"},
                   classnames="ade20k", background=False, label="reduce_zero", short_side=336),
    # lastvit's own synthetic trees (lastvit data synth / the demo): objects only, native size
    "synthetic": dict(reader="seg", split="test", opts={"img_dir": "{split}", "ann_dir": "Segmentation/{split}",
                                                       "img_suffix": ".png"},
                      classnames="{root}/classes.txt", background=False, label="reduce_zero", short_side=None),
}


def seg_preset(name: str, root: str | None = None, split: str | None = None) -> dict[str, Any]:
    """A copy of ``SEG_PRESETS[name]`` with its ``{root}`` / ``{split}`` placeholders filled in."""
    if name not in SEG_PRESETS:
        raise ValueError(f"unknown zero-shot segmentation preset {name!r}; known: {sorted(SEG_PRESETS)}")
    pre = copy.deepcopy(SEG_PRESETS[name])
    split = split or pre.get("split")
    fill = {"root": str(root) if root is not None else ".", "split": split or ""}

    def sub(v: Any) -> Any:
        return v.format(**fill) if isinstance(v, str) and "{" in v else v

    pre["opts"] = {k: sub(v) for k, v in pre["opts"].items()}
    pre["classnames"] = sub(pre["classnames"])
    pre["split"] = split
    return pre


def remap_labels(seg: torch.Tensor, rule: str | None, ignore_index: int = 255) -> torch.Tensor:
    """Apply a preset's label remap (``None`` or ``"reduce_zero"``)."""
    if rule is None:
        return seg
    if rule == "reduce_zero":
        seg = seg.long()
        out = torch.where(seg == 0, torch.full_like(seg, ignore_index), seg - 1)
        out[seg == ignore_index] = ignore_index
        return out
    raise ValueError(f"unknown label remap {rule!r}")
