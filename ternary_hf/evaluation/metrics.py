"""The numbers the tasks compute from embeddings, as pure functions of arrays (checked by hand in the tests).

Why apart from the tasks: a metric must not depend on how the data were loaded or the model called, so
that P@10 of the student and of the teacher, or of two runs, are computed by the same lines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInputError

__all__ = ["K", "retrieval_metrics", "sentence_pairs", "topk_overlap"]

#: the cut-off of every top-k metric (P@10, nDCG@10, top-10 overlap)
K = 10


def retrieval_metrics(
    hits: np.ndarray, query_labels: Sequence[int], corpus_labels: Sequence[int], k: int = K
) -> tuple[float, float]:
    """(P@k, nDCG@k) of ranked ``hits`` (n_queries x >=k corpus indices, best first), binary relevance.

    A hit is relevant when its corpus label equals the query label. The ideal DCG assumes
    ``min(k, number of relevant corpus items)`` relevant items at the top; a query with no relevant
    item in the corpus scores 0 (it is kept, so an unlucky subset lowers, never flatters, the score).
    """
    hits = np.asarray(hits)[:, :k]
    q = np.asarray(query_labels)
    c = np.asarray(corpus_labels)
    if hits.shape[0] != len(q):
        raise InvalidInputError(f"{hits.shape[0]} rows of hits for {len(q)} queries")
    rel = (c[hits] == q[:, None]).astype(np.float64)
    precision = rel.sum(axis=1) / k
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (rel * discounts[: rel.shape[1]]).sum(axis=1)
    n_rel = np.array([np.count_nonzero(c == label) for label in q])
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])
    idcg = ideal_cum[np.minimum(n_rel, k)]
    ndcg = np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)
    return float(precision.mean()), float(ndcg.mean())


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int = K) -> float:
    """Mean over rows of |top-k of a ∩ top-k of b| / k (order within the top k ignored)."""
    a, b = np.asarray(a)[:, :k], np.asarray(b)[:, :k]
    if a.shape != b.shape:
        raise InvalidInputError(f"result shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist(), strict=True)]))


def sentence_pairs(groups: Sequence[str], seed: int) -> np.ndarray:
    """Index pairs (n x 2) of related and unrelated sentences: each sentence with the next one of
    the same group (article), plus one random partner per sentence."""
    n = len(groups)
    if n < 2:
        raise InvalidInputError("need at least 2 sentences to form pairs")
    pairs = [(i, i + 1) for i in range(n - 1) if groups[i] == groups[i + 1]]
    rng = np.random.default_rng(seed)
    partners = rng.integers(0, n - 1, size=n)
    partners = partners + (partners >= np.arange(n))  # skip self
    pairs += list(zip(range(n), partners.tolist(), strict=True))
    return np.asarray(pairs, dtype=np.int64)
