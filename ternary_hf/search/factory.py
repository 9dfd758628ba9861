"""FAISS index strings: which ones are accepted, how they are built, trained and tuned for a search.

Why: ``faiss.index_factory`` is the menu (no index zoo of our own), but taken raw it builds L2 indexes,
spends minutes on polysemous training nobody uses here, prints one line per PQ sub-quantizer on a small
sample and reports errors as C++ signatures. This module puts the user's string through FAISS with
inner product everywhere, says how many training vectors a string needs, picks default ``nprobe`` /
``efSearch`` values, and turns FAISS errors into messages that list the allowed forms.
A new index kind goes here (its string form, training needs and search parameters).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .vectors import binarize, import_faiss

__all__ = [
    "ALLOWED_INDEX_FORMS",
    "apply_search_params",
    "default_search_params",
    "default_train_size",
    "faiss_reason",
    "make_index",
    "resolve_factory",
    "train_index",
]

#: Human-readable list of the index strings this module accepts, quoted in error messages.
ALLOWED_INDEX_FORMS = (
    "float indexes (any faiss.index_factory string that supports inner product), e.g. "
    "'Flat' (exact), 'HNSW32', 'IVF{nlist},Flat', 'IVF{nlist},PQ{m}' (m must divide the dimension), "
    "'OPQ{m},IVF{nlist},PQ{m}', 'PQ{m}', 'SQ8' (alias 'int8'), 'SQ4', 'HNSW32,SQ8'; "
    "binary (sign-bit) indexes: 'binary' (= 'BFlat', exact Hamming), 'binary,HNSW32' (= 'BHNSW32'), "
    "'binary,IVF{nlist}' (= 'BIVF{nlist}')"
)

_DEFAULT_EF_SEARCH = 64
_MAX_DEFAULT_TRAIN = 100_000


def faiss_reason(exc: BaseException) -> str:
    """The useful part of a FAISS C++ error message (drops the 'Error in <signature> at file:line' part)."""
    msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", msg)


def resolve_factory(index_factory: str) -> tuple[str, bool]:
    """Map the user's index string to ``(faiss_factory, is_binary)`` (string checks only)."""
    if not isinstance(index_factory, str) or not index_factory.strip():
        raise InvalidInputError(f"index_factory must be a non-empty string; allowed forms: {ALLOWED_INDEX_FORMS}")
    s = index_factory.strip()
    low = s.lower()
    if low == "int8":
        return "SQ8", False
    if low == "binary" or low == "binary,flat":
        return "BFlat", True
    if low.startswith("binary,"):
        rest = s.split(",", 1)[1].strip()
        return "B" + rest, True
    if re.match(r"^B(Flat|HNSW|IVF|Hash)", s):
        return s, True
    if "idmap" in low:
        raise InvalidInputError(
            f"index_factory {index_factory!r}: do not use IDMap, SemanticIndex maps ids itself "
            "(pass ids= to build/add); drop the 'IDMap,' prefix"
        )
    return s, False


def make_index(dim: int, faiss_factory: str, binary: bool, user_string: str) -> Any:
    """An empty FAISS index for ``dim``-dimensional vectors: Hamming for binary strings, else inner product."""
    faiss = import_faiss()
    allowed = f"Allowed forms: {ALLOWED_INDEX_FORMS}."
    if binary:
        if dim % 8:
            raise InvalidInputError(
                f"binary index {user_string!r} needs a dimension that is a multiple of 8, got {dim}; "
                "use truncate_dim= to a multiple of 8"
            )
        try:
            return faiss.index_binary_factory(dim, faiss_factory)
        except RuntimeError as exc:
            raise InvalidInputError(
                f"unknown or invalid binary index string {user_string!r} for dimension {dim} "
                f"(FAISS: {faiss_reason(exc)}). {allowed}"
            ) from None
    try:
        index = faiss.index_factory(dim, faiss_factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InvalidInputError(
            f"unknown or invalid index factory string {user_string!r} for dimension {dim} "
            f"(FAISS: {faiss_reason(exc)}). {allowed}"
        ) from None
    _disable_polysemous_training(index)
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise InvalidInputError(
            f"index factory string {user_string!r} gives an index with metric {index.metric_type}, not "
            f"inner product, so scores would not be cosine similarities. {allowed}"
        )
    return index


def _sub_indexes(index: Any) -> Iterator[Any]:
    """``index`` and the indexes it wraps (pre-transform, HNSW storage, refine base), outermost first."""
    faiss = import_faiss()
    seen = 0
    while index is not None and seen < 5:
        yield index
        seen += 1
        inner = None
        for attr in ("index", "storage", "base_index"):
            sub = getattr(index, attr, None)
            if sub is not None and hasattr(sub, "ntotal"):
                inner = sub
                break
        try:
            index = faiss.downcast_index(inner) if inner is not None else None
        except Exception:  # noqa: BLE001 - not a float Index: stop walking
            index = None


def _disable_polysemous_training(index: Any) -> None:
    """Turn off polysemous training on every PQ inside ``index``.

    ``index_factory`` enables it for PQ indexes, but it only serves Hamming pre-filtering under L2 and
    costs minutes of simulated annealing on a sample where plain PQ training takes a fraction of a second.
    """
    for sub in _sub_indexes(index):
        if hasattr(sub, "do_polysemous_training"):
            sub.do_polysemous_training = False


def _quiet_small_training(index: Any, n: int, label: str) -> None:
    """One Python warning instead of FAISS printing one line per PQ sub-quantizer on a small sample."""
    params = []
    for sub in _sub_indexes(index):
        if hasattr(sub, "cp") and hasattr(sub, "nlist"):
            params.append((sub.cp, int(sub.nlist)))
        pq = getattr(sub, "pq", None)
        if pq is not None and hasattr(pq, "cp"):
            params.append((pq.cp, 2 ** int(pq.nbits)))
    if not params:
        return
    wanted = max(cp.min_points_per_centroid * k for cp, k in params)
    if n < wanted:
        warnings.warn(
            f"training {label!r} on {n} vectors; FAISS recommends at least {wanted} for well-placed "
            "centroids (pass train_documents= or a larger train_size, or use fewer IVF lists / PQ bits)",
            stacklevel=5,
        )
        for cp, _ in params:
            cp.min_points_per_centroid = 1


def _min_training_vectors(faiss_factory: str) -> int:
    """Smallest number of training vectors FAISS accepts for this string (k-means needs n >= k)."""
    need = 1
    m = re.search(r"IVF(\d+)", faiss_factory)
    if m:
        need = max(need, int(m.group(1)))
    for m in re.finditer(r"PQ(\d+)(?:x(\d+))?", faiss_factory):
        nbits = int(m.group(2)) if m.group(2) else 8
        need = max(need, 2**nbits)
    return need


def train_index(index: Any, vecs: np.ndarray, binary: bool, faiss_factory: str, user_string: str) -> None:
    """Train ``index`` on the prepared vectors ``vecs``; errors say how to get enough training vectors."""
    need = _min_training_vectors(faiss_factory)
    suggest = max(1, int(math.sqrt(len(vecs))))
    if len(vecs) < need:
        raise InvalidInputError(
            f"index {user_string!r} needs at least {need} training vectors but only {len(vecs)} "
            f"were available; use fewer IVF lists (about sqrt(N), e.g. 'IVF{suggest},...'), fewer PQ "
            "bits, an untrained index such as 'Flat' or 'HNSW32' for a small corpus, "
            "or pass train_documents= with a larger sample"
        )
    _quiet_small_training(index, len(vecs), user_string)
    try:
        index.train(binarize(vecs) if binary else vecs)
    except RuntimeError as exc:
        raise InvalidInputError(
            f"training index {user_string!r} on {len(vecs)} vectors failed (FAISS: "
            f"{faiss_reason(exc)}); give more training vectors (train_documents= or train_size=) "
            "or choose a smaller index"
        ) from None


def default_train_size(faiss_factory: str) -> int:
    """Training vectors buffered before an IVF / PQ / SQ index is trained: 50 per IVF list, within bounds."""
    m = re.search(r"IVF(\d+)", faiss_factory)
    nlist = int(m.group(1)) if m else 0
    return int(min(max(10_000, 50 * nlist), _MAX_DEFAULT_TRAIN))


def default_search_params(faiss_factory: str) -> dict[str, int]:
    """``nprobe`` (nlist / 16, at least 8) for IVF strings and ``efSearch`` for HNSW ones."""
    params: dict[str, int] = {}
    m = re.search(r"IVF(\d+)", faiss_factory)
    if m:
        nlist = int(m.group(1))
        params["nprobe"] = int(min(nlist, max(8, nlist // 16)))
    if "HNSW" in faiss_factory:
        params["efSearch"] = _DEFAULT_EF_SEARCH
    return params


def apply_search_params(index: Any, binary: bool, params: dict[str, Any], k_candidates: int,
                        user_string: str) -> None:
    """Set FAISS search parameters on ``index``; ``efSearch`` is raised to the number of candidates asked."""
    faiss = import_faiss()
    params = dict(params)
    if "efSearch" in params:
        params["efSearch"] = max(int(params["efSearch"]), k_candidates)
    for name, value in params.items():
        if binary:
            if name == "efSearch" and hasattr(index, "hnsw"):
                index.hnsw.efSearch = int(value)
            elif name == "nprobe" and hasattr(index, "nprobe"):
                index.nprobe = int(value)
            else:
                raise InvalidInputError(f"search parameter {name!r} does not apply to binary index {user_string!r}")
            continue
        try:
            faiss.ParameterSpace().set_index_parameter(index, name, float(value))
        except RuntimeError:
            raise InvalidInputError(
                f"search parameter {name!r} does not apply to index {user_string!r}; "
                "use nprobe for IVF indexes and efSearch for HNSW ones"
            ) from None
