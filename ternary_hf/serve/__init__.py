"""``ternary-hf serve``: an HTTP embedding and search server for ternary (or float) models.

This sub-package owns everything between a socket and the model: the request and error formats of
the APIs clients already speak (OpenAI ``/v1/embeddings``, text-embeddings-inference ``/embed``, plus
``/search`` over a :class:`ternary_hf.search.SemanticIndex`), the dynamic batcher that merges
concurrent requests into model batches on one worker thread, back-pressure and graceful shutdown, and
the Prometheus metrics. It uses only the public entry points of the rest of the package: a model is a
``sentence_transformers.SentenceTransformer`` folder (ternary folders load because importing
``ternary_hf`` registers the quantizer) and an index is a folder written by ``ternary-hf search build``.

The server keeps no state between requests, so it scales out as N identical replicas behind any load
balancer (see ``docs/serving.md``). Its web stack (Starlette + uvicorn) is the optional extra
``ternary-hf[serve]``; importing :mod:`ternary_hf` does not import it.

Modules: :mod:`.config` (settings and limits), :mod:`.schemas` (request validation, error shapes),
:mod:`.encoder` (model loading, token counting, one batch forward), :mod:`.batcher` (the queue and the
model worker), :mod:`.metrics` (Prometheus), :mod:`.responses` (JSON bodies), :mod:`.app` (routes and
lifecycle), :mod:`.runner` (uvicorn).
"""

from __future__ import annotations

from .config import ServeConfig

__all__ = ["ServeConfig"]
