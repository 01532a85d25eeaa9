import torch

from lastvit import create_model
from lastvit.evaluate.probe import extract_features, knn_classify, linear_probe, topk_accuracy


def _blobs(n_per: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0]])
    x = torch.cat([c + 0.5 * torch.randn(n_per, 4, generator=g) for c in centers])
    y = torch.arange(3).repeat_interleave(n_per)
    return x, y


def test_knn_hand_computed_weights():
    tr = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    te = torch.tensor([[2.0, 0.0]])
    s = knn_classify(tr, y, te, k=2, T=0.5, num_classes=3)
    # nearest two by cosine: [1,0] (sim 1) and [1,1] (sim 1/sqrt2)
    expect = torch.tensor([[torch.exp(torch.tensor(2.0)), torch.exp(torch.tensor(2**0.5)), 0.0]])
    torch.testing.assert_close(s, expect)


def test_knn_and_linear_probe_separable():
    xtr, ytr = _blobs(20, 0)
    xte, yte = _blobs(10, 1)
    s = knn_classify(xtr, ytr, xte, k=5, num_classes=3)
    assert topk_accuracy(s, yte, (1,))[1] == 100.0
    acc = linear_probe(xtr, ytr, xte, yte, epochs=5, lr=1.0, wd=1e-4)
    assert acc == 100.0
    acc2 = linear_probe(xtr, ytr, xte, yte, epochs=30, lr=0.1, wd=0.0, batch_size=16)
    assert acc2 == 100.0
    # deterministic
    assert linear_probe(xtr, ytr, xte, 1 - yte.clamp(max=1), epochs=3, lr=0.1, wd=0.0, batch_size=8) == \
        linear_probe(xtr, ytr, xte, 1 - yte.clamp(max=1), epochs=3, lr=0.1, wd=0.0, batch_size=8)


def test_extract_features_returns_pooled_token():
    torch.manual_seed(0)
    m = create_model("vit_micro_patch8_64", num_classes=5)
    imgs = torch.randn(6, 3, 32, 32)
    loader = [{"image": imgs[:4], "label": torch.tensor([0, 1, 2, 3])}, (imgs[4:], torch.tensor([4, 0]))]
    f, y = extract_features(m, loader)
    assert f.shape == (6, 96) and y.tolist() == [0, 1, 2, 3, 4, 0]
    with torch.no_grad():
        torch.testing.assert_close(f, m.forward_tokens(imgs).pooled)


def test_evaluate_head_topk_on_constructed_logits():
    from torch import nn

    from lastvit.evaluate.classify import evaluate_head

    class Fixed(nn.Module):
        def forward(self, x):
            return x[:, 0, 0, :6]  # the "image" carries its own logits

    logits = torch.tensor([
        [9.0, 1, 2, 3, 4, 5],  # top1 0
        [0.0, 9, 8, 7, 6, 5],  # top1 1, top5 {1,2,3,4,5}
        [5.0, 4, 3, 2, 1, 0],  # top1 0
    ])
    imgs = logits[:, None, None, :].expand(3, 1, 1, 6).contiguous()
    labels = torch.tensor([0, 5, 5])
    r = evaluate_head(Fixed(), [(imgs, labels), (imgs[:1], torch.tensor([-1]))])
    assert r["images"] == 3
    assert abs(r["top1"] - 100 / 3) < 1e-9 and abs(r["top5"] - 200 / 3) < 1e-9
    assert r["per_class_top1"] == {0: 100.0, 5: 0.0}
