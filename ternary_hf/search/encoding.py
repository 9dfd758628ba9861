"""What an index asks of its inputs: a model's name, quantization, dimension and embeddings; documents and ids.

Why: the index accepts a ``SentenceTransformer``, a bare transformers model or any object with
``encode(texts)``, and must record enough about it (a ternary model quantized on the fly keeps its FP32
folder's name) to refuse a query model of another dimension later. Everything here is best effort on
attributes, so a plain encoder object works too. Documents come as strings or ``(id, text)`` pairs,
from any iterable read once.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .vectors import as_float32_matrix

__all__ = ["chunks", "encode", "exhausted", "model_dim", "model_name", "model_quantization", "split_documents"]


def model_name(model: Any) -> str | None:
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


def model_quantization(model: Any) -> dict[str, Any] | None:
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


def model_dim(model: Any) -> int | None:
    """The embedding dimension the model reports, or None when it reports none."""
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


def encode(encoder: Any, texts: list[str], batch_size: int, role: str) -> np.ndarray:
    """Encode ``texts`` with a sentence-transformers-like object (anything with ``.encode``).

    ``encode_query`` / ``encode_document`` are preferred when the model has them (prompts of asymmetric
    models); only the keyword arguments the method accepts are passed.
    """
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
    return as_float32_matrix(fn(texts, **wanted), what=f"{role} embeddings")


def chunks(iterator: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Lists of up to ``size`` items from ``iterator``, read lazily (a generator corpus is read once)."""
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk


_END = object()


def split_documents(chunk: list[Any], id_iter: Iterator[Any] | None, start: int) -> tuple[list[Any], list[str]]:
    """``(ids, texts)`` of a chunk of documents (strings or ``(id, text)`` pairs), numbered from ``start``.

    ``id_iter`` (the caller's ``ids=``) overrides the ids and must not run out before the documents.
    """
    texts: list[str] = []
    chunk_ids: list[Any] = []
    for i, item in enumerate(chunk):
        if isinstance(item, tuple) and len(item) == 2:
            doc_id, text = item
        else:
            doc_id, text = start + i, item
        if not isinstance(text, str):
            raise TypeError(
                f"document {start + i} is a {type(text).__name__}, not a string; pass strings or (id, text) pairs"
            )
        if id_iter is not None:
            doc_id = next(id_iter, _END)
            if doc_id is _END:
                raise InvalidInputError(
                    f"fewer ids than documents: ids ran out at document {start + i}; pass one id per document"
                )
        if hasattr(doc_id, "item"):
            doc_id = doc_id.item()
        chunk_ids.append(doc_id)
        texts.append(text)
    return chunk_ids, texts


def exhausted(iterator: Iterator[Any]) -> bool:
    """True when ``iterator`` has no item left (one item is consumed otherwise)."""
    return next(iterator, _END) is _END
