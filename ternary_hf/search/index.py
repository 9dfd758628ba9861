"""``SemanticIndex``: a FAISS index over sentence embeddings that maps rows back to documents.

Why this exists: a ternary embedding model is only useful if its vectors go into a search index, and
the easy ways to get that wrong are silent: an L2 index over unnormalised vectors instead of cosine, a
PQ index trained on ten vectors, queries encoded by a model of another dimension, a result row number
that nobody can map back to a document. The class wraps ``faiss.index_factory`` (see :mod:`.factory`)
and

* L2-normalises float32 vectors (optionally truncated Matryoshka-style first) and builds every float
  index with inner product, so scores are cosine similarities (``normalize=False``: dot product);
* supports binary codes (sign bits, Hamming distance) with rescoring of the top ``k * rescore_multiplier``
  candidates against int8 / float16 / float32 vectors kept on disk (:mod:`.stores`);
* streams: documents are encoded and added chunk by chunk, so the corpus's float embeddings are never
  all in memory; IVF / PQ / SQ indexes train on the first ``train_size`` vectors or a given sample;
* maps FAISS rows back to the user's ids and texts, saves and loads one folder (:mod:`.persist`), and
  refuses a query model whose embedding dimension does not match (asymmetric search: documents
  indexed by the FP32 teacher, queries encoded by the ternary student).

Example::

    from sentence_transformers import SentenceTransformer
    from ternary_hf.search import SemanticIndex

    teacher = SentenceTransformer("all-MiniLM-L6-v2")
    index = SemanticIndex.build(teacher, ["first doc", "second doc"], index_factory="HNSW32")
    hits = index.search(["which doc?"], k=1)[0]
    print(hits[0].id, hits[0].score, hits[0].text)
    index.save("my-index")

    student = SentenceTransformer("./ternary-minilm")  # after `import ternary_hf`
    index = SemanticIndex.load("my-index", query_model=student)

    index = SemanticIndex.from_embeddings(doc_embeddings, "binary")  # int8 rescoring by default
    scores, positions = index.search_arrays(query_embeddings, k=10)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from .encoding import chunks, encode, exhausted, model_dim, model_quantization, split_documents
from .encoding import model_name as _name
from .factory import (
    ALLOWED_INDEX_FORMS,
    default_search_params,
    default_train_size,
    make_index,
    resolve_factory,
    train_index,
)
from .persist import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    METADATA_FILE,
    index_metadata,
    read_faiss_index,
    read_metadata,
    staged_index_folder,
    write_index_files,
)
from .querying import SearchMixin
from .stores import DOCUMENTS_FILE, RESCORE_DTYPES, DocumentStore, RescoreStore
from .vectors import Hit, as_float32_matrix, binarize, normalize_embeddings, recall_at_k

__all__ = [
    "ALLOWED_INDEX_FORMS",
    "DOCUMENTS_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "METADATA_FILE",
    "Hit",
    "SemanticIndex",
    "binarize",
    "normalize_embeddings",
    "recall_at_k",
]


class SemanticIndex(SearchMixin):
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
        work_dir: folder for the document and rescoring files while the index is built (default: a
            temporary folder removed with the object). ``ternary-hf search build`` passes the staging
            folder of its output, so nothing is written elsewhere.
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
        work_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._check_settings(truncate_dim, rescore_multiplier, train_size)
        self.index_factory = index_factory
        self.faiss_factory, self.binary = resolve_factory(index_factory)
        if rescore == "auto":
            rescore = "int8" if self.binary else None
        if rescore is not None and rescore not in RESCORE_DTYPES:
            raise InvalidInputError(
                f"rescore must be one of {sorted(RESCORE_DTYPES)}, 'auto' or None, got {rescore!r}"
            )
        self.model, self.query_model = model, query_model
        self.truncate_dim, self.normalize = truncate_dim, normalize
        self.rescore, self.rescore_multiplier = rescore, rescore_multiplier
        self.train_size = train_size or default_train_size(self.faiss_factory)
        self.search_params = {**default_search_params(self.faiss_factory), **(search_params or {})}
        self.store_texts = store_texts
        self.model_name = model_name or (_name(model) if model is not None else None)
        self.query_model_name = _name(query_model) if query_model is not None else None
        self.model_quantization = model_quantization(model) if model is not None else None
        self.query_model_quantization = model_quantization(query_model) if query_model is not None else None
        self.model_dim: int | None = None
        self.dim: int | None = None
        self.index: Any = None
        self._tmp: Path | None = Path(work_dir) if work_dir is not None else None
        self._docs: DocumentStore | None = None
        self._rescore_store: RescoreStore | None = None
        self._pending: list[tuple[np.ndarray, list[Any], list[str | None]]] = []
        self._pending_count = 0
        dim = model_dim(model) if model is not None else None
        qdim = model_dim(query_model) if query_model is not None else None
        if dim is not None and qdim is not None and dim != qdim:
            raise InvalidInputError(
                f"dimension mismatch: the query model {self.query_model_name!r} produces {qdim}-dimensional "
                f"embeddings but the document model {self.model_name!r} produces {dim}; asymmetric search "
                "needs a query model that shares the document model's embedding space"
            )
        if dim is not None:
            self._init_dim(dim)  # validates the index string before any encoding

    @staticmethod
    def _check_settings(truncate_dim: Any, rescore_multiplier: Any, train_size: Any) -> None:
        if truncate_dim is not None and (not isinstance(truncate_dim, int) or truncate_dim <= 0):
            raise InvalidInputError(f"truncate_dim must be a positive int or None, got {truncate_dim!r}")
        if not isinstance(rescore_multiplier, int) or rescore_multiplier < 1:
            raise InvalidInputError(f"rescore_multiplier must be an int >= 1, got {rescore_multiplier!r}")
        if train_size is not None and train_size < 1:
            raise InvalidInputError(f"train_size must be >= 1, got {train_size}")

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
            raise InvalidInputError("the corpus is empty: no documents to index; check the input file / iterable")
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
            raise InvalidInputError("no embeddings given: the corpus is empty")
        return index

    # ------------------------------------------------------------------ properties
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

    def stores(self) -> list[DocumentStore | RescoreStore]:
        """The on-disk side stores of this index (documents, and rescoring vectors when kept)."""
        return [s for s in (self._docs, self._rescore_store) if s is not None]

    # ------------------------------------------------------------------ internals
    def _workdir(self) -> Path:
        """Folder for the side files of an index being built (a temporary one is removed with the object)."""
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="ternary_hf_index_"))
            weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        return self._tmp

    def _init_dim(self, dim_of_model: int) -> None:
        if self.model_dim is not None:
            return
        if self.truncate_dim is not None and self.truncate_dim > dim_of_model:
            raise InvalidInputError(
                f"truncate_dim={self.truncate_dim} is larger than the model's embedding dimension "
                f"{dim_of_model}; pick truncate_dim <= {dim_of_model}"
            )
        dim = self.truncate_dim or dim_of_model
        self.index = make_index(dim, self.faiss_factory, self.binary, self.index_factory)
        self.model_dim, self.dim = dim_of_model, dim
        self._docs = DocumentStore(self._workdir(), store_texts=self.store_texts)
        if self.rescore is not None:
            self._rescore_store = RescoreStore(self.rescore, dim, self._workdir())

    def _append(self, vecs: np.ndarray, ids: list[Any], texts: list[str | None]) -> None:
        work = self._workdir()
        for store in self.stores():  # a loaded index copies its side files before the first write
            if Path(store.directory) != work:
                store.relocate(work)
        self.index.add(binarize(vecs) if self.binary else vecs)
        if self._rescore_store is not None:
            self._rescore_store.append(vecs)
        assert self._docs is not None
        self._docs.append(ids, texts)

    def _train(self, vecs: np.ndarray) -> None:
        train_index(self.index, vecs, self.binary, self.faiss_factory, self.index_factory)

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
        for chunk in chunks(iter(train_documents), 4096):
            emb = encode(self.model, [str(t) for t in chunk], batch_size, "document")
            self._init_dim(emb.shape[1])
            self._check_dim(emb, "training", self.model)
            parts.append(self._prepare(emb))
        if not parts:
            raise InvalidInputError("train_documents is empty; pass a sample of documents or leave it None")
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
            raise InvalidInputError("this index has no document model; pass model= or use add_embeddings()")
        if isinstance(documents, str):
            raise TypeError("documents must be an iterable of strings, not a single string; wrap it in a list")
        if chunk_size < 1 or batch_size < 1:
            raise InvalidInputError("batch_size and chunk_size must be >= 1")
        if train_documents is not None and not self.is_trained:
            self._train_from_documents(train_documents, batch_size)
        total = len(documents) if hasattr(documents, "__len__") else None  # type: ignore[arg-type]
        if show_progress_bar is None:
            show_progress_bar = total is None or total > 10 * chunk_size
        id_iter = iter(ids) if ids is not None else None
        start = self.ntotal + self._pending_count
        added = 0
        with tqdm(total=total, desc="Indexing", unit="doc", disable=not show_progress_bar) as bar:
            for chunk in chunks(iter(documents), chunk_size):
                chunk_ids, texts = split_documents(chunk, id_iter, start + added)
                emb = encode(self.model, texts, batch_size, "document")
                self._add_embeddings_checked(emb, chunk_ids, texts)
                added += len(chunk)
                bar.update(len(chunk))
            if id_iter is not None and not exhausted(id_iter):
                raise InvalidInputError(
                    f"more ids than documents: {added} documents but ids has more; pass one id per document"
                )
            self._flush_pending()
        return added

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
        emb = as_float32_matrix(embeddings, "document embeddings")
        n = len(emb)
        start = self.ntotal + self._pending_count
        ids_list = list(range(start, start + n)) if ids is None else [i.item() if hasattr(i, "item") else i
                                                                     for i in ids]
        texts_list: list[str | None] = [None] * n if texts is None else list(texts)
        if len(ids_list) != n or len(texts_list) != n:
            raise InvalidInputError(
                f"got {n} embeddings, {len(ids_list)} ids and {len(texts_list)} texts; lengths must match"
            )
        if n:
            self._add_embeddings_checked(emb, ids_list, texts_list)
        self._flush_pending()
        return n

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict[str, Any]:
        """What ``metadata.json`` records (see :mod:`ternary_hf.search.persist` for the fields)."""
        return index_metadata(self)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the index folder whole (built beside ``path``, then swapped in); returns its path.

        An existing index folder at ``path`` is replaced; any other non-empty folder is refused
        (:class:`~ternary_hf.errors.OutputExistsError`) unless ``overwrite`` is true.
        """
        if self.index is None or self.ntotal == 0:
            raise InvalidInputError("nothing to save: the index is empty; add documents first")
        self._flush_pending()
        with staged_index_folder(path, overwrite=overwrite) as staging:
            write_index_files(self, staging)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Any = None, query_model: Any = None) -> SemanticIndex:
        """Load a folder written by :meth:`save`.

        ``model`` (document encoder, for :meth:`add`) and ``query_model`` (for :meth:`search`) are
        optional; their embedding dimension is checked against the index's when they report one.
        The FAISS index is read into memory; documents and rescoring vectors stay on disk. A damaged
        file raises :class:`~ternary_hf.errors.InvalidInputError` naming it.
        """
        folder = Path(path)
        meta = read_metadata(folder)
        try:
            self = cls(None, meta["index_factory"], truncate_dim=meta["truncate_dim"], normalize=meta["normalize"],
                       rescore=meta["rescore"], rescore_multiplier=meta["rescore_multiplier"],
                       train_size=meta.get("train_size"), search_params=meta["search_params"],
                       store_texts=meta["store_texts"], model_name=meta["model_name"])
            self.model_dim, self.dim, ntotal = int(meta["model_dim"]), int(meta["dim"]), int(meta["ntotal"])
        except (InvalidInputError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{folder / METADATA_FILE} holds an invalid setting ({exc}); rebuild the "
                                    "index") from None
        self.query_model_name = meta.get("query_model_name")
        self.model_quantization = meta.get("model_quantization")
        self.query_model_quantization = meta.get("query_model_quantization")
        self.index = read_faiss_index(folder, bool(meta["binary"]), ntotal)
        self._docs = DocumentStore(folder, count=ntotal, store_texts=self.store_texts)
        if self.rescore is not None:
            self._rescore_store = RescoreStore(self.rescore, self.dim, folder, count=ntotal)
            self._rescore_store.check()
        for m, role in ((model, "document"), (query_model, "query")):
            d = model_dim(m) if m is not None else None
            if d is not None and d != self.model_dim:
                raise InvalidInputError(
                    f"dimension mismatch: the {role} model {_name(m)!r} produces {d}-dimensional "
                    f"embeddings but the index at {folder} was built from {self.model_dim}-dimensional "
                    f"embeddings of {self.model_name!r}; load it with a matching model"
                )
        self.model, self.query_model = model, query_model
        if query_model is not None:
            self.query_model_name = _name(query_model) or self.query_model_name
            self.query_model_quantization = model_quantization(query_model)
        return self

