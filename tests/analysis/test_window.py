import torch

from lastvit.analysis import block_attention, encode_kept


def _pair(micro_vit, **kw):
    glob = micro_vit("mean", seed=1)
    win = micro_vit("mean", seed=1, **kw)
    win.load_state_dict(glob.state_dict())
    return glob, win


def test_window_at_least_grid_equals_global_attention(micro_vit):
    x = torch.randn(2, 3, 64, 64)  # 8x8 grid
    for ws in (8, 12):
        glob, win = _pair(micro_vit, window_size=ws, window_layers=[0, 2])
        with torch.no_grad():
            torch.testing.assert_close(win.encode(x), glob.encode(x), atol=1e-5, rtol=1e-5)
    glob, win = _pair(micro_vit, window_size=4)
    with torch.no_grad():
        assert not torch.allclose(win.encode(x), glob.encode(x), atol=1e-3)


def test_window_attention_is_local_and_token_drop_respects_it(micro_vit):
    x = torch.randn(1, 3, 64, 64)
    _, win = _pair(micro_vit, window_size=4, window_layers=[0, 1, 2, 3])
    a = block_attention(win, x, layer=0)[0, 0]  # (65, 65)
    # patch 0 (row 0, col 0) and patch 4 (row 0, col 4) sit in different 4x4 windows
    assert a[1, 1 + 4] == 0 and a[1, 1 + 1] > 0 and a[1, 0] > 0
    torch.testing.assert_close(a.sum(-1), torch.ones(65))
    with torch.no_grad():
        full = encode_kept(win, x, torch.arange(64)[None])
        torch.testing.assert_close(full, win.encode(x), atol=1e-5, rtol=1e-5)
        keep = torch.tensor([[0, 1, 8, 9, 4, 5]])  # window (0,0) gets 4 patches, window (0,1) gets 2
        kept = encode_kept(win, x, keep)
        # by hand: the prefix sees everything, a patch sees the prefix and the kept patches of its own window
        enc = win.encoder
        t, _ = win.embed(x)  # the token path before the blocks (tests/models/test_token_path.py)
        t = torch.cat([t[:, :1], t[:, 1:][:, keep[0]]], dim=1)
        cell = torch.tensor([0, 0, 0, 0, 1, 1])
        mask = torch.ones(7, 7, dtype=torch.bool)
        mask[1:, 1:] = cell[:, None] == cell[None, :]
        for blk in enc.blocks:
            t = blk(t, attn_mask=mask)
        torch.testing.assert_close(kept, enc.norm(t), atol=1e-5, rtol=1e-5)


def test_block_attention_rejects_layers_outside_the_model(micro_vit):
    import pytest

    m = micro_vit("mean")  # 4 blocks
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(block_attention(m, x, layer=-4), block_attention(m, x, layer=0))
    for bad in (4, 99, -5):
        with pytest.raises(ValueError, match="out of range"):
            block_attention(m, x, layer=bad)
