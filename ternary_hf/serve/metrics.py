"""Prometheus metrics of one server process, in the text exposition format served at ``GET /metrics``.

Each server keeps its own ``CollectorRegistry`` (not the global default) so that two apps in one
process (tests, embedding the app elsewhere) never share or double-register counters. Route labels
are the fixed route paths, never the raw URL, so a scanner probing random paths cannot blow up the
number of time series.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)
TOKEN_BUCKETS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """The counters, histograms and gauges the routes and the batcher update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ternary_hf_requests", "HTTP requests answered, by route and status code", ["route", "status"], registry=r
        )
        self.errors = Counter(
            "ternary_hf_errors", "Requests answered with an error, by route and error code", ["route", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "ternary_hf_request_duration_seconds", "Time from request received to response ready, by route",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "ternary_hf_batch_size", "Texts per model batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "ternary_hf_batch_padded_tokens", "Padded tokens (texts x longest) per model batch",
            buckets=TOKEN_BUCKETS, registry=r,
        )
        self.batch_duration = Histogram(
            "ternary_hf_batch_duration_seconds", "Model time per batch (tokenize + forward)",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "ternary_hf_queue_depth", "Texts waiting for the model (not yet in a running batch)", registry=r
        )
        self.in_flight = Gauge(
            "ternary_hf_in_flight_texts", "Texts admitted and not yet answered (limit: --max-queue)", registry=r
        )
        self.texts = Counter("ternary_hf_embedded_texts", "Texts embedded by the model", registry=r)
        self.tokens = Counter("ternary_hf_prompt_tokens", "Tokens of admitted texts (usage)", registry=r)
        self.cancelled = Counter(
            "ternary_hf_cancelled_texts", "Texts dropped before reaching the model because their client left",
            registry=r,
        )
        self.ready = Gauge("ternary_hf_ready", "1 once the model is loaded and warmed up", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
