"""Class text embeddings: CLIPSelf's templates and name processing, other vocabularies, the on-disk cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lastvit.detection.text import (
    class_text_embeddings,
    load_vocabulary,
    process_name,
    prompts_for,
    read_names,
    text_tower_hash,
)
from lastvit.models.clip import CLIP

torch.set_num_threads(1)


def _clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP({"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
                {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}, 16).eval()


def test_shipped_lists_and_templates():
    base, novel = read_names("coco_base"), read_names("coco_novel")
    assert len(base) == 48 and len(novel) == 17 and not set(base) & set(novel)
    tmpl, clipself = load_vocabulary("clipself")
    assert len(tmpl) == 63 and clipself and len(set(tmpl)) == 63
    imagenet, style = load_vocabulary("imagenet")
    assert len(imagenet) == 80 and not style


def test_clipself_name_processing_and_prompts():
    assert process_name("hair_drier") == "hair drier"
    assert process_name("Traffic/Light.") == "traffic or light"
    tmpl, _ = load_vocabulary("clipself")
    ps = prompts_for("apple_pie", tmpl, True)
    assert ps[0] == "There is an apple pie in the scene."
    assert ps[2] == "This is a photo of an apple pie in the scene."
    assert "This is the plastic apple pie." in ps and "This is an embroidered apple pie." in ps
    assert prompts_for("cat", ["a {}."], False) == ["a cat."]


def test_embeddings_are_the_normalised_mean_and_cached_by_tower_hash(tmp_path, monkeypatch):
    clip = _clip()
    emb = class_text_embeddings(clip, ["disk", "ring"], ["a {}.", "the {}."], cache_dir=tmp_path)
    assert emb.shape == (3, 16)  # + background, last
    with torch.no_grad():
        e = clip.encode_text(clip.tokenize(["a ring.", "the ring."]), normalize=True)
    torch.testing.assert_close(emb[1], F.normalize(e.mean(0), dim=-1))
    files = list(tmp_path.glob("text_*.pt"))
    assert len(files) == 1
    # a second call reads the cache (the text tower is not run)
    monkeypatch.setattr(clip, "encode_text", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    torch.testing.assert_close(class_text_embeddings(clip, ["disk", "ring"], ["a {}.", "the {}."],
                                                     cache_dir=tmp_path), emb)
    # another text tower gets another key
    other = _clip(1)
    assert text_tower_hash(other) != text_tower_hash(_clip(0))
    class_text_embeddings(other, ["disk", "ring"], ["a {}.", "the {}."], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("text_*.pt"))) == 2


def test_user_template_file_and_errors(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a drawing of a {}\n\nthe {} here\n")
    assert load_vocabulary(str(f)) == (["a drawing of a {}", "the {} here"], False)
    with pytest.raises(ValueError, match="placeholder"):
        load_vocabulary(["no slot"])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_vocabulary(str(tmp_path / "missing.txt"))
