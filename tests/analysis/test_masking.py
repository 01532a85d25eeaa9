import pytest
import torch

from lastvit.analysis import encode_kept, forward_kept, masking_probe, pixel_mask
from lastvit.analysis.masking import removal_order


class StubClassifier(torch.nn.Module):
    """Class 0 while the top-left 4x4 patch has any non-zero pixel, else class 1; counts images seen."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        alive = (x[:, :, :4, :4] != 0).flatten(1).any(1).float()
        return torch.stack([alive, 1 - alive], dim=1)


def test_masking_probe_known_answer_and_forward_count():
    images = torch.ones(2, 3, 8, 8)  # 2x2 grid of 4 px patches
    scores = torch.tensor([[[9.0, 1.0], [2.0, 3.0]],  # image 0: top-left is the highest score
                           [[0.0, 5.0], [6.0, 7.0]]])  # image 1: top-left is the lowest
    labels = torch.tensor([0, 0])
    stub = StubClassifier()
    res = masking_probe(stub, images, labels, scores=scores, patch_size=4, fractions=[0.0, 0.25, 0.5, 0.75])
    assert res["num_removed"] == [0, 1, 2, 3]
    # high-first removes image 0's top-left at once, image 1's only at the 4th patch (never here)
    assert res["correct"]["high"] == [2, 1, 1, 1]
    assert res["correct"]["low"] == [2, 1, 1, 1]
    assert res["agree"]["high"] == [2, 1, 1, 1]
    # random removal is seeded: same answer twice
    again = masking_probe(StubClassifier(), images, labels, scores=scores, patch_size=4,
                          fractions=[0.0, 0.25, 0.5, 0.75])
    assert again["correct"]["random"] == res["correct"]["random"]
    # one clean forward + 3 orders x 3 non-zero levels per image
    assert stub.seen == 2 * (1 + 3 * 3)


def test_removal_orders_and_full_removal():
    s = torch.tensor([[[1.0, 3.0], [2.0, 3.0]]])
    assert removal_order(s, "high").tolist() == [[1, 3, 2, 0]]  # ties: lower index first
    assert removal_order(s, "low").tolist() == [[0, 2, 1, 3]]
    stub = StubClassifier()
    res = masking_probe(stub, torch.ones(1, 3, 8, 8), torch.tensor([0]), scores=s, patch_size=4,
                        fractions=[1.0], orders=("high",))
    assert res["correct"]["high"] == [0]


def test_pixel_fills():
    x = torch.full((1, 3, 8, 8), 2.0)
    rm = torch.tensor([[[True, False], [False, False]]])
    z = pixel_mask(x, rm, 4, "zero")
    assert (z[:, :, :4, :4] == 0).all() and (z[:, :, 4:, :] == 2).all() and (z[:, :, :, 4:] == 2).all()
    assert torch.equal(pixel_mask(x, rm, 4, "mean"), z)  # dataset mean is 0 after normalisation
    n = pixel_mask(x, rm, 4, "noise", torch.Generator().manual_seed(0))
    assert (n[:, :, :4, :4] != 2).all() and (n[:, :, 4:, :] == 2).all()
    with pytest.raises(ValueError, match="fill"):
        pixel_mask(x, rm, 4, "blur")


def test_token_drop_equals_encoder_on_kept_tokens_by_hand(micro_vit, manual_encode):
    m = micro_vit("mean")
    x = torch.randn(2, 3, 64, 64)
    keep = torch.stack([torch.tensor([0, 5, 9, 40, 63]), torch.tensor([1, 2, 3, 4, 60])])
    with torch.no_grad():
        got = encode_kept(m, x, keep)
        ref = manual_encode(m, x, keep)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(forward_kept(m, x, keep), m.head(ref[:, 1:].mean(1)), atol=1e-5, rtol=1e-5)
        # keeping every patch is the ordinary forward
        torch.testing.assert_close(encode_kept(m, x, torch.arange(64).expand(2, -1)), m.encode(x), atol=1e-5,
                                   rtol=1e-5)


def test_token_probe_keeps_one_patch_and_counts(micro_vit):
    m = micro_vit("lazystrike")
    calls = []
    h = m.encoder.blocks[0].register_forward_hook(lambda _m, i, o: calls.append(i[0].shape))
    res = masking_probe(m, torch.randn(2, 3, 64, 64), torch.tensor([0, 1]), mode="token", fractions=[0.0, 0.5, 1.0])
    h.remove()
    assert res["num_removed"] == [0, 32, 63]
    # the clean pass, then one stacked pass (3 orders x 2 images) per non-zero level with 1 + kept tokens
    assert [tuple(c) for c in calls] == [(2, 65, 96), (6, 33, 96), (6, 2, 96)]
