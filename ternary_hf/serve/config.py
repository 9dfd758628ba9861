"""Settings and limits of one server process.

Every limit exists so that bad input or overload gets a clear answer instead of a crash or an
unbounded queue: ``max_inputs`` and ``max_request_bytes`` bound one request, ``max_queue`` bounds the
texts admitted but not yet answered (beyond it the server answers 503 with ``Retry-After`` rather than
queueing work nobody will wait for), ``max_batch_tokens`` / ``max_batch_size`` bound one model call.
The defaults make a lone request of up to ``max_batch_size`` texts run as exactly the batch that
``SentenceTransformer.encode(texts, batch_size=32)`` runs, so its embeddings are identical to it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import InvalidInputError


class ServeConfigError(InvalidInputError):
    """A server setting is out of range; the message names the flag to change."""


@dataclass
class ServeConfig:
    """What ``ternary-hf serve`` was started with (CLI flags map one to one onto these fields)."""

    model: str
    index: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    served_model_name: str | None = None
    #: Padded tokens (texts x longest text) in one model call.
    max_batch_tokens: int = 8192
    #: Texts in one model call; 32 matches ``encode``'s default batch size.
    max_batch_size: int = 32
    #: How long the first queued text waits for others to share its batch.
    max_wait_ms: float = 5.0
    #: Texts admitted (queued or running) at once; more is refused with 503 + Retry-After.
    max_queue: int = 8192
    #: Texts in one request (OpenAI's own limit is 2048).
    max_inputs: int = 2048
    #: Characters in one text; longer texts are refused, or cut there first when truncating.
    max_input_chars: int = 50_000
    #: Request body bytes.
    max_request_bytes: int = 16 * 1024 * 1024
    #: Largest ``k`` for ``/search``.
    max_k: int = 1000
    #: Truncate over-long texts to the model's max_seq_length instead of refusing them (the TEI
    #: request field ``truncate`` overrides this per request).
    auto_truncate: bool = False
    #: torch intra-op threads for the model (None: torch's default, one per core).
    threads: int | None = None
    #: Threads that tokenize incoming requests (off the event loop; they take turns on the tokenizer).
    tokenizer_workers: int = 1
    #: Texts of varied length run once before /health reports ready.
    warmup: bool = True
    #: Seconds SIGTERM waits for in-flight requests before closing connections.
    graceful_timeout: float = 30.0
    device: str = "cpu"
    log_level: str = "info"

    def __post_init__(self) -> None:
        positive = (
            "max_batch_tokens", "max_batch_size", "max_queue", "max_inputs", "max_input_chars",
            "max_request_bytes", "max_k", "tokenizer_workers",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ServeConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.max_wait_ms < 0:
            raise ServeConfigError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")
        if self.threads is not None and self.threads < 1:
            raise ServeConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.max_queue < self.max_inputs:
            raise ServeConfigError(
                f"--max-queue ({self.max_queue}) is smaller than --max-inputs ({self.max_inputs}): a request "
                "with the allowed number of inputs could never be admitted; raise --max-queue or lower --max-inputs"
            )
        if not 0 <= self.port < 65536:
            raise ServeConfigError(f"--port must be in 0..65535, got {self.port}")
        if self.graceful_timeout < 0:
            raise ServeConfigError(f"--graceful-timeout must be >= 0, got {self.graceful_timeout}")

    @property
    def model_name(self) -> str:
        """The name the APIs report (``model`` in OpenAI responses, ``model_id`` in ``/info``)."""
        if self.served_model_name:
            return self.served_model_name
        path = Path(self.model)
        return path.name if path.exists() and path.name else self.model

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
