"""The numbers the tasks compute from embeddings, as pure functions of arrays (checked by hand in the tests).

Why apart from the tasks: a metric must not depend on how the data were loaded or the model called, so
that P@10 of the student and of the teacher, or of two runs, are computed by the same lines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInputError

__all__ = ["K", "recall_at_k", "recall_scores", "retention_interval", "retrieval_metrics", "retrieval_scores",
           "sentence_pairs", "topk_overlap"]

#: the cut-off of every top-k metric (P@10, nDCG@10, top-10 overlap)
K = 10
#: bootstrap resamples of :func:`retention_interval`
RESAMPLES = 2000


def retrieval_metrics(
    hits: np.ndarray, query_labels: Sequence[int], corpus_labels: Sequence[int], k: int = K
) -> tuple[float, float]:
    """(P@k, nDCG@k) of ranked ``hits``: the means over queries of :func:`retrieval_scores`."""
    precision, ndcg = retrieval_scores(hits, query_labels, corpus_labels, k)
    return float(precision.mean()), float(ndcg.mean())


def retrieval_scores(
    hits: np.ndarray, query_labels: Sequence[int], corpus_labels: Sequence[int], k: int = K
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, (P@k, nDCG@k) of ranked ``hits`` (n_queries x >=k corpus indices, best first), binary relevance.

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
    return precision, ndcg


def recall_at_k(hits: np.ndarray, query_labels: Sequence[int], corpus_labels: Sequence[int], k: int = K) -> float:
    """Mean over queries of :func:`recall_scores`: with one relevant document per query, the share of
    queries that find it in their top ``k``."""
    return float(recall_scores(hits, query_labels, corpus_labels, k).mean())


def recall_scores(hits: np.ndarray, query_labels: Sequence[int], corpus_labels: Sequence[int],
                  k: int = K) -> np.ndarray:
    """Per query, (relevant items in the top ``k``) / min(k, relevant items in the corpus); a query with
    no relevant item scores 0."""
    hits = np.asarray(hits)[:, :k]
    q, c = np.asarray(query_labels), np.asarray(corpus_labels)
    if hits.shape[0] != len(q):
        raise InvalidInputError(f"{hits.shape[0]} rows of hits for {len(q)} queries")
    found = (c[hits] == q[:, None]).sum(axis=1)
    n_rel = np.minimum(np.array([np.count_nonzero(c == label) for label in q]), k)
    return np.divide(found, n_rel, out=np.zeros(len(q)), where=n_rel > 0)


def retention_interval(student: np.ndarray, teacher: np.ndarray, seed: int = 0, level: float = 0.95,
                       resamples: int = RESAMPLES) -> tuple[float, float] | None:
    """A percentile-bootstrap interval of the retention ``100 * mean(student) / mean(teacher)`` of a
    metric that is a mean over items (queries, test texts) both models were scored on.

    Why: an evaluation subset is a sample of a task's items, and a retention of 97% on 495 queries
    could as well be 95% or 99% on another sample; the interval says how far. The items are resampled
    together for both models (paired), so what the models share does not widen it. It covers the
    sampling of the items only, not the run-to-run spread of a distillation (seeds). ``None`` when
    there are fewer than two items or no resample gives the teacher a nonzero mean.
    """
    student, teacher = np.asarray(student, dtype=np.float64), np.asarray(teacher, dtype=np.float64)
    if student.shape != teacher.shape or student.ndim != 1:
        raise InvalidInputError(f"per-item scores must be paired: shapes {student.shape} and {teacher.shape}")
    n = len(student)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    ratios = []
    for start in range(0, resamples, 250):  # bounded memory: 250 x n indices at a time
        idx = rng.integers(0, n, size=(min(250, resamples - start), n))
        s, t = student[idx].mean(axis=1), teacher[idx].mean(axis=1)
        ratios.append(100.0 * s[t > 0] / t[t > 0])
    ratios = np.concatenate(ratios)
    if not len(ratios):
        return None
    tail = 100.0 * (1.0 - level) / 2
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return float(low), float(high)


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
