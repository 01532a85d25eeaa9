"""Zero-shot classification against hand-computed values; the folded tokenizer for tiny vocabularies."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lastvit.data.tokenizer import ClipTokenizer
from lastvit.evaluate.zeroshot import load_templates, zero_shot_accuracy, zero_shot_classifier
from lastvit.models.clip import CLIP


class _HandModel:
    """A constructed 'CLIP': images are their own embeddings; a text embeds as counts of three words."""

    WORDS = ("cat", "dog", "photo")

    def tokenize(self, texts):
        return [t.replace(".", "").split() for t in texts]

    def encode_text(self, tokens, normalize=False):
        x = torch.tensor([[float(ws.count(w)) for w in self.WORDS] for ws in tokens])
        return F.normalize(x, dim=-1) if normalize else x

    def encode_image(self, images, normalize=False):
        x = images.flatten(1)
        return F.normalize(x, dim=-1) if normalize else x


def test_prompt_ensemble_by_hand():
    clf = zero_shot_classifier(_HandModel(), ["cat", "dog"], ["a {}", "a photo of a {}"])
    # "a cat" -> (1,0,0); "a photo of a cat" -> (1,0,1)/sqrt2; mean -> ((1+r)/2, 0, r/2) with r = 1/sqrt2
    r = 2 ** -0.5
    want_cat = torch.tensor([(1 + r) / 2, 0.0, r / 2])
    want_cat = want_cat / want_cat.norm()
    assert clf.shape == (2, 3)
    torch.testing.assert_close(clf[0], want_cat)
    torch.testing.assert_close(clf[1], want_cat[[1, 0, 2]])


def test_zero_shot_accuracy_by_hand():
    clf = torch.eye(3)  # class c <-> axis c
    # image embeddings and labels: argmax / second-best per row written out by hand
    emb = torch.tensor([[0.9, 0.1, 0.0],   # pred 0, label 0 -> top1 hit
                        [0.2, 0.5, 0.3],   # pred 1 then 2, label 2 -> top2 hit only
                        [0.1, 0.2, 0.7],   # pred 2 then 1, label 0 -> miss in top2, hit in top3
                        [0.0, 0.6, 0.4]])  # pred 1, label 1 -> top1 hit
    labels = torch.tensor([0, 2, 0, 1])
    acc = zero_shot_accuracy(_HandModel(), (emb[:, :, None, None], labels), clf, topk=(1, 2, 3))
    assert acc == {"top1": 50.0, "top2": 75.0, "top3": 100.0}
    # the same through an iterable of dict batches
    batches = [{"image": emb[:2, :, None, None], "label": labels[:2]}, {"image": emb[2:, :, None, None],
                                                                        "label": labels[2:]}]
    assert zero_shot_accuracy(_HandModel(), batches, clf, topk=(1,)) == {"top1": 50.0}


def test_templates_and_real_model_consistency():
    t = load_templates("imagenet")
    assert len(t) == 80 and len(set(t)) == 80 and all(x.count("{}") == 1 for x in t)
    assert t[0] == "a bad photo of a {}." and "itap of a {}." in t
    torch.manual_seed(0)
    m = CLIP.from_config(vision="vit_micro_patch8_64", text=dict(context_length=16, width=32, heads=2, layers=1),
                         embed_dim=16).eval()
    names = ["circle", "square", "triangle"]
    clf = zero_shot_classifier(m, names, ["{}"])
    with torch.no_grad():
        direct = m.encode_text(m.tokenize(names), normalize=True)
    torch.testing.assert_close(clf, direct)


def test_folded_tokenizer_keeps_eot_largest():
    full = ClipTokenizer(context_length=10)
    tiny = ClipTokenizer(context_length=10, vocab_size=50)
    texts = ["a photo of a cat", "dog"]
    a, b = full(texts), tiny(texts)
    assert a.shape == b.shape == (2, 10)
    assert int(b.max()) == 49 and int(b.min()) == 0
    # EOT stays the (unique) largest id, so argmax pooling reads the same position; padding stays 0
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert torch.equal(a == 0, b == 0)
    assert int(b[0, 0]) == 48  # <start_of_text>
