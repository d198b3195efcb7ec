"""Packing token sequences into fixed-length blocks, keeping document boundaries.

Documents are concatenated (EOS after each) and cut into blocks of ``block_size`` tokens.
For every block, ``segment_lengths`` lists the lengths of the document pieces it holds, in
order, so training can mask attention across documents and restart position ids. The last
block is padded with ``pad_id``; ``num_pad`` says how many trailing tokens are padding.
Nothing is dropped: unpacking gives back every token in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class PackedBlocks:
    """Blocks of one packing run."""

    input_ids: np.ndarray  # (blocks, block_size) int32
    segment_lengths: list[list[int]]
    num_pad: list[int]

    @property
    def tokens(self) -> int:
        """Real tokens (padding excluded)."""
        return int(self.input_ids.size - sum(self.num_pad))


def pack_documents(
    docs: Sequence[Sequence[int]],
    block_size: int,
    eos_id: int,
    pad_id: int,
    add_eos: bool = True,
) -> PackedBlocks:
    """Concatenate ``docs`` (with EOS after each) and cut into padded blocks."""
    if block_size < 1:
        raise ValueError("block_size must be positive")
    pieces = [np.asarray(d, dtype=np.int32) for d in docs]
    if add_eos:
        pieces = [np.append(p, np.int32(eos_id)) for p in pieces]
    pieces = [p for p in pieces if p.size]
    if not pieces:
        return PackedBlocks(np.zeros((0, block_size), dtype=np.int32), [], [])
    flat = np.concatenate(pieces)
    total = flat.size
    n_blocks = -(-total // block_size)
    pad = n_blocks * block_size - total
    ids = np.concatenate([flat, np.full(pad, pad_id, dtype=np.int32)]).reshape(n_blocks, block_size)
    doc_ends = np.cumsum([p.size for p in pieces])
    block_ends = np.arange(1, n_blocks + 1) * block_size
    cuts = np.unique(np.concatenate([[0], doc_ends, block_ends[block_ends < total], [total]]))
    starts, lengths = cuts[:-1], np.diff(cuts)
    segments: list[list[int]] = [[] for _ in range(n_blocks)]
    for start, length in zip(starts // block_size, lengths, strict=True):
        segments[int(start)].append(int(length))
    return PackedBlocks(ids, segments, [0] * (n_blocks - 1) + [int(pad)])


def unpack(blocks: PackedBlocks) -> np.ndarray:
    """All real tokens of ``blocks`` in order (padding removed)."""
    if not blocks.num_pad:
        return np.zeros(0, dtype=np.int32)
    parts = [
        row[: row.size - pad] for row, pad in zip(blocks.input_ids, blocks.num_pad, strict=True)
    ]
    return np.concatenate(parts)


def position_ids(segment_lengths: Sequence[int], block_size: int) -> np.ndarray:
    """Position ids restarting at 0 for every segment (padding continues the last one)."""
    out = np.zeros(block_size, dtype=np.int64)
    offset = 0
    for length in segment_lengths:
        out[offset : offset + length] = np.arange(length)
        offset += length
    if offset < block_size:
        out[offset:] = np.arange(block_size - offset)
    return out
