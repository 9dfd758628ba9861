"""``ternary-hf serve``: an OpenAI- and TEI-compatible embedding (and search) server for one model.

The web stack is the optional extra ``ternary-hf[serve]``; without it the command says how to install
it instead of failing on an import. See ``docs/serving.md`` for the API and the limits.
"""

from __future__ import annotations

import argparse

from ..errors import MissingDependencyError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve embeddings over HTTP (OpenAI /v1/embeddings, TEI /embed, /search)",
        description="Serve a ternary or float sentence-transformers model over HTTP: POST /v1/embeddings "
        "(OpenAI), POST /embed (text-embeddings-inference), POST /search (with --index), GET /health, "
        "GET /metrics (Prometheus). Concurrent requests are batched dynamically.",
    )
    parser.add_argument("model", help="sentence-transformers folder (ternary folders work) or a cached repo id")
    parser.add_argument("--index", default=None, help="folder written by `ternary-hf search build` (enables /search)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    parser.add_argument("--served-model-name", default=None, help="name reported as `model` (default: folder name)")
    limits = parser.add_argument_group("batching and limits")
    limits.add_argument("--max-batch-tokens", type=int, default=8192,
                        help="padded tokens (texts x longest) per model batch (default: 8192)")
    limits.add_argument("--max-batch-size", type=int, default=32, help="texts per model batch (default: 32)")
    limits.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long a batch waits for requests still being tokenized (default: 5)")
    limits.add_argument("--max-queue", type=int, default=8192,
                        help="texts queued or running at once; beyond it: 503 + Retry-After (default: 8192)")
    limits.add_argument("--max-inputs", type=int, default=2048, help="texts per request (default: 2048)")
    limits.add_argument("--max-input-chars", type=int, default=50_000,
                        help="characters per text; longer is refused, or cut when truncating (default: 50000)")
    limits.add_argument("--max-request-bytes", type=int, default=16 * 1024 * 1024,
                        help="request body bytes (default: 16 MiB)")
    limits.add_argument("--max-k", type=int, default=1000, help="largest k for /search (default: 1000)")
    limits.add_argument("--auto-truncate", action="store_true",
                        help="truncate texts over the model's max_seq_length instead of answering 422 "
                             "(the TEI request field `truncate` overrides it)")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--threads", type=int, default=None, help="torch threads for the model (default: all cores)")
    runtime.add_argument("--tokenizer-workers", type=int, default=1, help="threads tokenizing requests (default: 1)")
    runtime.add_argument("--no-warmup", action="store_true", help="report ready without a warm-up batch")
    runtime.add_argument("--graceful-timeout", type=float, default=30.0,
                         help="seconds SIGTERM waits for in-flight requests (default: 30)")
    runtime.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    runtime.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    runtime.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    try:
        import orjson  # noqa: F401
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"{exc.name} is not installed; `ternary-hf serve` needs the server extra: pip install 'ternary-hf[serve]'"
        ) from None
    from ..serve.config import ServeConfig
    from ..serve.runner import run

    config = ServeConfig(
        model=args.model, index=args.index, host=args.host, port=args.port,
        served_model_name=args.served_model_name, max_batch_tokens=args.max_batch_tokens,
        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_inputs=args.max_inputs, max_input_chars=args.max_input_chars,
        max_request_bytes=args.max_request_bytes, max_k=args.max_k, auto_truncate=args.auto_truncate,
        threads=args.threads, tokenizer_workers=args.tokenizer_workers, warmup=not args.no_warmup,
        graceful_timeout=args.graceful_timeout, device=args.device, log_level=args.log_level,
    )
    return run(config, access_log=args.access_log)
