"""open_clip's BPE tokenizer for CLIP text towers, with id folding for tiny test vocabularies."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

__all__ = ["BPE_VOCAB_SIZE", "ClipTokenizer"]

BPE_VOCAB_SIZE = 49408  # open_clip's SimpleTokenizer: 49406 BPE tokens + <start_of_text> + <end_of_text>


@functools.lru_cache(maxsize=4)
def _bpe(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


class ClipTokenizer:
    """open_clip's BPE tokenizer: ``tokenizer(list_of_str) -> LongTensor (B, context_length)``.

    With the real vocabulary (``vocab_size >= 49408``) ids are exactly open_clip's. For a smaller vocabulary (tiny
    test towers) ids are folded into range so that argmax (EOT) pooling still works: pad 0 stays 0,
    ``<end_of_text>`` becomes ``vocab_size - 1`` (still the largest id), ``<start_of_text>`` ``vocab_size - 2`` and
    every other id ``1 + id % (vocab_size - 3)``. Distinct words may then share an id; use the real vocabulary for
    anything but tests.
    """

    def __init__(self, context_length: int = 77, vocab_size: int = BPE_VOCAB_SIZE) -> None:
        if vocab_size < 4:
            raise ValueError(f"vocab_size must be >= 4 for the folded tokenizer, got {vocab_size}")
        self.context_length = int(context_length)
        self.vocab_size = int(vocab_size)
        self._tok = _bpe(self.context_length)
        self.sot_token_id = self._tok.sot_token_id
        self.eot_token_id = self._tok.eot_token_id
        self.folded = self.vocab_size < self._tok.vocab_size

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        ids = self._tok(texts if isinstance(texts, str) else list(texts), context_length=self.context_length)
        if not self.folded:
            return ids
        v = self.vocab_size
        out = 1 + ids % (v - 3)
        out = torch.where(ids == self.sot_token_id, torch.full_like(ids, v - 2), out)
        out = torch.where(ids == self.eot_token_id, torch.full_like(ids, v - 1), out)
        return torch.where(ids == 0, torch.zeros_like(ids), out)

    def __repr__(self) -> str:
        return f"ClipTokenizer(context_length={self.context_length}, vocab_size={self.vocab_size})"
