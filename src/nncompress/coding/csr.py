"""Compressed sparse row / column export of 2-D weights (Deep Compression, P6).

Deep Compression (Han et al. 2016, section 2) stores a pruned layer in CSR or CSC form:
the nonzero values, their column (row) indices and a pointer per row (column), that is
``2 * nnz + n + 1`` numbers for ``n`` rows (columns). ``csr_storage_numbers`` gives that
count; the byte-exact encoding (relative indices, bit packing, Huffman) lives in the
other ``codec`` modules.

Example:
    >>> m = np.array([[0, 2, 0], [1, 0, 3]])
    >>> c = to_csr(m)
    >>> c.values.tolist(), c.indptr.tolist(), c.indices.tolist()
    ([2, 1, 3], [0, 1, 3], [1, 0, 2])
    >>> csr_storage_numbers(c), bool((from_csr(c) == m).all())
    (9, True)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from nncompress.errors import FormatError, NNCompressError


@dataclass(frozen=True, eq=False)
class CSRMatrix:
    """Row-compressed matrix: the nonzeros of row ``r`` are
    ``values[indptr[r]:indptr[r + 1]]`` at columns ``indices[indptr[r]:indptr[r + 1]]``
    (strictly increasing within a row).
    """

    values: np.ndarray  # (nnz,)
    indptr: np.ndarray  # (rows + 1,) int64
    indices: np.ndarray  # (nnz,) int64 column indices
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        _validate(self, major=0)


@dataclass(frozen=True, eq=False)
class CSCMatrix:
    """Column-compressed matrix: the nonzeros of column ``c`` are
    ``values[indptr[c]:indptr[c + 1]]`` at rows ``indices[indptr[c]:indptr[c + 1]]``
    (strictly increasing within a column).
    """

    values: np.ndarray  # (nnz,)
    indptr: np.ndarray  # (cols + 1,) int64
    indices: np.ndarray  # (nnz,) int64 row indices
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        _validate(self, major=1)


def _validate(m: CSRMatrix | CSCMatrix, major: int) -> None:
    """Normalise dtypes and check the structure; damaged structure raises FormatError."""
    shape = tuple(int(s) for s in m.shape)
    if len(shape) != 2 or min(shape) < 0:
        raise FormatError(f"shape must be two sizes >= 0, got {m.shape}")
    values = np.asarray(m.values).reshape(-1)
    indptr = np.asarray(m.indptr)
    indices = np.asarray(m.indices)
    for name, arr in (("indptr", indptr), ("indices", indices)):
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise FormatError(f"{name} must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    indptr, indices = indptr.astype(np.int64), indices.astype(np.int64)
    n_major, n_minor = shape[major], shape[1 - major]
    nnz = values.size
    if indptr.size != n_major + 1 or indptr[0] != 0 or indptr[-1] != nnz \
            or np.any(np.diff(indptr) < 0):
        raise FormatError(
            f"indptr must have {n_major + 1} non-decreasing entries from 0 to nnz={nnz}; "
            f"got {indptr.size} entries from {indptr[0] if indptr.size else None} to "
            f"{indptr[-1] if indptr.size else None}"
        )
    if indices.size != nnz:
        raise FormatError(f"indices has {indices.size} entries; nnz={nnz} needed")
    if nnz and (indices.min() < 0 or indices.max() >= n_minor):
        bad = int(indices[(indices < 0) | (indices >= n_minor)][0])
        raise FormatError(f"index {bad} is out of range; allowed: 0..{n_minor - 1}")
    line = np.repeat(np.arange(n_major), np.diff(indptr))  # (nnz,) row (column) of each
    same = line[1:] == line[:-1]
    if np.any(indices[1:][same] <= indices[:-1][same]):
        raise FormatError("indices must be strictly increasing within each row/column")
    object.__setattr__(m, "shape", shape)
    object.__setattr__(m, "values", values)
    object.__setattr__(m, "indptr", indptr)
    object.__setattr__(m, "indices", indices)


def _as_matrix(matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    """A 2-D numpy view of ``matrix`` (a tensor is detached and moved to the CPU)."""
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu()
        if matrix.dtype == torch.bfloat16:  # numpy has no bfloat16; widening is exact
            matrix = matrix.float()
        matrix = matrix.numpy()
    arr = np.asarray(matrix)
    if arr.ndim != 2:
        raise NNCompressError(f"matrix must be 2-D, got shape {arr.shape}")
    return arr


def _compress(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, indptr, minor indices) of the nonzeros of ``arr`` (major, minor), row-major."""
    major, minor = np.nonzero(arr)  # (nnz,) each, row-major order
    indptr = np.zeros(arr.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(major, minlength=arr.shape[0]), out=indptr[1:])
    return arr[major, minor], indptr, minor.astype(np.int64)


def to_csr(matrix: np.ndarray | torch.Tensor) -> CSRMatrix:
    """CSR form of a 2-D array or tensor (exact zeros are dropped, NaN is kept).

    Example:
        >>> to_csr(np.eye(2)).indices.tolist()
        [0, 1]
    """
    arr = _as_matrix(matrix)  # (rows, cols)
    values, indptr, indices = _compress(arr)
    return CSRMatrix(values, indptr, indices, arr.shape)


def to_csc(matrix: np.ndarray | torch.Tensor) -> CSCMatrix:
    """CSC form of a 2-D array or tensor.

    Example:
        >>> to_csc(np.array([[0, 1], [2, 3]])).values.tolist()
        [2, 1, 3]
    """
    arr = _as_matrix(matrix)  # (rows, cols)
    values, indptr, indices = _compress(arr.T)
    return CSCMatrix(values, indptr, indices, arr.shape)


def from_csr(csr: CSRMatrix) -> np.ndarray:
    """Dense array (rows, cols) of ``csr``.

    Example:
        >>> from_csr(to_csr(np.array([[0, 5]]))).tolist()
        [[0, 5]]
    """
    dense = np.zeros(csr.shape, dtype=csr.values.dtype)
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))  # (nnz,)
    dense[rows, csr.indices] = csr.values
    return dense


def from_csc(csc: CSCMatrix) -> np.ndarray:
    """Dense array (rows, cols) of ``csc``.

    Example:
        >>> from_csc(to_csc(np.array([[0, 5]]))).tolist()
        [[0, 5]]
    """
    dense = np.zeros(csc.shape, dtype=csc.values.dtype)
    cols = np.repeat(np.arange(csc.shape[1]), np.diff(csc.indptr))  # (nnz,)
    dense[csc.indices, cols] = csc.values
    return dense


def csr_storage_numbers(m: CSRMatrix | CSCMatrix) -> int:
    """Numbers the paper counts for CSR/CSC storage: ``2 * nnz + n + 1``, ``n`` being
    the rows (CSR) or columns (CSC).

    Example:
        >>> csr_storage_numbers(to_csr(np.eye(3)))
        10
    """
    return 2 * int(m.values.size) + int(m.indptr.size)


def to_torch(m: CSRMatrix | CSCMatrix) -> torch.Tensor:
    """``torch.sparse_csr_tensor`` (or ``sparse_csc_tensor``) holding the same matrix.

    Example:
        >>> to_torch(to_csr(np.eye(2, dtype=np.float32))).to_dense().tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    values = torch.from_numpy(np.ascontiguousarray(m.values))
    indptr = torch.from_numpy(m.indptr)
    indices = torch.from_numpy(m.indices)
    build = torch.sparse_csr_tensor if isinstance(m, CSRMatrix) else torch.sparse_csc_tensor
    with warnings.catch_warnings():  # torch warns that sparse compressed tensors are beta
        warnings.filterwarnings("ignore", message=".*is in beta state")
        return build(indptr, indices, values, size=m.shape, check_invariants=True)
