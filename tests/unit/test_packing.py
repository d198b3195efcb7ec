"""Packing keeps every token, in order, with document boundaries recoverable."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.data.packing import pack_documents, position_ids, unpack

EOS, PAD = 0, 1
docs_strategy = st.lists(st.lists(st.integers(2, 1000), max_size=40), max_size=30)


@settings(max_examples=200, deadline=None)
@given(docs=docs_strategy, block_size=st.integers(1, 64), add_eos=st.booleans())
def test_packing_keeps_every_token_in_order(docs, block_size, add_eos) -> None:
    packed = pack_documents(docs, block_size, EOS, PAD, add_eos)
    expected = [t for d in docs for t in ([*d, EOS] if add_eos else d)]
    assert unpack(packed).tolist() == expected
    assert packed.tokens == len(expected)
    assert packed.input_ids.shape == (len(packed.num_pad), block_size)


@settings(max_examples=200, deadline=None)
@given(docs=docs_strategy, block_size=st.integers(1, 64))
def test_segments_cover_blocks_and_mark_document_ends(docs, block_size) -> None:
    packed = pack_documents(docs, block_size, EOS, PAD)
    for row, segs, pad in zip(
        packed.input_ids, packed.segment_lengths, packed.num_pad, strict=True
    ):
        assert sum(segs) == block_size - pad and all(s > 0 for s in segs)
        assert (row[block_size - pad :] == PAD).all()
    # Joining the segments back gives the documents: every EOS closes a segment.
    lengths = [s for segs in packed.segment_lengths for s in segs]
    flat = unpack(packed)
    ends = np.cumsum(lengths)
    eos_positions = set(np.nonzero(flat == EOS)[0] + 1)
    assert eos_positions <= set(ends.tolist())
    assert only_last_block_padded(packed.num_pad)


def only_last_block_padded(num_pad: list[int]) -> bool:
    return all(p == 0 for p in num_pad[:-1])


def test_known_layout() -> None:
    packed = pack_documents([[5, 6, 7], [8]], block_size=3, eos_id=EOS, pad_id=PAD)
    assert packed.input_ids.tolist() == [[5, 6, 7], [0, 8, 0]]
    assert packed.segment_lengths == [[3], [1, 2]]
    assert packed.num_pad == [0, 0]


def test_empty_input() -> None:
    packed = pack_documents([], 4, EOS, PAD)
    assert packed.input_ids.shape == (0, 4) and packed.tokens == 0


def test_position_ids_restart_per_segment() -> None:
    assert position_ids([2, 3], 6).tolist() == [0, 1, 0, 1, 2, 0]
