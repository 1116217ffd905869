"""CSR/CSC export: exact round trips, the paper's storage count, torch conversion."""

import numpy as np
import pytest
import torch

from nncompress.coding.csr import (
    CSCMatrix,
    CSRMatrix,
    csr_storage_numbers,
    from_csc,
    from_csr,
    to_csc,
    to_csr,
    to_torch,
)
from nncompress.errors import FormatError, NNCompressError


def sparse_matrix(rows, cols, density, seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(rows, cols)).astype(np.float32)
    return m * (rng.random((rows, cols)) < density)


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (50, 3), (0, 4), (4, 0)])
@pytest.mark.parametrize("density", [0.0, 0.1, 1.0])
def test_round_trips_and_storage_count(shape, density):
    m = sparse_matrix(*shape, density, seed=shape[0])
    nnz = np.count_nonzero(m)
    csr, csc = to_csr(m), to_csc(m)
    assert np.array_equal(from_csr(csr), m) and from_csr(csr).dtype == m.dtype
    assert np.array_equal(from_csc(csc), m)
    assert csr_storage_numbers(csr) == 2 * nnz + shape[0] + 1
    assert csr_storage_numbers(csc) == 2 * nnz + shape[1] + 1
    assert csr.values.size == csc.values.size == nnz


def test_layout_against_definition():
    m = np.array([[0, 2, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0], [0, 4, 0, 5]])
    csr = to_csr(m)
    assert csr.values.tolist() == [2, 1, 3, 4, 5]
    assert csr.indptr.tolist() == [0, 1, 3, 3, 5]
    assert csr.indices.tolist() == [1, 0, 2, 1, 3]
    csc = to_csc(m)
    assert csc.values.tolist() == [1, 2, 4, 3, 5]
    assert csc.indptr.tolist() == [0, 1, 3, 4, 5]
    assert csc.indices.tolist() == [1, 0, 3, 1, 3]


def test_torch_input_and_output():
    w = torch.from_numpy(sparse_matrix(6, 9, 0.3, seed=1)).requires_grad_()
    csr = to_csr(w)
    t = to_torch(csr)
    assert t.layout == torch.sparse_csr and t.dtype == torch.float32
    assert torch.equal(t.to_dense(), w.detach())
    t = to_torch(to_csc(w))
    assert t.layout == torch.sparse_csc and torch.equal(t.to_dense(), w.detach())
    x = torch.randn(9, 2)
    assert torch.allclose(to_torch(csr) @ x, w.detach() @ x, atol=1e-6)


def test_bfloat16_tensor_is_widened_exactly():
    w = torch.tensor([[0.0, 1.5], [-2.25, 0.0]], dtype=torch.bfloat16)
    csr = to_csr(w)
    assert csr.values.dtype == np.float32 and csr.values.tolist() == [1.5, -2.25]


def test_rejects_bad_input_and_damaged_structure():
    with pytest.raises(NNCompressError, match=r"2-D, got shape \(3,\)"):
        to_csr(np.zeros(3))
    good = to_csr(np.eye(3))
    with pytest.raises(FormatError, match="indptr"):
        CSRMatrix(good.values, np.array([0, 1, 2]), good.indices, (3, 3))
    with pytest.raises(FormatError, match="indptr"):
        CSRMatrix(good.values, np.array([0, 2, 1, 3]), good.indices, (3, 3))
    with pytest.raises(FormatError, match="index 3 is out of range"):
        CSRMatrix(good.values, good.indptr, np.array([0, 1, 3]), (3, 3))
    with pytest.raises(FormatError, match="strictly increasing"):
        CSCMatrix(np.ones(2), np.array([0, 2]), np.array([1, 1]), (3, 1))
    with pytest.raises(FormatError, match="indices has 2 entries"):
        CSRMatrix(good.values, good.indptr, np.array([0, 1]), (3, 3))
