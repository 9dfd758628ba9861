"""How good image embeddings are: a linear probe and image-to-image retrieval P@k, with retention
against a teacher; plus model size and embedding time, measured side by side.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..search import exact_search
from ..utils.io import weight_files_bytes
from .data import ImageSplit, as_split, load_image_dataset
from .embed import embed_images, load_model

__all__ = ["evaluate_vision", "model_bytes", "time_embedding"]


def _precision_at_k(gallery: np.ndarray, gallery_labels: np.ndarray, queries: np.ndarray,
                    query_labels: np.ndarray, k: int) -> float:
    _, pos = exact_search(gallery, queries, k)
    return float((gallery_labels[pos] == query_labels[:, None]).mean())


def _linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # standardised features, fairly strong L2 (C=0.1): converges in ~150 lbfgs iterations on 128-d
    # embeddings, where C=1 needs ~300 for +0.5 point; the same protocol for every model compared
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    probe.fit(x_train, y_train)
    return float(probe.score(x_test, y_test))


def _scores(model: Any, train: ImageSplit, test: ImageSplit, batch_size: int, pooling: str, k: int
            ) -> dict[str, float]:
    x_train = embed_images(model, train.images, batch_size, pooling)
    x_test = embed_images(model, test.images, batch_size, pooling)
    return {"linear_probe_accuracy": _linear_probe(x_train, train.labels, x_test, test.labels),
            f"p_at_{k}": _precision_at_k(x_train, train.labels, x_test, test.labels, k)}


def evaluate_vision(
    model: Any,
    teacher: Any = None,
    dataset: str | tuple[ImageSplit, ImageSplit] = "fashion-mnist",
    limit: int | None = None,
    *,
    test_limit: int | None = None,
    pooling: str = "cls",
    batch_size: int = 256,
    k: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Linear-probe accuracy and image-to-image retrieval P@k, with retention against a teacher.

    * linear probe: logistic regression (standardised features, C=0.1) fit on train-split embeddings, accuracy
      on the test split;
    * retrieval: each test image queries the train images (FAISS exact inner product on the normalised
      embeddings); a hit is relevant when it has the query's label; P@k averaged over queries.

    Args:
        model / teacher: models or folders (see :func:`embed_images`); the teacher is optional.
        dataset: a name for :func:`load_image_dataset` or ``(train, test)`` :class:`ImageSplit` pairs.
        limit: seeded subset of at most this many train images (probe training set and gallery).
        test_limit: seeded subset of test images (default: ``limit``).

    Returns:
        ``{"linear_probe_accuracy", "p_at_10", "n_train", "n_test"}`` and, with a teacher,
        ``teacher_*`` and ``retention_*`` (model / teacher) for both metrics.
    """
    if isinstance(dataset, (str, os.PathLike)):
        train = load_image_dataset(str(dataset), "train", limit=limit, seed=seed)
        test = load_image_dataset(str(dataset), "test", limit=test_limit or limit, seed=seed)
    else:
        train, test = (as_split(d, s, None, seed) for d, s in zip(dataset, ("train", "test"), strict=True))
    if len(train.labels) < k:
        raise InvalidInputError(f"retrieval P@{k} needs at least {k} gallery images, got {len(train.labels)}")
    result: dict[str, float] = dict(_scores(model, train, test, batch_size, pooling, k),
                                    n_train=len(train.labels), n_test=len(test.labels))
    if teacher is not None:
        reference = _scores(teacher, train, test, batch_size, pooling, k)
        for name, value in reference.items():
            result[f"teacher_{name}"] = value
            result[f"retention_{name}"] = result[name] / value if value else float("nan")
    return result


def model_bytes(path: str | os.PathLike) -> int:
    """Bytes of the weight files in a saved model folder (:func:`ternary_hf.utils.io.weight_files_bytes`)."""
    return weight_files_bytes(path)


def time_embedding(models: Sequence[Any], images: Any, batch_size: int = 256, rounds: int = 5,
                   pooling: str = "cls") -> list[float]:
    """Median seconds per :func:`embed_images` call for each model, timed in interleaved rounds.

    Interleaving (A, B, A, B, ...) keeps a busy machine's load shifts out of the ratio.
    """
    models = [load_model(m) for m in models]
    for m in models:  # warm-up: kernel load / weight preparation, allocator
        embed_images(m, images[: min(len(images), batch_size)], batch_size, pooling, show_progress_bar=False)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for i, m in enumerate(models):
            started = time.perf_counter()
            embed_images(m, images, batch_size, pooling, show_progress_bar=False)
            times[i].append(time.perf_counter() - started)
    return [float(np.median(t)) for t in times]
