"""Searching a built index: queries in, scored hits (ids, texts, positions) out, with rescoring.

Why a module of its own: the search side reads what the build side wrote (the FAISS index, the document
and rescoring stores) and never changes it, so it is kept apart from :mod:`.index`'s construction,
streaming and training code. :class:`SearchMixin` is mixed into :class:`~ternary_hf.search.SemanticIndex`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from .encoding import encode
from .encoding import model_name as _name
from .factory import apply_search_params
from .stores import DocumentStore, RescoreStore
from .vectors import Hit, as_float32_matrix, binarize, import_faiss, normalize_embeddings

__all__ = ["SearchMixin"]


class SearchMixin:
    """The query methods of :class:`~ternary_hf.search.SemanticIndex` (see there for the attributes)."""

    index: Any
    binary: bool
    dim: int | None
    index_factory: str
    model: Any
    model_dim: int | None
    model_name: str | None
    normalize: bool
    query_model: Any
    rescore_multiplier: int
    search_params: dict[str, Any]
    truncate_dim: int | None
    _docs: DocumentStore | None
    _rescore_store: RescoreStore | None

    @property
    def ntotal(self) -> int:
        """Number of indexed documents."""
        return 0 if self.index is None else int(self.index.ntotal)

    def _check_dim(self, emb: np.ndarray, role: str, encoder: Any = None) -> None:
        if self.model_dim is not None and emb.shape[1] != self.model_dim:
            who = f" ({_name(encoder) or type(encoder).__name__})" if encoder is not None else ""
            raise InvalidInputError(
                f"dimension mismatch: the {role} embeddings{who} have {emb.shape[1]} dimensions but this "
                f"index was built from {self.model_dim}-dimensional embeddings of {self.model_name!r}; "
                f"use a model with {self.model_dim}-dimensional output (for asymmetric search the query "
                "model must share the document model's embedding space)"
            )

    def _prepare(self, emb: np.ndarray) -> np.ndarray:
        return normalize_embeddings(emb, self.truncate_dim, self.normalize)

    def _ready(self) -> None:
        empty = InvalidInputError("the index is empty: nothing was added yet; call build()/add() first")
        if self.index is None:
            raise empty
        if not self.index.is_trained:
            raise InvalidInputError(
                f"index {self.index_factory!r} is not trained; add documents (training happens on the "
                "first train_size vectors) or pass train_documents= to add()"
            )
        if self.index.ntotal == 0:
            raise empty

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
        q_raw = as_float32_matrix(query_embeddings, "query embeddings")
        self._check_dim(q_raw, "query")
        q = self._prepare(q_raw)
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        k_eff = min(k, self.ntotal)
        mult = rescore_multiplier or self.rescore_multiplier
        kc = min(self.ntotal, k_eff * mult) if self._rescore_store is not None else k_eff
        params = {**self.search_params, **(search_params or {})}
        apply_search_params(self.index, self.binary, params, kc, self.index_factory)
        if self.binary:
            dist, pos = self.index.search(binarize(q), kc)
            scores = np.cos(np.pi * dist.astype(np.float32) / self.dim).astype(np.float32)
        else:
            scores, pos = self.index.search(q, kc)
        if self._rescore_store is not None:
            scores, pos = self._rescore_store.rescore(q, pos, k_eff)
        scores, pos = scores[:, :k_eff], pos[:, :k_eff]
        if k_eff < k:
            pad = k - k_eff
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            pos = np.pad(pos, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.where(pos >= 0, scores, -np.inf).astype(np.float32)
        return scores, pos.astype(np.int64)

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
        queries = [queries] if isinstance(queries, str) else list(queries)
        encoder = query_model or self.query_model or self.model
        if encoder is None:
            raise InvalidInputError(
                f"no model to encode the queries; pass query_model= (the index was built with "
                f"{self.model_name!r}) or SemanticIndex.load(path, model=...), or use search_arrays() "
                "with precomputed embeddings"
            )
        self._ready()
        if not queries:
            return []
        parts = []
        step = max(batch_size, 1) * 8
        for s in tqdm(range(0, len(queries), step), desc="Encoding queries", disable=not show_progress_bar):
            emb = encode(encoder, queries[s:s + step], batch_size, "query")
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
        return [
            [Hit(id=records[p][0], score=float(s), text=records[p][1], position=int(p))
             for s, p in zip(srow.tolist(), prow.tolist(), strict=True) if p >= 0]
            for srow, prow in zip(scores, pos, strict=True)
        ]

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
        faiss = import_faiss()
        if self.index is None:
            return {"index": 0, "rescore": 0, "documents": 0}
        ser = faiss.serialize_index_binary(self.index) if self.binary else faiss.serialize_index(self.index)
        return {
            "index": int(ser.size),
            "rescore": self._rescore_store.nbytes() if self._rescore_store is not None else 0,
            "documents": self._docs.nbytes() if self._docs is not None else 0,
        }

