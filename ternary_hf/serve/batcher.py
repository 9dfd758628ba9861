"""Dynamic batching: many concurrent requests, one model worker thread, results routed back.

Why this shape:

* One worker thread owns the model. torch already spreads one batch over every core, so two batches
  at once would only fight for them; the event loop stays free to parse and answer HTTP meanwhile.
* Each model batch holds the oldest pending text (so nobody starves: texts are served in arrival
  order at worst) and the pending texts next to it in length, from any request, up to
  ``max_batch_size`` texts and ``max_batch_tokens`` padded tokens (so little compute goes to padding,
  which is what makes batching pay). Lengths are counted in tokens, not characters as ``encode``
  counts them, so batches waste less on padding than ``encode``'s own; a request of at most
  ``max_batch_size`` texts that runs alone is still exactly ``encode``'s batch.
* The worker waits up to ``max_wait`` for company only while other admitted requests are still being
  tokenized, i.e. when company is known to be on its way; a lone client is never delayed.
* A request whose client disconnected is marked cancelled; its texts that have not reached the model
  yet are dropped, and the batch it was part of finishes normally for everyone else.
* ``stop()`` lets the worker finish everything queued (SIGTERM drains) before the thread exits.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import ServeMetrics
from .schemas import overloaded

logger = logging.getLogger("ternary_hf.serve")

#: Runs one model batch: each text's payload (the text, or its features from the tokenizer thread) and the prompt.
EmbedFn = Callable[[list[Any], "str | None"], np.ndarray]
_STOP = object()
_ids = itertools.count()


@dataclass(eq=False)
class Ticket:
    """Capacity held by one request; ``submitted`` once its texts reached the queue."""

    n: int
    submitted: bool = False


@dataclass(eq=False)
class Job:
    """The texts of one request on their way through the model."""

    texts: list[str]
    payload: list[Any]  # what the embed function takes per text
    tokens: list[int]
    prompt: str | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    out: np.ndarray | None = None
    cancelled: bool = False
    seq: int = field(default_factory=lambda: next(_ids))
    order: list[int] = field(default_factory=list)  # texts not yet run, in encode's order
    remaining: int = 0

    def __post_init__(self) -> None:
        # longest first, by tokens then characters
        self.order = [int(i) for i in np.lexsort(([-len(t) for t in self.texts], [-n for n in self.tokens]))]
        self.remaining = len(self.texts)


class Batcher:
    """The admission limit, the queue and the model worker thread."""

    def __init__(
        self,
        embed: EmbedFn,
        dim: int,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait: float,
        max_queue: int,
        metrics: ServeMetrics,
    ) -> None:
        self._embed = embed
        self._dim = dim
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.metrics = metrics
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._pool: dict[int, Job] = {}  # insertion order = arrival order
        self._thread: threading.Thread | None = None
        self._admitted = 0  # texts admitted and not yet answered (event-loop thread only)
        self._incoming = 0  # admitted texts not yet submitted: being tokenized (event-loop thread only)
        self._queued = 0  # texts handed to the worker and not yet run (worker updates, others read)
        self._rate = 0.0  # texts per second, moving average, for Retry-After

    # ------------------------------------------------------------------ event-loop side
    @contextmanager
    def admitted(self, n: int) -> Iterator[Ticket]:
        """Hold ``n`` texts of capacity for the duration of a request, or raise a 503 if it is full."""
        if self._admitted + n > self.max_queue:
            raise overloaded(self.retry_after(), self._admitted)
        ticket = Ticket(n)
        self._admitted += n
        self._incoming += n
        self.metrics.in_flight.set(self._admitted)
        try:
            yield ticket
        finally:
            self._admitted -= n
            if not ticket.submitted:
                self._incoming -= n
            self.metrics.in_flight.set(self._admitted)

    def retry_after(self) -> int:
        """Whole seconds after which the texts in flight now should be done (1..60)."""
        if self._rate <= 0:
            return 1
        return int(min(60, max(1, np.ceil(self._admitted / self._rate))))

    def submit(
        self, ticket: Ticket, texts: list[str], payload: list[Any], tokens: list[int], prompt: str | None
    ) -> Job:
        """Queue one request's texts; ``await job.future`` gives the ``(n, dim)`` float32 embeddings."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        job = Job(texts=texts, payload=payload, tokens=tokens, prompt=prompt, future=loop.create_future(), loop=loop)
        if not ticket.submitted:
            ticket.submitted = True
            self._incoming -= ticket.n
        self._inbox.put(job)
        return job

    def cancel(self, job: Job) -> None:
        """The client left: drop the texts that have not reached the model."""
        job.cancelled = True

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ternary-hf-model", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every queued text, then end the worker thread."""
        if self._thread is None:
            return
        self._inbox.put(_STOP)
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        stopping = False
        while True:
            stopping = self._collect(block=not self._pool and not stopping) or stopping
            self._drop_cancelled()
            if not self._pool:
                if stopping:
                    break
                continue
            try:
                batch = self._select()
            except Exception as exc:  # noqa: BLE001 - a bug here must not leave requests waiting forever
                logger.exception("batch selection failed; failing the %d queued requests", len(self._pool))
                for job in list(self._pool.values()):
                    self._finish(job, exc)
                continue
            self._run_batch(batch)
        logger.info("model worker stopped (queue drained)")

    def _collect(self, block: bool) -> bool:
        """Move queued jobs into the pool; returns True once ``stop()`` was called."""
        stopping = False
        if block:
            item = self._inbox.get()
            if item is _STOP:
                return True
            self._add(item)
            deadline = time.monotonic() + self.max_wait
            while self._worth_waiting() and (left := deadline - time.monotonic()) > 0:
                try:
                    item = self._inbox.get(timeout=left)
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                self._add(item)
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stopping = True
                continue
            self._add(item)
        self.metrics.queue_depth.set(self._queued)
        return stopping

    def _worth_waiting(self) -> bool:
        """Other admitted requests are being tokenized (company is on its way) and the batch has room."""
        return self._incoming > 0 and self._queued < self.max_batch_size

    def _add(self, job: Job) -> None:
        self._pool[job.seq] = job
        self._queued += len(job.order)

    def _drop_cancelled(self) -> None:
        for seq in [s for s, j in self._pool.items() if j.cancelled]:
            job = self._pool.pop(seq)
            self._queued -= len(job.order)
            self.metrics.cancelled.inc(len(job.order))
            job.order = []

    def _padded(self, tokens: list[int]) -> int:
        return len(tokens) * max(tokens) if tokens else 0

    def _select(self) -> list[tuple[Job, int]]:
        """The next batch: the oldest pending text and its neighbours by length (same prompt).

        Pending texts are sorted longest first (tokens, then characters, then arrival); the batch
        is the window of consecutive texts that starts at the oldest text and runs towards shorter ones
        (then, if that end is reached, back towards longer ones) within ``max_batch_size`` texts and
        ``max_batch_tokens`` padded tokens. Consecutive texts have similar lengths, so little compute
        goes to padding; the oldest text is in every batch, so every text is served in arrival order
        at worst.
        """
        oldest = next(iter(self._pool.values()))
        entries = sorted(
            ((-job.tokens[i], -len(job.texts[i]), job.seq, rank, job, i)
             for job in self._pool.values() if job.prompt == oldest.prompt
             for rank, i in enumerate(job.order)),
            key=lambda e: e[:4],
        )
        start = next(k for k, e in enumerate(entries) if e[4] is oldest and e[3] == 0)
        lo, hi = start, start + 1
        size, budget = self.max_batch_size, self.max_batch_tokens
        longest = -entries[start][0]  # the texts after it are no longer
        while hi - lo < size and hi < len(entries) and (hi - lo + 1) * longest <= budget:
            hi += 1
        while hi - lo < size and lo > 0 and (hi - lo + 1) * -entries[lo - 1][0] <= budget:
            lo -= 1  # each step back is the new longest
        return [(e[4], e[5]) for e in entries[lo:hi]]

    def _run_batch(self, batch: list[tuple[Job, int]]) -> None:
        for job, i in batch:
            job.order.remove(i)
        self._queued -= len(batch)
        self.metrics.queue_depth.set(self._queued)
        payload = [job.payload[i] for job, i in batch]
        tokens = [job.tokens[i] for job, i in batch]
        start = time.perf_counter()
        try:
            emb = self._embed(payload, batch[0][0].prompt)
        except Exception as exc:  # noqa: BLE001 - fail the requests in this batch, keep serving
            logger.exception("model batch of %d texts failed", len(batch))
            for job in {id(j): j for j, _ in batch}.values():
                self._finish(job, exc)
            return
        elapsed = time.perf_counter() - start
        self._rate = len(batch) / elapsed if self._rate == 0 else 0.8 * self._rate + 0.2 * len(batch) / elapsed
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_tokens.observe(self._padded(tokens))
        self.metrics.batch_duration.observe(elapsed)
        self.metrics.texts.inc(len(batch))
        for (job, i), row in zip(batch, emb, strict=True):
            if job.out is None:
                job.out = np.empty((len(job.texts), emb.shape[1]), dtype=np.float32)
            job.out[i] = row
            job.remaining -= 1
            if job.remaining == 0:
                self._finish(job, None)

    def _finish(self, job: Job, error: BaseException | None) -> None:
        if self._pool.pop(job.seq, None) is not None and error is not None:
            self._queued -= len(job.order)
            job.order = []
        if error is None:
            job.loop.call_soon_threadsafe(_resolve, job.future, job.out, None)
        else:
            job.loop.call_soon_threadsafe(_resolve, job.future, None, error)


def _resolve(future: asyncio.Future, value: np.ndarray | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
