"""Offline subword tokenization: CLIP's byte-pair encoding, shipped inside open_clip.

The BPE merges file is part of the ``open_clip_torch`` wheel, so tokenizing never
touches the network. Meta-Transformer's text tokenizer is CLIP's, so pretrained text
embeddings (when a user brings them) line up with these ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

VOCAB_SIZE = 49408


@lru_cache(maxsize=8)
def _tokenizer(length: int):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=length)


def tokenize(texts: Sequence[str], length: int) -> Tensor:
    """Token ids ``[len(texts), length]`` (start/end tokens, zero padding, truncation)."""
    if length < 3:
        raise ValueError(f"text-length must be at least 3 (start, one token, end); got {length}.")
    if isinstance(texts, str):
        raise TypeError("tokenize() takes a list of strings, not one string.")
    return _tokenizer(length)(list(texts)).to(torch.int64)
