"""Out-of-domain tasks: text from domains no default distillation mix contains, and every input length.

Why: the classic tasks test on held-out parts of the sources a student is distilled on, and on short
texts; a student can keep ~100% of its teacher there and much less on a user's own domain or on long
inputs (issue 28). These tasks read the held-out split of the evaluation-only corpora of
:mod:`ternary_hf.data.ood` (Django documentation, the FOLDOC computing dictionary):

====================== ==================================================================================
task                   what is measured
====================== ==================================================================================
ood-docs-retrieval     section title -> section prose of held-out Django documentation pages (a short query,
                       often a question, against passages of up to a few hundred words): nDCG@10 and
                       recall@10 (one relevant section per title), exact cosine search.
ood-terms-retrieval    FOLDOC headword -> its definition (a term of one to three words against a
                       definition of a sentence to a page): nDCG@10, recall@10.
ood-length-agreement   only with a teacher: mean student-teacher cosine of long out-of-domain passages cut to
                       their first 32, 64, 128 and 256 tokens (``mean_cosine@N``), i.e. how well the
                       student tracks its teacher at every input length up to the model's own limit.
====================== ==================================================================================

The retrieval tasks sample ``limit`` query-document pairs (queries and documents of the same pairs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..search import exact_search
from .encoders import Encoder
from .metrics import K, recall_scores, retrieval_scores
from .task_data import SkipTask, Task, TaskData

__all__ = ["LENGTH_BUCKETS", "OUT_OF_DOMAIN_TASKS"]

#: token lengths the length-agreement task cuts its passages to
LENGTH_BUCKETS = (32, 64, 128, 256)


def _pair_retrieval(name: str) -> Callable[[Encoder, TaskData], dict[str, np.ndarray]]:
    def run(enc: Encoder, data: TaskData) -> dict[str, np.ndarray]:  # per query: the rows get their intervals
        queries, docs = data.pairs(name)
        if len(docs) < 2:
            raise SkipTask(f"{name}: {len(docs)} document(s) is too few to rank; raise --limit")
        k = min(K, len(docs))
        _, hits = exact_search(enc.encode(docs.texts, f"{name} documents"),
                               enc.encode(queries.texts, f"{name} queries"), k)
        assert queries.labels is not None and docs.labels is not None
        _, ndcg = retrieval_scores(hits, queries.labels, docs.labels, k=k)
        return {f"ndcg@{K}": ndcg, f"recall@{K}": recall_scores(hits, queries.labels, docs.labels, k=k)}

    return run


def _length_agreement(student: Encoder, teacher: Encoder, data: TaskData, notes: list[str]) -> dict[str, float]:
    texts = data.long_texts().texts
    if not texts:
        raise SkipTask("ood-length-agreement: no passage in the subset; raise --limit")
    longest = min(student.max_seq_length, teacher.max_seq_length)
    buckets = [n for n in LENGTH_BUCKETS if n <= longest]
    if len(buckets) < len(LENGTH_BUCKETS):
        notes.append(f"ood-length-agreement: buckets above {longest} tokens skipped (the models' max_seq_length)")
    out = {}
    for n in buckets:
        s = student.encode(texts, f"long passages, {n} tokens", max_length=n)
        t = teacher.encode(texts, f"long passages, {n} tokens", max_length=n)
        if s.shape[1] != t.shape[1]:
            raise SkipTask(f"ood-length-agreement: student dimension {s.shape[1]} != teacher dimension {t.shape[1]}")
        out[f"mean_cosine@{n}"] = float(np.einsum("ij,ij->i", s, t).mean())
    return out


#: the out-of-domain rows of the task registry of :mod:`.tasks`
OUT_OF_DOMAIN_TASKS: dict[str, Task] = {
    "ood-docs-retrieval": Task("out of domain: Django docs section title -> section text: nDCG@10, recall@10",
                               score=_pair_retrieval("django-sections")),
    "ood-terms-retrieval": Task("out of domain: FOLDOC computing term -> definition: nDCG@10, recall@10",
                                score=_pair_retrieval("foldoc-terms")),
    "ood-length-agreement": Task("with a teacher, out of domain: mean student-teacher cosine of passages cut to "
                                 "32 / 64 / 128 / 256 tokens", compare=_length_agreement),
}
