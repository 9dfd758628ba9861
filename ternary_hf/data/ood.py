"""Out-of-domain evaluation text: technical documentation and a computing dictionary, never distilled on.

Why: the classic tasks test on held-out parts of the very sources a student is distilled on, so they
measure in-domain quality only (issue 28). Two corpora of :mod:`.broad` are therefore kept out of every
default distillation mix (:data:`EVALUATION_DOMAINS`) and serve as domains the student never saw:

* ``django-sections`` (retrieval): the title of a Django documentation section (a short query, often a
  question: "How can I see the raw SQL queries Django is running?") -> the section's prose (a passage of
  up to a few hundred words). Titles that occur more than once in the whole documentation
  ("Examples", "Arguments") are dropped: they name no section.
* ``foldoc-terms`` (retrieval): a FOLDOC headword ("rcp", "menu bar") -> its definition.
* :func:`long_texts`: passages of at least ``min_words`` words (Django pages cut into windows, long
  FOLDOC entries) for the student-teacher cosine per length bucket.

Everything comes from the held-out split (``"test"``) by default, which is the corpus's own hashed
split (the page / the headword is the group), so a user who distills on the ``django-docs`` *train*
split (e.g. to measure what mixing in a domain's own text buys) still never trains on an evaluated page.
"""

from __future__ import annotations

import collections
import functools
import os

from ..errors import InvalidInputError
from .broad import EVALUATION_DOMAINS, django_pages, foldoc_definitions
from .corpora import cache_key
from .splits import TextDataset, check_split, is_test_group, sample_indices

__all__ = ["EVALUATION_DOMAINS", "RETRIEVAL_SETS", "load_retrieval_pairs", "long_texts"]

#: retrieval set -> what its queries and documents are
RETRIEVAL_SETS = {
    "django-sections": "Django documentation: section title -> section prose",
    "foldoc-terms": "FOLDOC computing dictionary: headword -> definition",
}
_MIN_DOC_WORDS = 20  # a section or definition shorter than this is a pointer ("See X"), not a document
_MIN_DEFINITION_WORDS = 8


@functools.lru_cache(maxsize=4)
def _pairs(name: str, split: str, key: str | None) -> tuple[tuple[str, str], ...]:
    """All ``(query, document)`` pairs of one split of a retrieval set, in source order."""
    test = split == "test"
    if name == "django-sections":
        pages = django_pages(key)
        counts = collections.Counter(title.lower() for _, sections in pages for title, _ in sections if title)
        return tuple((title, prose) for page, sections in pages if is_test_group("django-docs", page) == test
                     for title, prose in sections
                     if title and counts[title.lower()] == 1 and len(prose.split()) >= _MIN_DOC_WORDS)
    seen: set[str] = set()
    out = []
    for headword, definition in foldoc_definitions(key):
        if is_test_group("foldoc", headword) != test or len(definition.split()) < _MIN_DEFINITION_WORDS:
            continue
        if definition not in seen:  # synonyms share one definition: keep the first headword
            seen.add(definition)
            out.append((headword, definition))
    return tuple(out)


def load_retrieval_pairs(name: str, split: str = "test", limit: int | None = None, seed: int = 0,
                         cache_dir: str | os.PathLike[str] | None = None) -> tuple[TextDataset, TextDataset]:
    """``(queries, documents)`` of a retrieval set of :data:`RETRIEVAL_SETS`: one query per document,
    ``labels`` pairing them (query ``i`` is relevant to document ``i`` only). ``limit`` keeps a seeded
    sample of that many pairs; the documents are the sampled pairs' own (queries and documents both
    come from the held-out split by default).

    Raises:
        InvalidInputError: unknown set or split, bad limit.
        DatasetUnavailableError / DatasetChecksumError: as for the corpora.
    """
    if name not in RETRIEVAL_SETS:
        raise InvalidInputError(f"unknown retrieval set {name!r}; available: {', '.join(RETRIEVAL_SETS)}")
    check_split(name, split, limit)
    pairs = _pairs(name, split, cache_key(cache_dir))
    chosen = [pairs[i] for i in sample_indices(len(pairs), limit, seed, f"pairs:{name}:{split}")]
    labels = list(range(len(chosen)))
    names = [query for query, _ in chosen]
    queries = TextDataset(f"{name}-queries", split, names, labels, names, ids=[str(i) for i in labels])
    docs = TextDataset(f"{name}-documents", split, [doc for _, doc in chosen], list(labels), names,
                       ids=[str(i) for i in labels])
    return queries, docs


@functools.lru_cache(maxsize=4)
def _long(split: str, min_words: int, key: str | None) -> tuple[tuple[str, str], ...]:
    test = split == "test"
    out = []
    for page, sections in django_pages(key):
        if is_test_group("django-docs", page) != test:
            continue
        words = " ".join(prose for _, prose in sections if prose).split()
        out += [(page, " ".join(words[i:i + min_words])) for i in range(0, len(words) - min_words + 1, min_words)]
    out += [(headword, definition) for headword, definition in _pairs("foldoc-terms", split, key)
            if len(definition.split()) >= min_words]
    return tuple(out)


def long_texts(split: str = "test", min_words: int = 200, limit: int | None = None, seed: int = 0,
               cache_dir: str | os.PathLike[str] | None = None) -> TextDataset:
    """Out-of-domain passages of at least ``min_words`` words (about 1.3 tokens each, so 200 words fill a
    256-token window): consecutive ``min_words``-word windows of the Django pages and the FOLDOC
    definitions that long; ``groups`` is the page or headword. A seeded sample of ``limit`` of them."""
    check_split("long-texts", split, limit)
    if isinstance(min_words, bool) or not isinstance(min_words, int) or min_words < 1:
        raise InvalidInputError(f"min_words must be a positive integer, got {min_words!r}")
    rows = _long(split, min_words, cache_key(cache_dir))
    dataset = TextDataset("long-texts", split, [t for _, t in rows], None, None,
                          ids=[str(i) for i in range(len(rows))], groups=[g for g, _ in rows])
    return dataset.sample(limit, seed, f"long:{split}:{min_words}")
