"""Semantic search over sentence-transformers embeddings with FAISS, done the same way every time.

Why this exists: a ternary embedding model is only useful if its vectors go into a search index, and
the easy ways to get that wrong are silent — an L2 index over unnormalised vectors instead of cosine,
a float64 or non-contiguous array handed to FAISS, a PQ index trained on ten vectors, queries encoded
by a model of another dimension, a result row number that nobody can map back to a document. This
module wraps ``faiss.index_factory`` (rather than inventing its own index menu) behind one class,
:class:`SemanticIndex`, that

* L2-normalises float32 C-contiguous vectors and builds every float index with
  ``METRIC_INNER_PRODUCT``, so scores are cosine similarities (``normalize=False`` gives plain dot
  product, still inner product, never L2);
* optionally truncates Matryoshka-style (keep the first ``truncate_dim`` dimensions, then
  renormalise);
* supports binary codes (the sign bit of each dimension, ``IndexBinaryFlat`` / ``IndexBinaryHNSW`` /
  ``IndexBinaryIVF`` with Hamming distance) with rescoring of the top ``k * rescore_multiplier``
  candidates against stored int8 / float16 / float32 vectors;
* streams: documents are encoded and added chunk by chunk, so the float embeddings of the whole
  corpus are never held in memory (only the index codes, plus the rescoring vectors which live in a
  file on disk, memory-mapped when read);
* trains IVF / PQ / SQ indexes from a sample (the first ``train_size`` vectors of the stream, or an
  explicit ``train_documents`` sample) with a clear error when there are too few;
* maps FAISS row numbers back to the user's ids and texts (a JSONL sidecar read by byte offset);
* saves and loads a folder, recording the model, dimensions, normalisation and truncation, and
  refuses to query with a model whose embedding dimension does not match;
* takes a separate query encoder for asymmetric search (documents indexed with the FP32 teacher,
  queries encoded with the ternary student).

Saved folder layout (``format_version`` 1):

``metadata.json``
    ``format``, ``format_version``, ``model_name``, ``query_model_name``, ``model_quantization`` and
    ``query_model_quantization`` (the models' ``quantization_config``, e.g. ternary, or null),
    ``model_dim`` (dimension the document model produces), ``dim`` (dimension indexed, after
    truncation), ``truncate_dim``, ``normalize``, ``metric`` (``"cosine"`` or ``"dot"``),
    ``train_size``, ``index_factory`` (as given),
    ``faiss_factory`` (as passed to FAISS), ``binary``, ``rescore`` (``null`` or the dtype of the
    rescoring vectors), ``rescore_multiplier``, ``search_params``, ``ntotal``, ``store_texts``,
    ``faiss_version``.
``index.faiss``
    ``faiss.write_index`` output (``faiss.write_index_binary`` when ``binary`` is true).
``documents.jsonl``
    One ``{"id": ..., "text": ...}`` object per line, UTF-8; line ``i`` is FAISS row ``i``.
``rescore.f32`` / ``rescore.f16`` / ``rescore.i8`` (only when ``rescore`` is set)
    Raw little-endian row-major vectors of shape ``(ntotal, dim)``, already truncated and
    normalised; for int8 also ``rescore_scales.f32``, one float32 scale per row
    (``vector ~= codes * scale``, ``scale = max|v| / 127``).

Example::

    from sentence_transformers import SentenceTransformer
    from ternary_hf.search import SemanticIndex

    teacher = SentenceTransformer("all-MiniLM-L6-v2")
    index = SemanticIndex.build(teacher, ["first doc", "second doc"], index_factory="HNSW32")
    hits = index.search(["which doc?"], k=1)[0]
    print(hits[0].id, hits[0].score, hits[0].text)
    index.save("my-index")

    # asymmetric: documents stay as the FP32 teacher encoded them, queries come from the ternary student
    student = SentenceTransformer("./ternary-minilm")  # after `import ternary_hf`
    index = SemanticIndex.load("my-index", query_model=student)
    hits = index.search(["which doc?"], k=1)

    # precomputed embeddings (numpy or torch) and raw arrays for benchmarks
    index = SemanticIndex.from_embeddings(doc_embeddings, "binary")  # int8 rescoring by default
    scores, positions = index.search_arrays(query_embeddings, k=10)
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import re
import shutil
import tempfile
import warnings
import weakref
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ALLOWED_INDEX_FORMS",
    "FORMAT_VERSION",
    "Hit",
    "SemanticIndex",
    "binarize",
    "normalize_embeddings",
    "recall_at_k",
]

FORMAT_NAME = "ternary-hf-semantic-index"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
INDEX_FILE = "index.faiss"
DOCUMENTS_FILE = "documents.jsonl"

#: Human-readable list of the index strings this module accepts, quoted in error messages.
ALLOWED_INDEX_FORMS = (
    "float indexes (any faiss.index_factory string that supports inner product), e.g. "
    "'Flat' (exact), 'HNSW32', 'IVF{nlist},Flat', 'IVF{nlist},PQ{m}' (m must divide the dimension), "
    "'OPQ{m},IVF{nlist},PQ{m}', 'PQ{m}', 'SQ8' (alias 'int8'), 'SQ4', 'HNSW32,SQ8'; "
    "binary (sign-bit) indexes: 'binary' (= 'BFlat', exact Hamming), 'binary,HNSW32' (= 'BHNSW32'), "
    "'binary,IVF{nlist}' (= 'BIVF{nlist}')"
)

_RESCORE_DTYPES = {"float32": "<f4", "float16": "<f2", "int8": "i1"}
_RESCORE_SUFFIX = {"float32": "f32", "float16": "f16", "int8": "i8"}
_DEFAULT_EF_SEARCH = 64
_MAX_DEFAULT_TRAIN = 100_000


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


# ----------------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------------


def _as_float32_matrix(x: Any, what: str = "embeddings") -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor, or nested list) as a C-contiguous 2-D float32 array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().float().numpy()
    elif isinstance(x, (list, tuple)) and x and hasattr(x[0], "detach"):
        x = np.stack([t.detach().cpu().float().numpy() for t in x])
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, dim), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinite values; check the model's output")
    return np.ascontiguousarray(arr)


def normalize_embeddings(
    embeddings: Any, truncate_dim: int | None = None, normalize: bool = True
) -> np.ndarray:
    """Truncate to the first ``truncate_dim`` dimensions (Matryoshka), then L2-normalise each row.

    Accepts numpy arrays or torch tensors; returns a new C-contiguous float32 array. All-zero rows
    stay zero instead of becoming NaN.
    """
    arr = _as_float32_matrix(embeddings)
    if truncate_dim is not None:
        if truncate_dim > arr.shape[1]:
            raise ValueError(
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
    arr = _as_float32_matrix(embeddings)
    if arr.shape[1] % 8:
        raise ValueError(
            f"binary codes need a dimension that is a multiple of 8, got {arr.shape[1]}; "
            "use truncate_dim= to a multiple of 8"
        )
    return np.ascontiguousarray(np.packbits(arr > 0, axis=1))


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

    Both arguments are per-query results: lists of :class:`Hit` lists, lists of id lists, or 2-D
    integer arrays of positions (``-1`` entries, FAISS's "no result", are ignored). ``k`` defaults to
    the length of each exact list. Queries whose exact list is empty are skipped.
    """
    a_ids, e_ids = _ids_of(approx), _ids_of(exact)
    if len(a_ids) != len(e_ids):
        raise ValueError(f"approx has {len(a_ids)} queries but exact has {len(e_ids)}; pass the same queries")
    total, counted = 0.0, 0
    for a, e in zip(a_ids, e_ids, strict=True):
        e_top = e if k is None else e[:k]
        if not e_top:
            continue
        a_top = set(a if k is None else a[:k])
        total += len(a_top.intersection(e_top)) / len(e_top)
        counted += 1
    if counted == 0:
        raise ValueError("no query has any exact result; nothing to compute recall on")
    return total / counted


def _faiss_reason(exc: BaseException) -> str:
    """The useful part of a FAISS C++ error message (drops the 'Error in <signature> at file:line' part)."""
    msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
    msg = re.sub(r"^Error in .*? at \S+:\d+: ", "", msg)
    return msg


def _resolve_factory(index_factory: str) -> tuple[str, bool]:
    """Map the user's index string to ``(faiss_factory, is_binary)`` (string checks only)."""
    if not isinstance(index_factory, str) or not index_factory.strip():
        raise ValueError(f"index_factory must be a non-empty string; allowed forms: {ALLOWED_INDEX_FORMS}")
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
        raise ValueError(
            f"index_factory {index_factory!r}: do not use IDMap, SemanticIndex maps ids itself "
            "(pass ids= to build/add); drop the 'IDMap,' prefix"
        )
    return s, False


def _make_index(dim: int, faiss_factory: str, binary: bool, user_string: str) -> Any:
    import faiss

    allowed = f"Allowed forms: {ALLOWED_INDEX_FORMS}."
    if binary:
        if dim % 8:
            raise ValueError(
                f"binary index {user_string!r} needs a dimension that is a multiple of 8, got {dim}; "
                "use truncate_dim= to a multiple of 8"
            )
        try:
            return faiss.index_binary_factory(dim, faiss_factory)
        except RuntimeError as exc:
            raise ValueError(
                f"unknown or invalid binary index string {user_string!r} for dimension {dim} "
                f"(FAISS: {_faiss_reason(exc)}). {allowed}"
            ) from None
    try:
        index = faiss.index_factory(dim, faiss_factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(
            f"unknown or invalid index factory string {user_string!r} for dimension {dim} "
            f"(FAISS: {_faiss_reason(exc)}). {allowed}"
        ) from None
    _disable_polysemous_training(index)
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(
            f"index factory string {user_string!r} gives an index with metric {index.metric_type}, not "
            f"inner product, so scores would not be cosine similarities. {allowed}"
        )
    return index


def _sub_indexes(index: Any) -> Iterator[Any]:
    """``index`` and the indexes it wraps (pre-transform, HNSW storage, refine base), outermost first."""
    import faiss

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
    costs minutes of simulated annealing (measured: 45 s for PQ8 on 1,000 vectors vs 0.16 s without).
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
            stacklevel=4,
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


def _default_train_size(faiss_factory: str) -> int:
    m = re.search(r"IVF(\d+)", faiss_factory)
    nlist = int(m.group(1)) if m else 0
    return int(min(max(10_000, 50 * nlist), _MAX_DEFAULT_TRAIN))


def _default_search_params(faiss_factory: str) -> dict[str, int]:
    params: dict[str, int] = {}
    m = re.search(r"IVF(\d+)", faiss_factory)
    if m:
        nlist = int(m.group(1))
        params["nprobe"] = int(min(nlist, max(8, nlist // 16)))
    if "HNSW" in faiss_factory:
        params["efSearch"] = _DEFAULT_EF_SEARCH
    return params


def _model_name(model: Any) -> str | None:
    """Best-effort name or path of a sentence-transformers / transformers model, for the metadata."""
    getters = (
        lambda m: m[0].auto_model.config._name_or_path,
        lambda m: m.config._name_or_path,
        lambda m: m.name_or_path,
        lambda m: m.model_card_data.base_model,
    )
    for get in getters:
        try:
            value = get(model)
        except Exception:  # noqa: BLE001 - any missing attribute just means "try the next one"
            continue
        if isinstance(value, (str, os.PathLike)) and str(value):
            return str(value)
    return None


def _model_quantization(model: Any) -> dict[str, Any] | None:
    """The model's ``quantization_config`` as a dict (e.g. ``quant_method: ternary``), or None.

    Recorded because a model quantized on the fly keeps the FP32 folder as its name: without this the
    metadata would claim FP32 embeddings.
    """
    for get in (lambda m: m[0].auto_model.config, lambda m: m.config):
        try:
            config = get(model)
        except Exception:  # noqa: BLE001
            continue
        q = getattr(config, "quantization_config", None)
        if q is None:
            return None
        q = q.to_dict() if hasattr(q, "to_dict") else q
        return json.loads(json.dumps(q, default=str)) if isinstance(q, dict) else {"repr": str(q)}
    return None


def _model_dim(model: Any) -> int | None:
    for attr in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        fn = getattr(model, attr, None)
        if callable(fn):
            try:
                dim = fn()
            except Exception:  # noqa: BLE001
                continue
            if isinstance(dim, int) and dim > 0:
                return dim
    return None


def _encode(encoder: Any, texts: list[str], batch_size: int, role: str) -> np.ndarray:
    """Encode ``texts`` with a sentence-transformers-like object (anything with ``.encode``)."""
    fn = getattr(encoder, "encode_query" if role == "query" else "encode_document", None)
    if not callable(fn):
        fn = getattr(encoder, "encode", None)
    if not callable(fn):
        raise TypeError(
            f"{type(encoder).__name__} has no .encode(); pass a SentenceTransformer or an object with "
            "encode(list_of_texts) -> array of shape (n, dim)"
        )
    wanted = {"batch_size": batch_size, "show_progress_bar": False, "convert_to_numpy": True}
    try:
        params = inspect.signature(fn).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            wanted = {k: v for k, v in wanted.items() if k in params}
    except (TypeError, ValueError):
        wanted = {}
    return _as_float32_matrix(fn(texts, **wanted), what=f"{role} embeddings")


def _chunks(iterator: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk


# ----------------------------------------------------------------------------------------------------
# On-disk side stores (append-only, copied on first write after a load)
# ----------------------------------------------------------------------------------------------------


class _RescoreStore:
    """Rescoring vectors in a raw file, appended chunk by chunk and memory-mapped when read."""

    def __init__(self, kind: str, dim: int, directory: Path, count: int = 0) -> None:
        self.kind, self.dim, self.directory, self.count = kind, dim, Path(directory), count
        self.dtype = np.dtype(_RESCORE_DTYPES[kind])

    @property
    def filenames(self) -> list[str]:
        names = [f"rescore.{_RESCORE_SUFFIX[self.kind]}"]
        if self.kind == "int8":
            names.append("rescore_scales.f32")
        return names

    def relocate(self, directory: Path) -> None:
        directory = Path(directory)
        for name in self.filenames:
            src = self.directory / name
            if src.exists():
                shutil.copyfile(src, directory / name)
        self.directory = directory

    def append(self, vectors: np.ndarray) -> None:
        if self.kind == "int8":
            scale = np.abs(vectors).max(axis=1) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            codes = np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8)
            with open(self.directory / self.filenames[0], "ab") as fh:
                fh.write(codes.tobytes())
            with open(self.directory / self.filenames[1], "ab") as fh:
                fh.write(scale.astype("<f4").tobytes())
        else:
            with open(self.directory / self.filenames[0], "ab") as fh:
                fh.write(vectors.astype(self.dtype).tobytes())
        self.count += len(vectors)

    def get(self, positions: np.ndarray) -> np.ndarray:
        """Float32 vectors of the given rows (sorted unique positions read best)."""
        if self.count == 0 or len(positions) == 0:
            return np.zeros((len(positions), self.dim), dtype=np.float32)
        mm = np.memmap(self.directory / self.filenames[0], dtype=self.dtype, mode="r",
                       shape=(self.count, self.dim))
        out = np.asarray(mm[positions], dtype=np.float32)
        if self.kind == "int8":
            scales = np.memmap(self.directory / self.filenames[1], dtype="<f4", mode="r", shape=(self.count,))
            out *= np.asarray(scales[positions], dtype=np.float32)[:, None]
        return out

    def nbytes(self) -> int:
        paths = [self.directory / n for n in self.filenames]
        return sum(p.stat().st_size for p in paths if p.exists())


class _DocumentStore:
    """``documents.jsonl``: one ``{"id", "text"}`` line per FAISS row, looked up by byte offset."""

    def __init__(self, directory: Path, count: int = 0, store_texts: bool = True) -> None:
        self.directory, self.count, self.store_texts = Path(directory), count, store_texts
        self._offsets: array | None = array("q") if count == 0 else None  # lazily rebuilt after load

    @property
    def path(self) -> Path:
        return self.directory / DOCUMENTS_FILE

    def relocate(self, directory: Path) -> None:
        directory = Path(directory)
        if self.path.exists():
            shutil.copyfile(self.path, directory / DOCUMENTS_FILE)
        self.directory = directory

    def _ensure_offsets(self) -> array:
        if self._offsets is None:
            offsets, pos = array("q"), 0
            with open(self.path, "rb") as fh:
                for line in fh:
                    offsets.append(pos)
                    pos += len(line)
            if len(offsets) != self.count:
                raise ValueError(
                    f"{self.path} has {len(offsets)} lines but the index has {self.count} vectors; the "
                    "folder is inconsistent, rebuild it"
                )
            self._offsets = offsets
        return self._offsets

    def append(self, ids: Sequence[Any], texts: Sequence[str]) -> None:
        offsets = self._ensure_offsets() if self.count else self._offsets
        assert offsets is not None
        pos = self.path.stat().st_size if self.path.exists() else 0
        lines = []
        for doc_id, text in zip(ids, texts, strict=True):
            record = {"id": doc_id, "text": text} if self.store_texts else {"id": doc_id}
            try:
                line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
            except TypeError:
                raise ValueError(
                    f"document id {doc_id!r} of type {type(doc_id).__name__} cannot be stored; "
                    "use str or int ids"
                ) from None
            offsets.append(pos)
            pos += len(line)
            lines.append(line)
        with open(self.path, "ab") as fh:
            fh.write(b"".join(lines))
        self.count += len(ids)

    def get(self, positions: Iterable[int]) -> dict[int, tuple[Any, str | None]]:
        offsets = self._ensure_offsets()
        out: dict[int, tuple[Any, str | None]] = {}
        with open(self.path, "rb") as fh:
            for p in sorted(set(int(p) for p in positions)):
                fh.seek(offsets[p])
                rec = json.loads(fh.readline())
                out[p] = (rec.get("id", p), rec.get("text"))
        return out

    def nbytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


# ----------------------------------------------------------------------------------------------------
# The index
# ----------------------------------------------------------------------------------------------------


class SemanticIndex:
    """A FAISS index over sentence embeddings, with ids, texts, save/load and asymmetric queries.

    Args:
        model: the document encoder (a ``SentenceTransformer`` or any object with
            ``encode(texts) -> (n, dim)``). May be ``None`` when you only add precomputed embeddings.
        index_factory: a ``faiss.index_factory`` string (see :data:`ALLOWED_INDEX_FORMS`), ``"int8"``
            (= ``"SQ8"``), or ``"binary"`` / ``"binary,HNSW32"`` / ``"binary,IVF{n}"`` for sign-bit codes.
        query_model: encoder for queries when it differs from ``model`` (asymmetric search, e.g. the
            ternary student querying an index built by its FP32 teacher). Must produce embeddings of
            the same dimension.
        truncate_dim: keep only the first ``truncate_dim`` dimensions (then renormalise).
        normalize: L2-normalise vectors so inner product = cosine (default). ``False`` = dot product.
        rescore: dtype of the vectors kept on disk to rescore the top candidates: ``"int8"`` (1 byte
            per dimension + a 4-byte scale per vector), ``"float16"``, ``"float32"`` or ``None``.
            ``"auto"`` means ``"int8"`` for binary indexes and ``None`` otherwise.
        rescore_multiplier: how many candidates per requested result are rescored.
        train_size: number of vectors to train IVF / PQ / SQ indexes on (default: 10,000 or 50 per IVF
            list, up to 100,000). Those vectors are buffered in memory until training.
        search_params: FAISS search parameters such as ``{"nprobe": 16}`` or ``{"efSearch": 128}``
            (defaults: nprobe = nlist / 16 (at least 8), efSearch = 64).
        store_texts: keep document texts in ``documents.jsonl`` to return them in hits.
        model_name: name recorded in the metadata (default: taken from the model).
    """

    def __init__(
        self,
        model: Any = None,
        index_factory: str = "Flat",
        *,
        query_model: Any = None,
        truncate_dim: int | None = None,
        normalize: bool = True,
        rescore: str | None = "auto",
        rescore_multiplier: int = 4,
        train_size: int | None = None,
        search_params: dict[str, Any] | None = None,
        store_texts: bool = True,
        model_name: str | None = None,
    ) -> None:
        if truncate_dim is not None and (not isinstance(truncate_dim, int) or truncate_dim <= 0):
            raise ValueError(f"truncate_dim must be a positive int or None, got {truncate_dim!r}")
        if not isinstance(rescore_multiplier, int) or rescore_multiplier < 1:
            raise ValueError(f"rescore_multiplier must be an int >= 1, got {rescore_multiplier!r}")
        if train_size is not None and train_size < 1:
            raise ValueError(f"train_size must be >= 1, got {train_size}")
        self.index_factory = index_factory
        self.faiss_factory, self.binary = _resolve_factory(index_factory)
        if rescore == "auto":
            rescore = "int8" if self.binary else None
        if rescore is not None and rescore not in _RESCORE_DTYPES:
            raise ValueError(
                f"rescore must be one of {sorted(_RESCORE_DTYPES)}, 'auto' or None, got {rescore!r}"
            )
        self.model = model
        self.query_model = query_model
        self.truncate_dim = truncate_dim
        self.normalize = normalize
        self.rescore = rescore
        self.rescore_multiplier = rescore_multiplier
        self.train_size = train_size or _default_train_size(self.faiss_factory)
        self.search_params = {**_default_search_params(self.faiss_factory), **(search_params or {})}
        self.store_texts = store_texts
        self.model_name = model_name or (_model_name(model) if model is not None else None)
        self.query_model_name = _model_name(query_model) if query_model is not None else None
        self.model_quantization = _model_quantization(model) if model is not None else None
        self.query_model_quantization = _model_quantization(query_model) if query_model is not None else None
        self.model_dim: int | None = None
        self.dim: int | None = None
        self.index: Any = None
        self._tmp: Path | None = None
        self._docs: _DocumentStore | None = None
        self._rescore_store: _RescoreStore | None = None
        self._pending: list[tuple[np.ndarray, list[Any], list[str | None]]] = []
        self._pending_count = 0
        dim = _model_dim(model) if model is not None else None
        qdim = _model_dim(query_model) if query_model is not None else None
        if dim is not None and qdim is not None and dim != qdim:
            raise ValueError(
                f"dimension mismatch: the query model {self.query_model_name!r} produces {qdim}-dimensional "
                f"embeddings but the document model {self.model_name!r} produces {dim}; asymmetric search "
                "needs a query model that shares the document model's embedding space"
            )
        if dim is not None:
            self._init_dim(dim)  # validates the index string before any encoding

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        model: Any,
        documents: Iterable[str] | Iterable[tuple[Any, str]],
        index_factory: str = "Flat",
        ids: Iterable[Any] | None = None,
        *,
        batch_size: int = 32,
        chunk_size: int = 1024,
        truncate_dim: int | None = None,
        rescore: str | None = "auto",
        train_documents: Iterable[str] | None = None,
        show_progress_bar: bool | None = None,
        **kwargs: Any,
    ) -> SemanticIndex:
        """Encode ``documents`` with ``model`` chunk by chunk and index them.

        ``documents`` may be any iterable (a generator is fine; it is read once), of strings or of
        ``(id, text)`` pairs. ``ids`` (same length) default to row numbers. Other keyword arguments
        go to :class:`SemanticIndex`. Raises ``ValueError`` on an empty corpus.
        """
        index = cls(model, index_factory, truncate_dim=truncate_dim, rescore=rescore, **kwargs)
        index.add(
            documents, ids, batch_size=batch_size, chunk_size=chunk_size,
            train_documents=train_documents, show_progress_bar=show_progress_bar,
        )
        if index.ntotal == 0:
            raise ValueError("the corpus is empty: no documents to index; check the input file / iterable")
        return index

    @classmethod
    def from_embeddings(
        cls,
        embeddings: Any,
        index_factory: str = "Flat",
        ids: Sequence[Any] | None = None,
        texts: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> SemanticIndex:
        """Index precomputed document embeddings (numpy or torch, shape ``(n, dim)``)."""
        index = cls(kwargs.pop("model", None), index_factory, **kwargs)
        index.add_embeddings(embeddings, ids=ids, texts=texts)
        if index.ntotal == 0:
            raise ValueError("no embeddings given: the corpus is empty")
        return index

    # ------------------------------------------------------------------ properties
    @property
    def ntotal(self) -> int:
        """Number of indexed documents."""
        return 0 if self.index is None else int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return self.index is not None and bool(self.index.is_trained)

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return (
            f"SemanticIndex(index_factory={self.index_factory!r}, ntotal={self.ntotal}, dim={self.dim}, "
            f"model={self.model_name!r}, rescore={self.rescore!r})"
        )

    # ------------------------------------------------------------------ internals
    def _workdir(self) -> Path:
        """Private folder for the side files of an index being built; removed with the object."""
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="ternary_hf_index_"))
            weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        return self._tmp

    def _owns(self, directory: Path) -> bool:
        return self._tmp is not None and Path(directory) == self._tmp

    def _init_dim(self, model_dim: int) -> None:
        if self.model_dim is not None:
            return
        if self.truncate_dim is not None and self.truncate_dim > model_dim:
            raise ValueError(
                f"truncate_dim={self.truncate_dim} is larger than the model's embedding dimension "
                f"{model_dim}; pick truncate_dim <= {model_dim}"
            )
        dim = self.truncate_dim or model_dim
        self.index = _make_index(dim, self.faiss_factory, self.binary, self.index_factory)
        self.model_dim, self.dim = model_dim, dim
        self._docs = _DocumentStore(self._workdir(), store_texts=self.store_texts)
        if self.rescore is not None:
            self._rescore_store = _RescoreStore(self.rescore, dim, self._workdir())

    def _check_dim(self, emb: np.ndarray, role: str, encoder: Any = None) -> None:
        if self.model_dim is not None and emb.shape[1] != self.model_dim:
            who = f" ({_model_name(encoder) or type(encoder).__name__})" if encoder is not None else ""
            raise ValueError(
                f"dimension mismatch: the {role} embeddings{who} have {emb.shape[1]} dimensions but this "
                f"index was built from {self.model_dim}-dimensional embeddings of {self.model_name!r}; "
                f"use a model with {self.model_dim}-dimensional output (for asymmetric search the query "
                "model must share the document model's embedding space)"
            )

    def _prepare(self, emb: np.ndarray) -> np.ndarray:
        return normalize_embeddings(emb, self.truncate_dim, self.normalize)

    def _writable_stores(self) -> None:
        """Copy side files out of a loaded folder before the first write (the folder stays as saved)."""
        work = self._workdir()
        for store in (self._docs, self._rescore_store):
            if store is not None and not self._owns(store.directory):
                store.relocate(work)

    def _append(self, vecs: np.ndarray, ids: list[Any], texts: list[str | None]) -> None:
        self._writable_stores()
        if self.binary:
            self.index.add(binarize(vecs))
        else:
            self.index.add(vecs)
        if self._rescore_store is not None:
            self._rescore_store.append(vecs)
        assert self._docs is not None
        self._docs.append(ids, texts)

    def _train(self, vecs: np.ndarray) -> None:
        need = _min_training_vectors(self.faiss_factory)
        suggest = max(1, int(math.sqrt(len(vecs))))
        if len(vecs) < need:
            raise ValueError(
                f"index {self.index_factory!r} needs at least {need} training vectors but only {len(vecs)} "
                f"were available; use fewer IVF lists (about sqrt(N), e.g. 'IVF{suggest},...'), fewer PQ "
                "bits, an untrained index such as 'Flat' or 'HNSW32' for a small corpus, "
                "or pass train_documents= with a larger sample"
            )
        _quiet_small_training(self.index, len(vecs), self.index_factory)
        try:
            self.index.train(binarize(vecs) if self.binary else vecs)
        except RuntimeError as exc:
            raise ValueError(
                f"training index {self.index_factory!r} on {len(vecs)} vectors failed (FAISS: "
                f"{_faiss_reason(exc)}); give more training vectors (train_documents= or train_size=) "
                "or choose a smaller index"
            ) from None

    def _flush_pending(self) -> None:
        """Train on everything buffered so far, then add the buffered documents."""
        if not self._pending:
            return
        pending, self._pending, self._pending_count = self._pending, [], 0
        if not self.is_trained:
            self._train(np.concatenate([p[0] for p in pending]))
        for vecs, ids, texts in pending:
            self._append(vecs, ids, texts)

    def _add_prepared(self, vecs: np.ndarray, ids: list[Any], texts: list[str | None]) -> None:
        if self.is_trained and not self._pending:
            self._append(vecs, ids, texts)
            return
        self._pending.append((vecs, ids, texts))
        self._pending_count += len(vecs)
        if self._pending_count >= self.train_size:
            self._flush_pending()

    def _train_from_documents(self, train_documents: Iterable[str], batch_size: int) -> None:
        if isinstance(train_documents, str):
            raise TypeError("train_documents must be an iterable of strings, not a single string")
        parts: list[np.ndarray] = []
        for chunk in _chunks(iter(train_documents), 4096):
            emb = _encode(self.model, [str(t) for t in chunk], batch_size, "document")
            self._init_dim(emb.shape[1])
            self._check_dim(emb, "training", self.model)
            parts.append(self._prepare(emb))
        if not parts:
            raise ValueError("train_documents is empty; pass a sample of documents or leave it None")
        self._train(np.concatenate(parts))

    # ------------------------------------------------------------------ adding
    def add(
        self,
        documents: Iterable[str] | Iterable[tuple[Any, str]],
        ids: Iterable[Any] | None = None,
        *,
        batch_size: int = 32,
        chunk_size: int = 1024,
        train_documents: Iterable[str] | None = None,
        show_progress_bar: bool | None = None,
    ) -> int:
        """Encode and add documents, ``chunk_size`` at a time (encoded in batches of ``batch_size``).

        ``documents`` is read once and may be a generator; items are strings or ``(id, text)`` pairs.
        Only one chunk of float embeddings is in memory at a time (plus, for an untrained IVF / PQ /
        SQ index, the first ``train_size`` vectors until it is trained). Returns the number added.
        """
        if self.model is None:
            raise ValueError("this index has no document model; pass model= or use add_embeddings()")
        if isinstance(documents, str):
            raise TypeError(
                "documents must be an iterable of strings, not a single string; wrap it in a list"
            )
        if chunk_size < 1 or batch_size < 1:
            raise ValueError("batch_size and chunk_size must be >= 1")
        if train_documents is not None and not self.is_trained:
            self._train_from_documents(train_documents, batch_size)
        total = len(documents) if hasattr(documents, "__len__") else None  # type: ignore[arg-type]
        if show_progress_bar is None:
            show_progress_bar = total is None or total > 10 * chunk_size
        doc_iter = iter(documents)
        id_iter = iter(ids) if ids is not None else None
        start = self.ntotal + self._pending_count
        added = 0
        bar = None
        if show_progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="Indexing", unit="doc")
        try:
            for chunk in _chunks(doc_iter, chunk_size):
                chunk_ids, texts = self._split_chunk(chunk, id_iter, start + added)
                emb = _encode(self.model, texts, batch_size, "document")
                self._add_embeddings_checked(emb, chunk_ids, texts)
                added += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if id_iter is not None and next(id_iter, _END) is not _END:
                raise ValueError(
                    f"more ids than documents: {added} documents but ids has more; pass one id per document"
                )
            self._flush_pending()
        finally:
            if bar is not None:
                bar.close()
        return added

    @staticmethod
    def _split_chunk(
        chunk: list[Any], id_iter: Iterator[Any] | None, start: int
    ) -> tuple[list[Any], list[str]]:
        texts: list[str] = []
        chunk_ids: list[Any] = []
        for i, item in enumerate(chunk):
            if isinstance(item, tuple) and len(item) == 2:
                doc_id, text = item
            else:
                doc_id, text = start + i, item
            if not isinstance(text, str):
                raise TypeError(
                    f"document {start + i} is a {type(text).__name__}, not a string; "
                    "pass strings or (id, text) pairs"
                )
            if id_iter is not None:
                doc_id = next(id_iter, _END)
                if doc_id is _END:
                    raise ValueError(f"fewer ids than documents: ids ran out at document {start + i}; "
                                     "pass one id per document")
            if hasattr(doc_id, "item"):
                doc_id = doc_id.item()
            chunk_ids.append(doc_id)
            texts.append(text)
        return chunk_ids, texts

    def _add_embeddings_checked(self, emb: np.ndarray, ids: list[Any], texts: list[str | None]) -> None:
        self._init_dim(emb.shape[1])
        self._check_dim(emb, "document", self.model)
        self._add_prepared(self._prepare(emb), ids, texts)

    def add_embeddings(
        self, embeddings: Any, ids: Sequence[Any] | None = None, texts: Sequence[str] | None = None
    ) -> int:
        """Add precomputed document embeddings (numpy or torch ``(n, dim)``); returns the number added.

        For an untrained index, all of them are used for training unless ``train_size`` is smaller.
        """
        emb = _as_float32_matrix(embeddings, "document embeddings")
        n = len(emb)
        start = self.ntotal + self._pending_count
        ids_list = list(range(start, start + n)) if ids is None else [i.item() if hasattr(i, "item") else i
                                                                     for i in ids]
        texts_list: list[str | None] = [None] * n if texts is None else list(texts)
        if len(ids_list) != n or len(texts_list) != n:
            raise ValueError(
                f"got {n} embeddings, {len(ids_list)} ids and {len(texts_list)} texts; lengths must match"
            )
        if n:
            self._add_embeddings_checked(emb, ids_list, texts_list)
        self._flush_pending()
        return n

    # ------------------------------------------------------------------ searching
    def _ready(self) -> None:
        if self.index is None:
            raise ValueError("the index is empty: nothing was added yet; call build()/add() first")
        if not self.index.is_trained:
            raise ValueError(
                f"index {self.index_factory!r} is not trained; add documents (training happens on the "
                "first train_size vectors) or pass train_documents= to add()"
            )
        if self.index.ntotal == 0:
            raise ValueError("the index is empty: nothing was added yet; call build()/add() first")

    def _apply_search_params(self, params: dict[str, Any], k_candidates: int) -> None:
        import faiss

        params = dict(params)
        if "efSearch" in params:
            params["efSearch"] = max(int(params["efSearch"]), k_candidates)
        for name, value in params.items():
            if self.binary:
                if name == "efSearch" and hasattr(self.index, "hnsw"):
                    self.index.hnsw.efSearch = int(value)
                elif name == "nprobe" and hasattr(self.index, "nprobe"):
                    self.index.nprobe = int(value)
                else:
                    raise ValueError(
                        f"search parameter {name!r} does not apply to binary index {self.index_factory!r}"
                    )
            else:
                try:
                    faiss.ParameterSpace().set_index_parameter(self.index, name, float(value))
                except RuntimeError:
                    raise ValueError(
                        f"search parameter {name!r} does not apply to index {self.index_factory!r}; "
                        "use nprobe for IVF indexes and efSearch for HNSW ones"
                    ) from None

    def search_arrays(
        self,
        query_embeddings: Any,
        k: int = 10,
        *,
        search_params: dict[str, Any] | None = None,
        rescore_multiplier: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search with precomputed query embeddings; returns ``(scores, positions)``, both ``(nq, k)``.

        Positions are FAISS rows (``-1`` where fewer than ``k`` results exist); use :meth:`search` to
        get ids and texts. Rescoring (when the index keeps rescoring vectors) is included.
        """
        self._ready()
        q_raw = _as_float32_matrix(query_embeddings, "query embeddings")
        self._check_dim(q_raw, "query")
        q = self._prepare(q_raw)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k_eff = min(k, self.ntotal)
        mult = rescore_multiplier or self.rescore_multiplier
        kc = min(self.ntotal, k_eff * mult) if self._rescore_store is not None else k_eff
        self._apply_search_params({**self.search_params, **(search_params or {})}, kc)
        if self.binary:
            dist, pos = self.index.search(binarize(q), kc)
            scores = np.cos(np.pi * dist.astype(np.float32) / self.dim).astype(np.float32)
        else:
            scores, pos = self.index.search(q, kc)
        if self._rescore_store is not None:
            scores, pos = self._rescore(q, pos, k_eff)
        scores, pos = scores[:, :k_eff], pos[:, :k_eff]
        if k_eff < k:
            pad = k - k_eff
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            pos = np.pad(pos, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.where(pos >= 0, scores, -np.inf).astype(np.float32)
        return scores, pos.astype(np.int64)

    def _rescore(self, q: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._rescore_store is not None
        valid = pos >= 0
        if not valid.any():  # e.g. every probed IVF list empty: nothing to rescore
            return np.full(pos.shape, -np.inf, dtype=np.float32)[:, :k], pos[:, :k]
        uniq, inv = np.unique(pos[valid], return_inverse=True)
        vecs = self._rescore_store.get(uniq)
        idx = np.zeros(pos.shape, dtype=np.int64)
        idx[valid] = inv
        scores = np.empty(pos.shape, dtype=np.float32)
        step = max(1, 2**22 // max(1, pos.shape[1] * q.shape[1]))
        for s in range(0, len(q), step):
            gathered = vecs[idx[s:s + step]]  # (b, kc, dim)
            scores[s:s + step] = np.einsum("bcd,bd->bc", gathered, q[s:s + step])
        scores[~valid] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(pos, order, axis=1)

    def search(
        self,
        queries: str | Sequence[str],
        k: int = 10,
        *,
        query_model: Any = None,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        search_params: dict[str, Any] | None = None,
        rescore_multiplier: int | None = None,
    ) -> list[list[Hit]]:
        """Encode ``queries`` and return the top ``k`` :class:`Hit` list for each (best first).

        The query encoder is ``query_model`` if given, else the index's ``query_model``, else its
        ``model``. A single string is treated as one query (the result is still a list of lists).
        Raises ``ValueError`` if the encoder's dimension differs from the one the index was built with.
        """
        if isinstance(queries, str):
            queries = [queries]
        queries = list(queries)
        encoder = query_model or self.query_model or self.model
        if encoder is None:
            raise ValueError(
                f"no model to encode the queries; pass query_model= (the index was built with "
                f"{self.model_name!r}) or SemanticIndex.load(path, model=...), or use search_arrays() "
                "with precomputed embeddings"
            )
        self._ready()
        if not queries:
            return []
        parts = []
        it: Iterable[int] = range(0, len(queries), max(batch_size, 1) * 8)
        if show_progress_bar:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="Encoding queries")
        for s in it:
            emb = _encode(encoder, queries[s:s + batch_size * 8], batch_size, "query")
            self._check_dim(emb, "query", encoder)
            parts.append(emb)
        scores, pos = self.search_arrays(
            np.concatenate(parts), k, search_params=search_params, rescore_multiplier=rescore_multiplier
        )
        return self._to_hits(scores, pos)

    def search_embeddings(self, query_embeddings: Any, k: int = 10, **kwargs: Any) -> list[list[Hit]]:
        """Like :meth:`search` but with precomputed query embeddings (numpy or torch)."""
        scores, pos = self.search_arrays(query_embeddings, k, **kwargs)
        return self._to_hits(scores, pos)

    def _to_hits(self, scores: np.ndarray, pos: np.ndarray) -> list[list[Hit]]:
        assert self._docs is not None
        records = self._docs.get(pos[pos >= 0].tolist())
        out = []
        for srow, prow in zip(scores, pos, strict=True):
            hits = []
            for s, p in zip(srow.tolist(), prow.tolist(), strict=True):
                if p < 0:
                    continue
                doc_id, text = records[p]
                hits.append(Hit(id=doc_id, score=float(s), text=text, position=int(p)))
            out.append(hits)
        return out

    def get_documents(self, positions: Iterable[int]) -> list[tuple[Any, str | None]]:
        """``(id, text)`` of the given FAISS rows."""
        self._ready()
        assert self._docs is not None
        positions = [int(p) for p in positions]
        for p in positions:
            if not 0 <= p < self.ntotal:
                raise IndexError(f"position {p} out of range for an index of {self.ntotal} documents")
        records = self._docs.get(positions)
        return [records[p] for p in positions]

    def nbytes(self) -> dict[str, int]:
        """Bytes used by the serialised FAISS index, the rescoring vectors and the document sidecar."""
        import faiss

        if self.index is None:
            return {"index": 0, "rescore": 0, "documents": 0}
        ser = faiss.serialize_index_binary(self.index) if self.binary else faiss.serialize_index(self.index)
        return {
            "index": int(ser.size),
            "rescore": self._rescore_store.nbytes() if self._rescore_store is not None else 0,
            "documents": self._docs.nbytes() if self._docs is not None else 0,
        }

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict[str, Any]:
        import faiss

        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "query_model_name": self.query_model_name,
            "model_quantization": self.model_quantization,
            "query_model_quantization": self.query_model_quantization,
            "model_dim": self.model_dim,
            "dim": self.dim,
            "truncate_dim": self.truncate_dim,
            "normalize": self.normalize,
            "metric": "cosine" if self.normalize else "dot",
            "index_factory": self.index_factory,
            "faiss_factory": self.faiss_factory,
            "binary": self.binary,
            "rescore": self.rescore,
            "rescore_multiplier": self.rescore_multiplier,
            "search_params": self.search_params,
            "train_size": self.train_size,
            "ntotal": self.ntotal,
            "store_texts": self.store_texts,
            "faiss_version": faiss.__version__,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index folder (see the module docstring for the layout); returns its path."""
        import faiss

        if self.index is None or self.ntotal == 0:
            raise ValueError("nothing to save: the index is empty; add documents first")
        self._flush_pending()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        if self.binary:
            faiss.write_index_binary(self.index, str(out / INDEX_FILE))
        else:
            faiss.write_index(self.index, str(out / INDEX_FILE))
        for store in (self._docs, self._rescore_store):
            if store is None:
                continue
            names = [DOCUMENTS_FILE] if isinstance(store, _DocumentStore) else store.filenames
            for name in names:
                src, dst = Path(store.directory) / name, out / name
                if src.exists() and not (dst.exists() and os.path.samefile(src, dst)):
                    shutil.copyfile(src, dst)
        tmp = out / (METADATA_FILE + ".tmp")
        tmp.write_text(json.dumps(self.metadata(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out / METADATA_FILE)
        return out

    @classmethod
    def load(
        cls, path: str | os.PathLike, model: Any = None, query_model: Any = None
    ) -> SemanticIndex:
        """Load a folder written by :meth:`save`.

        ``model`` (document encoder, for :meth:`add`) and ``query_model`` (for :meth:`search`) are
        optional; their embedding dimension is checked against the index's when they report one.
        The FAISS index is read into memory; documents and rescoring vectors stay on disk.
        """
        import faiss

        folder = Path(path)
        meta_path = folder / METADATA_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{folder} is not a saved SemanticIndex folder (no {METADATA_FILE}); build one with "
                "SemanticIndex.save() or `ternary-hf search build`"
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_NAME or meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{meta_path} is format {meta.get('format')!r} version {meta.get('format_version')}; this "
                f"ternary_hf reads {FORMAT_NAME!r} up to version {FORMAT_VERSION}; upgrade ternary-hf"
            )
        self = cls(
            None,
            meta["index_factory"],
            truncate_dim=meta["truncate_dim"],
            normalize=meta["normalize"],
            rescore=meta["rescore"],
            rescore_multiplier=meta["rescore_multiplier"],
            train_size=meta.get("train_size"),
            search_params=meta["search_params"],
            store_texts=meta["store_texts"],
            model_name=meta["model_name"],
        )
        self.query_model_name = meta.get("query_model_name")
        self.model_quantization = meta.get("model_quantization")
        self.query_model_quantization = meta.get("query_model_quantization")
        self.model_dim, self.dim = meta["model_dim"], meta["dim"]
        reader = faiss.read_index_binary if meta["binary"] else faiss.read_index
        self.index = reader(str(folder / INDEX_FILE))
        if self.index.ntotal != meta["ntotal"]:
            raise ValueError(
                f"{folder}: index.faiss holds {self.index.ntotal} vectors but metadata says "
                f"{meta['ntotal']}; "
                "the folder is inconsistent, rebuild it"
            )
        self._docs = _DocumentStore(folder, count=int(meta["ntotal"]), store_texts=self.store_texts)
        if self.rescore is not None:
            self._rescore_store = _RescoreStore(self.rescore, self.dim, folder, count=int(meta["ntotal"]))
        for m, role in ((model, "document"), (query_model, "query")):
            d = _model_dim(m) if m is not None else None
            if d is not None and d != self.model_dim:
                raise ValueError(
                    f"dimension mismatch: the {role} model {_model_name(m)!r} produces {d}-dimensional "
                    f"embeddings but the index at {folder} was built from {self.model_dim}-dimensional "
                    f"embeddings of {self.model_name!r}; load it with a matching model"
                )
        self.model, self.query_model = model, query_model
        if query_model is not None:
            self.query_model_name = _model_name(query_model) or self.query_model_name
            self.query_model_quantization = _model_quantization(query_model)
        return self


_END = object()
