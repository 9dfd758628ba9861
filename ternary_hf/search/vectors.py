"""The arrays FAISS is given and what a search returns: float32 rows, cosine normalisation, sign bits, hits, recall.

Why one module: the silent ways to get embedding search wrong live here (a float64 or non-contiguous
array, unnormalised vectors under an inner-product index, NaN rows from a broken model, a "no result"
``-1`` counted as a document), so every caller -- the index, the evaluation, the vision benchmarks --
goes through the same few functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError, MissingDependencyError

__all__ = [
    "Hit",
    "as_float32_matrix",
    "binarize",
    "exact_search",
    "import_faiss",
    "normalize_embeddings",
    "recall_at_k",
]


@dataclass(frozen=True)
class Hit:
    """One search result.

    ``id`` is the user's document id (or the row number when none was given), ``score`` the cosine
    similarity (dot product when the index was built with ``normalize=False``; for binary indexes
    without rescoring, ``cos(pi * hamming / dim)``, the angle estimate of the cosine), ``text`` the
    document text when texts were stored, ``position`` the FAISS row.
    """

    id: Any
    score: float
    text: str | None = None
    position: int = -1


def import_faiss() -> Any:
    """The ``faiss`` module, or an error naming the extra that installs it."""
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependencyError(
            f"FAISS is not installed ({exc}); pip install faiss-cpu (or the eval extra: pip install 'ternary-hf[eval]')"
        ) from None
    return faiss


def as_float32_matrix(x: Any, what: str = "embeddings") -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor, or nested list) as a C-contiguous 2-D float32 array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().float().numpy()
    elif isinstance(x, (list, tuple)) and x and hasattr(x[0], "detach"):
        x = np.stack([t.detach().cpu().float().numpy() for t in x])
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidInputError(f"{what} must be a 2-D array (n, dim), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{what} contain NaN or infinite values; check the model's output")
    return np.ascontiguousarray(arr)


def normalize_embeddings(
    embeddings: Any, truncate_dim: int | None = None, normalize: bool = True
) -> np.ndarray:
    """Truncate to the first ``truncate_dim`` dimensions (Matryoshka), then L2-normalise each row.

    Accepts numpy arrays or torch tensors; returns a new C-contiguous float32 array. All-zero rows
    stay zero instead of becoming NaN.
    """
    arr = as_float32_matrix(embeddings)
    if truncate_dim is not None:
        if truncate_dim > arr.shape[1]:
            raise InvalidInputError(
                f"truncate_dim={truncate_dim} is larger than the embedding dimension {arr.shape[1]}; "
                f"pick truncate_dim <= {arr.shape[1]}"
            )
        arr = arr[:, :truncate_dim]
    if normalize:
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        arr = arr / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(arr, dtype=np.float32)


def binarize(embeddings: Any) -> np.ndarray:
    """Sign-bit codes: bit ``j`` is 1 when dimension ``j`` is > 0, packed 8 per byte (numpy order).

    Returns a ``uint8`` array of shape ``(n, dim // 8)``; ``dim`` must be a multiple of 8.
    """
    arr = as_float32_matrix(embeddings)
    if arr.shape[1] % 8:
        raise InvalidInputError(
            f"binary codes need a dimension that is a multiple of 8, got {arr.shape[1]}; "
            "use truncate_dim= to a multiple of 8"
        )
    return np.ascontiguousarray(np.packbits(arr > 0, axis=1))


def exact_search(corpus: Any, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of each query by inner product over ``corpus``: ``(scores, positions)``, both ``(nq, k)``.

    The ground truth every approximate index and every retrieval metric is measured against. Vectors are
    used as given: pass L2-normalised ones (see :func:`normalize_embeddings`) for cosine similarity.
    Where the corpus has fewer than ``k`` rows, positions are ``-1`` and scores ``-inf``, as in
    :meth:`SemanticIndex.search_arrays <ternary_hf.search.SemanticIndex.search_arrays>`.
    """
    faiss = import_faiss()
    corpus = as_float32_matrix(corpus, "corpus embeddings")
    queries = as_float32_matrix(queries, "query embeddings")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    if corpus.shape[1] != queries.shape[1]:
        raise InvalidInputError(
            f"dimension mismatch: corpus vectors have {corpus.shape[1]} dimensions, queries {queries.shape[1]}; "
            "encode both with the same model"
        )
    scores, positions = faiss.knn(queries, corpus, k, metric=faiss.METRIC_INNER_PRODUCT)
    return np.where(positions >= 0, scores, -np.inf).astype(np.float32), positions.astype(np.int64)


def _ids_of(results: Any) -> list[list[Any]]:
    """Turn a list of hit lists, a list of id lists or a 2-D position array into lists of ids."""
    if isinstance(results, np.ndarray):
        return [[int(v) for v in row if v >= 0] for row in results]
    out = []
    for row in results:
        out.append([h.id if isinstance(h, Hit) else (h.item() if hasattr(h, "item") else h) for h in row])
    return out


def recall_at_k(approx: Any, exact: Any, k: int | None = None) -> float:
    """Mean over queries of ``|top-k(approx) ∩ top-k(exact)| / |top-k(exact)|``.

    Both arguments are per-query results: lists of :class:`Hit` lists, lists of id
    lists, or 2-D integer arrays of positions (``-1`` entries, FAISS's "no result", are ignored). ``k``
    defaults to the length of each exact list. Queries whose exact list is empty are skipped.
    """
    a_ids, e_ids = _ids_of(approx), _ids_of(exact)
    if len(a_ids) != len(e_ids):
        raise InvalidInputError(f"approx has {len(a_ids)} queries but exact has {len(e_ids)}; pass the same queries")
    total, counted = 0.0, 0
    for a, e in zip(a_ids, e_ids, strict=True):
        e_top = e if k is None else e[:k]
        if not e_top:
            continue
        a_top = set(a if k is None else a[:k])
        total += len(a_top.intersection(e_top)) / len(e_top)
        counted += 1
    if counted == 0:
        raise InvalidInputError("no query has any exact result; nothing to compute recall on")
    return total / counted
