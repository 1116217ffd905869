"""Relative sparse indices with filler zeros (Deep Compression figure 2)."""

import numpy as np
import pytest

from nncompress.coding.sparse_index import (
    decode_relative,
    decode_relative_nonfiller,
    encode_relative,
)
from nncompress.errors import FormatError, NNCompressError


def reference_encode(positions, bits):
    """Element-by-element reference: one filler per full span that does not fit."""
    gaps, filler, prev, span = [], [], -1, 1 << bits
    for p in positions:
        diff = p - prev
        while diff > span:
            gaps.append(span - 1)
            filler.append(True)
            diff -= span
        gaps.append(diff - 1)
        filler.append(False)
        prev = p
    return gaps, filler


def round_trip(positions, bits):
    positions = np.asarray(positions, dtype=np.int64)
    r = encode_relative(positions, bits)
    assert r.gaps.max(initial=0) <= (1 << bits) - 1
    assert r.num_entries == positions.size + r.num_fillers
    assert np.array_equal(decode_relative_nonfiller(r.gaps, r.is_filler, bits), positions)
    all_pos = decode_relative(r.gaps, bits)
    assert np.array_equal(all_pos[~r.is_filler], positions)
    assert np.intersect1d(all_pos[r.is_filler], positions).size == 0  # fillers land on zeros
    return r


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 1.0])
def test_round_trip_matches_reference(bits, density):
    rng = np.random.default_rng(bits)
    positions = np.flatnonzero(rng.random(5000) < density)
    r = round_trip(positions, bits)
    gaps, filler = reference_encode(positions.tolist(), bits)
    assert r.gaps.tolist() == gaps and r.is_filler.tolist() == filler
    assert r.index_storage_bits == len(gaps) * bits


def test_edge_cases():
    r = round_trip([], 5)
    assert r.num_entries == 0 and r.gaps.dtype == np.uint32
    r = round_trip([0], 3)  # first position 0: gap 0 from position -1
    assert r.gaps.tolist() == [0] and not r.is_filler.any()
    r = round_trip([7], 3)  # diff exactly 2**bits = 8: fits, no filler
    assert r.gaps.tolist() == [7] and r.num_fillers == 0
    r = round_trip([8], 3)  # diff 9: one filler
    assert r.gaps.tolist() == [7, 0] and r.is_filler.tolist() == [True, False]
    r = round_trip([0, 1000], 2)  # long run of fillers
    assert r.num_fillers == (999 - 1) // 4
    r = round_trip(np.arange(100), 1)  # all dense
    assert r.num_fillers == 0 and not r.gaps.any()
    r = round_trip([2**40], 32)  # positions beyond 32 bits
    assert r.num_fillers == 256


def test_paper_example():
    # Han et al. figure 2 uses 3-bit indices: a gap larger than 8 needs a filler zero
    r = encode_relative(np.array([1, 4, 15]), 3)
    assert r.gaps.tolist() == [1, 2, 7, 2]
    assert r.is_filler.tolist() == [False, False, True, False]


def test_rejects_bad_input():
    with pytest.raises(NNCompressError, match="index_bits=0"):
        encode_relative(np.array([1]), 0)
    with pytest.raises(NNCompressError, match="index_bits=33"):
        decode_relative(np.array([1]), 33)
    with pytest.raises(NNCompressError, match="position 3 at index 2 follows 5"):
        encode_relative(np.array([1, 5, 3]), 4)
    with pytest.raises(NNCompressError, match="position 5 at index 1 follows 5"):
        encode_relative(np.array([5, 5]), 4)
    with pytest.raises(NNCompressError, match="-2 at index 0"):
        encode_relative(np.array([-2, 5]), 4)
    with pytest.raises(FormatError, match="gap 16 at index 1 does not fit in index_bits=4"):
        decode_relative(np.array([0, 16]), 4)
    with pytest.raises(FormatError, match="is_filler"):
        decode_relative_nonfiller(np.array([0, 1]), np.array([False]), 4)
