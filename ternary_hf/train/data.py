"""Training data: distillation texts, the seeded batch order, and the text batches the loop consumes.

The batch order is a plain list of index lists fixed by the seed alone, handed to the DataLoader as
its ``batch_sampler``: Accelerate shards it across processes, saves it with a checkpoint and skips the
batches a resumed run has done, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InvalidInputError

__all__ = ["IndexedTexts", "TextCollate", "batch_order", "corpus_fingerprint", "load_texts"]


def load_texts(source: str | os.PathLike | Sequence[str] | Any | None = None, limit: int | None = None,
               seed: int = 0, text_field: str = "text") -> list[str]:
    """Distillation texts from a file (one per line; ``.jsonl`` with ``text_field``), a list, a
    ``datasets.Dataset``, or ``None`` for the bundled real corpora (training splits only).

    Raises:
        MissingInputError / InvalidInputError: a missing or malformed file (see
            :func:`ternary_hf.data.texts.read_corpus`), a dataset without ``text_field``, no text at all.
    """
    if source is None:
        from ..data.corpora import default_distillation_texts

        texts = list(default_distillation_texts(limit=limit, seed=seed))
    elif isinstance(source, (str, os.PathLike)):
        from ..data.texts import read_corpus

        texts = [text for _, text in read_corpus(source, text_field)]
    elif hasattr(source, "column_names"):  # a datasets.Dataset
        if text_field not in source.column_names:
            raise InvalidInputError(f"dataset has no column {text_field!r}; columns: {source.column_names}")
        texts = [str(t) for t in source[text_field]]
    else:
        texts = [str(t) for t in source]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InvalidInputError("no distillation text: the source is empty")
    if limit is not None and len(texts) > limit:
        texts = random.Random(seed).sample(texts, limit)
    return texts


def corpus_fingerprint(texts: Sequence[str]) -> str:
    """A short hash of the texts in order: two runs train on the same corpus exactly when it matches."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def batch_order(lengths: Sequence[int], batch_size: int, n_batches: int, seed: int) -> list[list[int]]:
    """``n_batches`` seeded batches of item indices, items of similar length together (less padding).

    Each epoch shuffles the items, sorts pools of ``32 * batch_size`` by length, cuts them into
    batches and shuffles the batches; incomplete batches are dropped unless an epoch has no complete
    one. Items of equal length (images) simply come out in shuffled batches.
    """
    rng = random.Random(seed)
    batches: list[list[int]] = []
    while len(batches) < n_batches:
        idx = list(range(len(lengths)))
        rng.shuffle(idx)
        pool = batch_size * 32
        epoch_batches = []
        for start in range(0, len(idx), pool):
            chunk = sorted(idx[start:start + pool], key=lambda i: lengths[i])
            epoch_batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(epoch_batches)
        batches += [b for b in epoch_batches if len(b) == batch_size] or epoch_batches
    return batches[:n_batches]


class IndexedTexts(torch.utils.data.Dataset):
    """The corpus as ``(index, text)`` items: the index keys the teacher cache."""

    def __init__(self, texts: Sequence[str]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[int, str]:
        return i, self.texts[i]


class TextCollate:
    """Tokenized batch plus ``index`` (the texts' corpus positions), which the loss pops before the models."""

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items: list[tuple[int, str]]) -> dict[str, torch.Tensor]:
        batch = dict(self.tokenizer([text for _, text in items], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt"))
        batch["index"] = torch.tensor([i for i, _ in items], dtype=torch.int64)
        return batch
