"""Bit packing in PyTorch: {-1, +1} values <-> 64-bit words (the layout of onebit files).

A -1 is a set bit, a +1 a clear bit, so that dot(a, w) = K - 2 popcount(a XOR w) for two
packed vectors of length K. Element ``64 j + i`` of a vector is bit ``i`` of word ``j``; the
bits past the last element of the last word are 0. Words are stored as int64 (two's
complement, the same 64 bits as the kernels' uint64).
"""

from __future__ import annotations

import torch

WORD_BITS = 64

_SHIFTS = torch.arange(WORD_BITS, dtype=torch.int64)


def words_for(length: int) -> int:
    """Number of 64-bit words that hold ``length`` bits."""
    return (length + WORD_BITS - 1) // WORD_BITS


def pack_bits(negative: torch.Tensor) -> torch.Tensor:
    """Pack bool ``[..., K]`` (True = -1) along the last dim into int64 ``[..., ceil(K / 64)]``."""
    k = negative.shape[-1]
    kc = words_for(k)
    bits = torch.zeros(*negative.shape[:-1], kc * WORD_BITS, dtype=torch.int64)
    bits[..., :k] = negative.to(torch.int64)
    # the shifted bits are disjoint, so their sum is their OR (bit 63 wraps to the sign bit)
    return (bits.view(*negative.shape[:-1], kc, WORD_BITS) << _SHIFTS).sum(-1)


def unpack_bits(words: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: int64 ``[..., kc]`` -> bool ``[..., length]`` (True = -1)."""
    bits = (words.unsqueeze(-1) >> _SHIFTS) & 1
    return bits.flatten(-2)[..., :length].bool()


def tail_mask(length: int) -> int:
    """The bits of the last word past ``length`` elements, as an int64 value (0 if none)."""
    used = length % WORD_BITS
    return 0 if used == 0 else -(1 << used)


def pack_weight(negative: torch.Tensor) -> torch.Tensor:
    """Pack a conv or linear weight's signs ``[cout, cin, kh, kw]`` / ``[cout, cin]`` (True = -1)
    per output channel along the reduction axis in (kh, kw, cin) order: int64
    ``[cout, kh, kw, ceil(cin / 64)]`` (kh = kw = 1 for a linear), the order in which the
    kernels read an NHWC receptive field."""
    if negative.dim() == 2:
        negative = negative[:, :, None, None]
    return pack_bits(negative.permute(0, 2, 3, 1))


def unpack_weight(words: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Inverse of :func:`pack_weight`: ``[cout, kh, kw, kc]`` -> bool ``[cout, cin, kh, kw]``."""
    return unpack_bits(words, in_channels).permute(0, 3, 1, 2).contiguous()
