"""Feature tensors stored sparsely: (batch, positions, features) as coalesced torch COO tensors.

Published dictionaries fire tens of features per token out of tens of thousands, so a dense
(B, T, width) tensor per submodule is mostly zeros; AtP and RelP keep features, deltas, coefficients and
scores only where a feature is active in either run. These helpers read such tensors the way the rest of
the toolkit reads dense ones (and pass dense tensors through unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def coo(indices: torch.Tensor, values: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A coalesced COO tensor from unique, sorted (ndim, nnz) indices (as ``nonzero().t()`` gives)."""
    return torch.sparse_coo_tensor(indices, values, tuple(shape), is_coalesced=True, check_invariants=False)


def dense(t: torch.Tensor) -> torch.Tensor:
    return t.to_dense() if t.is_sparse else t


def total(t: torch.Tensor, dims: int | tuple[int, ...]) -> torch.Tensor:
    """Sum over ``dims`` as a dense tensor."""
    if not t.is_sparse:
        return t.sum(dims)
    dims = tuple(d % t.ndim for d in ((dims,) if isinstance(dims, int) else dims))
    if len(set(dims)) == t.ndim:
        return t._values().sum()
    return torch.sparse.sum(t, dims).to_dense()


def columns(t: torch.Tensor, features: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """(…, K) dense values of the given features (last dimension)."""
    idx = torch.as_tensor(features, dtype=torch.long, device=t.device)
    if not t.is_sparse:
        return t[..., idx]
    return torch.index_select(t, t.ndim - 1, idx).to_dense()


def column(t: torch.Tensor, feature: int) -> torch.Tensor:
    return columns(t, [feature])[..., 0]


def row_sums(rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, table: torch.Tensor,
             n_rows: int) -> torch.Tensor:
    """(n_rows, d): for each row r, Σ weights[k] · table[cols[k]] over the entries k with rows[k] = r. One
    fused gather-and-sum (``embedding_bag``) whose backward gives ∂/∂weights without ever holding the
    (entries, d) gathered rows (7× faster than gathering them, and no such copy kept for the backward)."""
    if rows.numel() > 1 and bool((rows[1:] < rows[:-1]).any()):  # bags must be contiguous
        order = torch.argsort(rows, stable=True)
        rows, cols, weights = rows[order], cols[order], weights[order]
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.nn.functional.embedding_bag(cols, table, torch.cumsum(counts, 0) - counts, mode="sum",
                                             per_sample_weights=weights.to(table.dtype))


def values(t: torch.Tensor) -> torch.Tensor:
    """The stored values (all of a dense tensor)."""
    return t._values() if t.is_sparse else t


def nbytes(t: torch.Tensor) -> int:
    if t.is_sparse:
        return t._indices().numel() * t._indices().element_size() + t._values().numel() * t._values().element_size()
    return t.numel() * t.element_size()
