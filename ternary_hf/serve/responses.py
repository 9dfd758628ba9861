"""Response bodies: embeddings after truncation / normalisation, serialised the way each API expects.

Why orjson: a float embedding response is mostly numbers, and the standard library spends most of a
request's event-loop time turning float32 arrays into decimal text; orjson writes numpy arrays
directly, with the shortest decimal that reads back as the same float32.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from .schemas import ApiError

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


class JSONBytes(Response):
    """A JSON response whose body is already ``orjson``-encoded (numpy arrays allowed)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=_NUMPY)


def error_response(error: ApiError, flavour: str) -> Response:
    return JSONBytes(error.body(flavour), status_code=error.status, headers=error.headers)


def postprocess(emb: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Keep the first ``dimensions`` (Matryoshka), then L2-normalise each row when asked."""
    if dimensions is not None:
        emb = emb[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(emb, dtype=np.float32)


def openai_body(emb: np.ndarray, encoding_format: str, model: str, tokens: int) -> dict[str, Any]:
    """``POST /v1/embeddings`` response; base64 is little-endian float32, as OpenAI encodes it."""
    if encoding_format == "base64":
        rows: list[Any] = [base64.b64encode(r.astype("<f4").tobytes()).decode("ascii") for r in emb]
    else:
        rows = list(emb)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def search_body(queries: list[str], hits: list[list[Any]], model: str, tokens: int) -> dict[str, Any]:
    """``POST /search`` response: per query, hits best first with the stored document id and text."""
    return {
        "object": "list",
        "model": model,
        "results": [
            {"query": q, "hits": [{"id": h.id, "score": h.score, "text": h.text} for h in row]}
            for q, row in zip(queries, hits, strict=True)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
