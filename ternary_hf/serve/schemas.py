"""Request validation and the error bodies of each API.

Why one :class:`ApiError` carries both an OpenAI ``type`` and a TEI ``error_type``: the same failure
(say, too many inputs) must reach an OpenAI SDK as ``{"error": {"message", "type", "param", "code"}}``
and a text-embeddings-inference client as ``{"error": "...", "error_type": "Validation"}``; the route
that caught it picks the shape. Status codes: 400 malformed request, 404 no such thing (e.g. no
index), 413 request too big (too many inputs, body over the byte limit), 422 an input the model cannot
take (a text over the model's length without truncation, token-id input), 503 overloaded or not ready
(with ``Retry-After``), 500 the model failed. TEI itself answers 422 for too many inputs and 429 for
overload; ``docs/serving.md`` lists these differences.

Request models are strict (``"5"`` is not a number, ``1`` is not ``true``) and ignore unknown fields,
as SDKs add fields (``user``, ``extra_body``) that an embedding server has no use for.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

OPENAI = "openai"
TEI = "tei"


class ApiError(Exception):
    """A failure with a status code and a message meant for the client."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        openai_type: str | None = None,
        tei_type: str = "Validation",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.openai_type = openai_type or ("server_error" if status >= 500 else "invalid_request_error")
        self.tei_type = tei_type
        self.headers = headers or {}

    def body(self, flavour: str) -> dict[str, Any]:
        """The JSON error body in the API's own shape (``flavour`` is :data:`OPENAI` or :data:`TEI`)."""
        if flavour == TEI:
            return {"error": self.message, "error_type": self.tei_type}
        return {"error": {"message": self.message, "type": self.openai_type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def empty_input(param: str) -> ApiError:
    return ApiError(400, f"`{param}` cannot be empty: send at least one non-empty text", code="empty_input",
                    param=param, tei_type="Empty")


def too_many_inputs(count: int, limit: int, param: str) -> ApiError:
    return ApiError(
        413, f"`{param}` has {count} texts but this server takes at most {limit} per request "
        f"(--max-inputs); split the request", code="too_many_inputs", param=param,
    )


def overloaded(retry_after: int, queued: int) -> ApiError:
    return ApiError(
        503, f"the server is at capacity ({queued} texts queued or running, --max-queue); retry after "
        f"{retry_after} s or add replicas", code="overloaded", tei_type="Overloaded",
        headers={"Retry-After": str(retry_after)},
    )


def not_ready(state: str) -> ApiError:
    return ApiError(503, f"the model is not ready ({state}); poll GET /health until it answers 200",
                    code="not_ready", tei_type="Unhealthy", headers={"Retry-After": "1"})


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says where the JSON breaks."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"the request body is not valid JSON ({exc}); send a JSON object with "
                      "Content-Type: application/json", code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid(f"the request body must be a JSON object, got a JSON {type(data).__name__}",
                      code="invalid_json")
    return data


def texts_from(value: Any, param: str, max_inputs: int) -> list[str]:
    """``value`` (a string or a list of strings) as a list of texts, or the API error that fits."""
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        texts = value
    else:
        raise invalid(f"`{param}` must be a string or a list of strings, got {type(value).__name__}", param)
    if not texts:
        raise empty_input(param)
    if all(isinstance(t, int) and not isinstance(t, bool) for t in texts) or (
        isinstance(texts[0], list) and all(isinstance(t, int) for t in texts[0])
    ):
        raise ApiError(
            422, f"`{param}` holds token ids; this server takes text only, because token ids from another "
            "tokenizer (e.g. tiktoken) mean nothing to this model. Send strings (with LangChain's "
            "OpenAIEmbeddings, set check_embedding_ctx_length=False)", code="unsupported_input", param=param,
        )
    if len(texts) > max_inputs:
        raise too_many_inputs(len(texts), max_inputs, param)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise invalid(f"`{param}[{i}]` must be a string, got {type(text).__name__}", f"{param}[{i}]")
        if not text:
            raise empty_input(f"{param}[{i}]" if isinstance(value, list) else param)
    return texts


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class EmbeddingsRequest(_Strict):
    """OpenAI ``POST /v1/embeddings``."""

    input: Any
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class EmbedRequest(_Strict):
    """text-embeddings-inference ``POST /embed``."""

    inputs: Any
    normalize: bool = True
    truncate: bool | None = None
    truncation_direction: Literal["right", "Right", "left", "Left"] = "right"
    prompt_name: str | None = None
    dimensions: int | None = Field(default=None, ge=1)


class SearchRequest(_Strict):
    """``POST /search``: one query or a list of them, ``k`` hits each."""

    query: Any
    k: int = Field(default=10, ge=1)


def validate(model: type[_Strict], data: dict[str, Any]) -> Any:
    """``model.model_validate(data)`` with the first problem turned into a 400 naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        got = err.get("input")
        shown = "" if err["type"] == "missing" else f" (got {_short(got)})"
        raise invalid(f"`{param}`: {err['msg']}{shown}", param) from None


def check_dimensions(dimensions: int | None, model_dim: int) -> None:
    if dimensions is not None and not 1 <= dimensions <= model_dim:
        raise invalid(
            f"`dimensions` must be between 1 and {model_dim} (this model's embedding size), got {dimensions}",
            "dimensions",
        )


def _short(value: Any) -> str:
    text = repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        return text
    return text if len(text) <= 60 else text[:57] + "..."
