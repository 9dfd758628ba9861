"""Encode speed of embedding models, measured side by side (what ``ternary-hf bench`` and the demo print).

Why side by side: the machines this runs on are often shared, so absolute timings move by tens of
percent from one minute to the next. Every model here is timed in the same process, in interleaved
rounds over the same real sentences, and the best round of each is kept: ratios between models taken
this way are stable even when the absolute numbers are not. Before timing, each model encodes one
batch (CPU-kernel build, first-call allocations). Batch-1 latency is the median over single
sentences, also interleaved.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..errors import InvalidInputError
from ..utils.tables import format_table

__all__ = ["Encoder", "SpeedResult", "measure_encode_speed"]


class Encoder(Protocol):
    """Anything with ``encode(texts, batch_size=...)``: a ``SentenceTransformer``, an ``OnnxEncoder``."""

    def encode(self, texts: Sequence[str], batch_size: int = ..., **kwargs: Any) -> Any: ...


@dataclass
class SpeedResult:
    """Sentences/s (best round) and batch-1 latency (median, ms) per model, with the run's settings."""

    sentences_per_s: dict[str, float]
    batch1_ms: dict[str, float] = field(default_factory=dict)
    n_sentences: int = 0
    batch_size: int = 32
    rounds: int = 0
    threads: int = 0

    def ratio(self, model: str, reference: str) -> float | None:
        """Throughput of ``model`` over that of ``reference`` (None if either is missing)."""
        a, b = self.sentences_per_s.get(model), self.sentences_per_s.get(reference)
        return a / b if a and b else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self, reference: str | None = None) -> str:
        """A Markdown table: sentences/s, ratio to ``reference``, batch-1 latency."""
        ref = reference or next(iter(self.sentences_per_s))
        rows = []
        for name, rate in self.sentences_per_s.items():
            latency = self.batch1_ms.get(name)
            rows.append([name, f"{rate:.1f}", f"{self.ratio(name, ref):.2f}x",
                         f"{latency:.1f}" if latency is not None else "-"])
        header = ["model", f"sentences/s (batch {self.batch_size})", f"vs {ref}", "batch-1 latency ms"]
        return format_table(header, rows, style="markdown")


def measure_encode_speed(
    encoders: Mapping[str, Encoder],
    texts: Sequence[str],
    batch_size: int = 32,
    rounds: int = 3,
    latency_sentences: int = 0,
) -> SpeedResult:
    """Time ``encode`` of every encoder on ``texts`` in ``rounds`` interleaved rounds (best round kept).

    Args:
        encoders: name -> encoder, timed in this order within each round.
        texts: the sentences (the same for every encoder).
        batch_size: encoding batch size.
        rounds: interleaved rounds; the best of each encoder is reported.
        latency_sentences: if > 0, also the median time to encode one sentence alone, over this many
            sentences (interleaved too).

    Raises:
        InvalidInputError (a ``ValueError``): no encoder, no text, or a non-positive ``batch_size`` / ``rounds``.
    """
    import torch

    if not encoders:
        raise InvalidInputError("measure_encode_speed needs at least one encoder")
    if not texts:
        raise InvalidInputError("measure_encode_speed needs at least one text")
    if batch_size < 1 or rounds < 1 or latency_sentences < 0:
        raise InvalidInputError(f"batch_size ({batch_size}) and rounds ({rounds}) must be >= 1, latency_sentences >= 0")
    texts = list(texts)
    with torch.inference_mode():
        for enc in encoders.values():  # warm-up: kernel build, first-call allocations
            enc.encode(texts[:batch_size], batch_size=batch_size)
        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, enc in encoders.items():
                start = time.perf_counter()
                enc.encode(texts, batch_size=batch_size)
                rate = len(texts) / (time.perf_counter() - start)
                best[name] = max(best.get(name, 0.0), rate)
        latency: dict[str, list[float]] = {name: [] for name in encoders}
        for text in texts[:latency_sentences]:
            for name, enc in encoders.items():
                start = time.perf_counter()
                enc.encode([text], batch_size=1)
                latency[name].append(1000 * (time.perf_counter() - start))
    return SpeedResult(
        sentences_per_s={name: best[name] for name in encoders},
        batch1_ms={name: statistics.median(v) for name, v in latency.items() if v},
        n_sentences=len(texts), batch_size=batch_size, rounds=rounds, threads=torch.get_num_threads(),
    )
