"""The ASGI app: routes, their error shapes, model loading in the background, draining on shutdown.

Why the model loads on a background thread instead of before the socket opens: orchestrators and load
balancers probe ``GET /health`` to decide when to send traffic, so the server answers it (503
``loading``) from the first second, and flips to 200 only after the model is loaded and has run a
warm-up batch. If loading fails the server says so on ``/health`` and in the log, and exits non-zero.

Each embedding request: parse and validate on the event loop, hold capacity (or 503), tokenize and count
tokens on the tokenizer thread, queue the texts for the model worker (:mod:`.batcher`), then wait for either the
embeddings or the client leaving, whichever comes first.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .batcher import Batcher
from .config import ServeConfig
from .encoder import Encoder
from .metrics import CONTENT_TYPE, ServeMetrics
from .responses import JSONBytes, error_response, openai_body, postprocess, search_body
from .schemas import (
    OPENAI,
    TEI,
    ApiError,
    EmbeddingsRequest,
    EmbedRequest,
    SearchRequest,
    check_dimensions,
    invalid,
    not_ready,
    parse_json,
    texts_from,
    validate,
)

logger = logging.getLogger("ternary_hf.serve")

#: Status recorded for a request whose client disconnected before the answer (nginx's convention).
CLIENT_CLOSED = 499


class ClientGone(Exception):
    """The client disconnected while its texts were queued or running."""


class ServerState:
    """Everything the routes share: settings, metrics, and (once loaded) the model, batcher and index."""

    def __init__(self, config: ServeConfig, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self.config = config
        self.metrics = ServeMetrics()
        self.status = "loading"
        self.error: str | None = None
        self.encoder: Encoder | None = None
        self.batcher: Batcher | None = None
        self.index: Any = None
        self.on_fatal = on_fatal
        self.tokenize_pool = ThreadPoolExecutor(config.tokenizer_workers, thread_name_prefix="ternary-hf-tokenize")
        self.search_pool = ThreadPoolExecutor(1, thread_name_prefix="ternary-hf-search")

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Load the model (and index), start the worker, warm up; runs on its own thread."""
        cfg = self.config
        try:
            start = time.perf_counter()
            encoder = Encoder.load(cfg.model, device=cfg.device, threads=cfg.threads)
            encoder.check_tokenize_once()
            index = None
            if cfg.index:
                from ternary_hf.search import SemanticIndex

                index = SemanticIndex.load(cfg.index, query_model=encoder.model)
            if cfg.warmup:
                encoder.warmup(cfg.max_batch_size)
                if index is not None:
                    index.search_embeddings(encoder.embed(["warm up"], None), k=1)
            batcher = Batcher(
                encoder.embed, encoder.dim, max_batch_tokens=cfg.max_batch_tokens,
                max_batch_size=cfg.max_batch_size, max_wait=cfg.max_wait_ms / 1000, max_queue=cfg.max_queue,
                metrics=self.metrics,
            )
            batcher.start()
            self.encoder, self.index, self.batcher = encoder, index, batcher
            self.status = "ready"
            self.metrics.ready.set(1)
            logger.info(
                "ready: %s (%s, dim %d, max_seq_length %d, tokenized %s)%s in %.1f s", cfg.model,
                encoder.quantization, encoder.dim, encoder.max_seq_length,
                "once, off the model thread" if encoder.tokenizes_once else "on the model thread",
                f" with index {cfg.index}" if index is not None else "", time.perf_counter() - start,
            )
        except Exception as exc:  # noqa: BLE001 - reported on /health and by the exit code
            self.status, self.error = "failed", str(exc)
            logger.error("could not start: %s", exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def shutdown(self) -> None:
        """Finish queued texts, then stop the worker and the helper threads."""
        if self.batcher is not None:
            self.batcher.stop(timeout=self.config.graceful_timeout)
        self.tokenize_pool.shutdown(wait=False, cancel_futures=True)
        self.search_pool.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> tuple[Encoder, Batcher]:
        if self.status != "ready" or self.encoder is None or self.batcher is None:
            raise not_ready(self.status if self.error is None else f"{self.status}: {self.error}")
        return self.encoder, self.batcher

    # ------------------------------------------------------------------ the embedding path
    async def embed(
        self, request: Request, texts: list[str], prompt: str | None, truncate: bool, param: str
    ) -> tuple[np.ndarray, int]:
        """Raw model embeddings of ``texts`` and their token count, or an :class:`ApiError`."""
        encoder, batcher = self.ready()
        with batcher.admitted(len(texts)) as ticket:
            texts = self._check_chars(texts, truncate, param)
            loop = asyncio.get_running_loop()
            payload, tokens = await loop.run_in_executor(self.tokenize_pool, encoder.tokenize, texts, prompt)
            limit = encoder.max_seq_length
            if not truncate:
                for i, n in enumerate(tokens):
                    if n > limit:
                        raise ApiError(
                            422, f"`{_param(param, i, len(texts))}` has {n} tokens but this model takes at most "
                            f"{limit}; shorten it, or ask for truncation (TEI: \"truncate\": true; any API: start "
                            "the server with --auto-truncate)", code="context_length_exceeded",
                            param=_param(param, i, len(texts)),
                        )
            tokens = [min(n, limit) for n in tokens]
            self.metrics.tokens.inc(sum(tokens))
            job = batcher.submit(ticket, texts, payload, tokens, prompt)
            gone = asyncio.ensure_future(_client_gone(request))
            try:
                done, _ = await asyncio.wait({job.future, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if job.future not in done:
                batcher.cancel(job)
                raise ClientGone
            return job.future.result(), sum(tokens)

    def _check_chars(self, texts: list[str], truncate: bool, param: str) -> list[str]:
        limit = self.config.max_input_chars
        if truncate:
            return [t[:limit] if len(t) > limit else t for t in texts]
        for i, t in enumerate(texts):
            if len(t) > limit:
                raise ApiError(
                    422, f"`{_param(param, i, len(texts))}` has {len(t)} characters; this server takes at most "
                    f"{limit} (--max-input-chars); shorten it or ask for truncation", code="context_length_exceeded",
                    param=_param(param, i, len(texts)),
                )
        return texts


def _param(param: str, i: int, n: int) -> str:
    return f"{param}[{i}]" if n > 1 or param.endswith("s") else param


async def _client_gone(request: Request) -> None:
    """Return once the client disconnects (the body was read already, so only that can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, refusing bodies over ``limit`` bytes with a 413 before reading them."""
    too_big = ApiError(413, f"the request body is larger than {limit} bytes (--max-request-bytes); split the request",
                       code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return parse_json(bytes(body))


Handler = Callable[[Request, ServerState], Awaitable[Response]]


def _route(path: str, flavour: str, handler: Handler, state: ServerState, methods: list[str]) -> Route:
    """A route whose errors come out in ``flavour``'s shape and that counts itself in the metrics."""
    metrics = state.metrics

    async def endpoint(request: Request) -> Response:
        start = time.perf_counter()
        try:
            response = await handler(request, state)
        except ApiError as err:
            response = error_response(err, flavour)
            metrics.errors.labels(path, err.code).inc()
        except ClientGone:
            response = Response(status_code=CLIENT_CLOSED)
            metrics.errors.labels(path, "client_disconnected").inc()
        except Exception:  # noqa: BLE001 - a bug or model failure answers 500, never a dropped connection
            logger.exception("%s failed", path)
            err = ApiError(500, "the server failed to process this request; see the server log",
                           code="internal_error", tei_type="Backend")
            response = error_response(err, flavour)
            metrics.errors.labels(path, err.code).inc()
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    return Route(path, endpoint, methods=methods)


# ---------------------------------------------------------------------- handlers
async def openai_embeddings(request: Request, state: ServerState) -> Response:
    req = validate(EmbeddingsRequest, await read_json(request, state.config.max_request_bytes))
    texts = texts_from(req.input, "input", state.config.max_inputs)
    encoder, _ = state.ready()
    check_dimensions(req.dimensions, encoder.dim)
    emb, tokens = await state.embed(request, texts, encoder.default_prompt, state.config.auto_truncate, "input")
    emb = postprocess(emb, req.dimensions, normalize=True)
    return JSONBytes(openai_body(emb, req.encoding_format, state.config.model_name, tokens))


async def tei_embed(request: Request, state: ServerState) -> Response:
    req = validate(EmbedRequest, await read_json(request, state.config.max_request_bytes))
    texts = texts_from(req.inputs, "inputs", state.config.max_inputs)
    if req.truncation_direction.lower() == "left":
        raise invalid("`truncation_direction` \"left\" is not supported; this server truncates the end of the "
                      "text, as sentence-transformers does", "truncation_direction")
    encoder, _ = state.ready()
    check_dimensions(req.dimensions, encoder.dim)
    try:
        prompt = encoder.resolve_prompt(req.prompt_name)
    except KeyError as exc:
        raise invalid(str(exc.args[0]), "prompt_name") from None
    truncate = state.config.auto_truncate if req.truncate is None else req.truncate
    emb, _ = await state.embed(request, texts, prompt, truncate, "inputs")
    return JSONBytes(list(postprocess(emb, req.dimensions, normalize=req.normalize)))


async def search(request: Request, state: ServerState) -> Response:
    req = validate(SearchRequest, await read_json(request, state.config.max_request_bytes))
    if not state.config.index:
        raise ApiError(404, "this server has no search index; start it with --index DIR, a folder written by "
                       "`ternary-hf search build MODEL CORPUS DIR`", code="no_index")
    queries = texts_from(req.query, "query", state.config.max_inputs)
    if req.k > state.config.max_k:
        raise invalid(f"`k` must be at most {state.config.max_k} (--max-k), got {req.k}", "k")
    encoder, _ = state.ready()
    prompt = encoder.prompts.get("query", encoder.default_prompt)
    emb, tokens = await state.embed(request, queries, prompt, True, "query")
    loop = asyncio.get_running_loop()
    hits = await loop.run_in_executor(state.search_pool, state.index.search_embeddings, emb, req.k)
    return JSONBytes(search_body(queries, hits, state.config.model_name, tokens))


async def health(request: Request, state: ServerState) -> Response:
    body: dict[str, Any] = {"status": "ok" if state.status == "ready" else state.status}
    if state.error:
        body["error"] = state.error
    return JSONBytes(body, status_code=200 if state.status == "ready" else 503,
                     headers={} if state.status == "ready" else {"Retry-After": "1"})


async def metrics(request: Request, state: ServerState) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


async def models(request: Request, state: ServerState) -> Response:
    return JSONBytes({"object": "list", "data": [
        {"id": state.config.model_name, "object": "model", "created": 0, "owned_by": "ternary-hf"}
    ]})


async def info(request: Request, state: ServerState) -> Response:
    cfg, enc = state.config, state.encoder
    from ternary_hf import __version__

    return JSONBytes({
        "model_id": cfg.model_name,
        "model_dtype": enc.quantization if enc else None,
        "model_type": {"embedding": {"dimension": enc.dim if enc else None}},
        "max_input_length": enc.max_seq_length if enc else None,
        "max_batch_tokens": cfg.max_batch_tokens,
        "max_batch_requests": cfg.max_batch_size,
        "max_client_batch_size": cfg.max_inputs,
        "max_concurrent_requests": cfg.max_queue,
        "auto_truncate": cfg.auto_truncate,
        "index": cfg.index,
        "status": state.status,
        "version": __version__,
    })


def create_app(config: ServeConfig, on_fatal: Callable[[BaseException], None] | None = None) -> Starlette:
    """The Starlette app for ``config``; the model starts loading when the app starts (lifespan)."""
    state = ServerState(config, on_fatal)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        threading.Thread(target=state.load, name="ternary-hf-load", daemon=True).start()
        yield
        if state.status == "ready":
            state.status = "draining"
        await asyncio.get_running_loop().run_in_executor(None, state.shutdown)

    routes = [
        _route("/v1/embeddings", OPENAI, openai_embeddings, state, ["POST"]),
        _route("/embeddings", OPENAI, openai_embeddings, state, ["POST"]),
        _route("/embed", TEI, tei_embed, state, ["POST"]),
        _route("/search", OPENAI, search, state, ["POST"]),
        _route("/health", TEI, health, state, ["GET"]),
        _route("/metrics", OPENAI, metrics, state, ["GET"]),
        _route("/v1/models", OPENAI, models, state, ["GET"]),
        _route("/info", TEI, info, state, ["GET"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        known = "POST /v1/embeddings, POST /embed, POST /search, GET /health, GET /metrics, GET /v1/models, GET /info"
        verb = "no route" if status == 404 else "method not allowed"
        err = ApiError(status, f"{verb}: {request.method} {request.url.path}; this server has {known}",
                       code="not_found" if status == 404 else "method_not_allowed")
        state.metrics.requests.labels("other", str(status)).inc()
        return error_response(err, OPENAI)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.state.serve = state
    return app
