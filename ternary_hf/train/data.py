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

__all__ = ["IndexedTexts", "TextCollate", "batch_order", "corpus_fingerprint", "interleave_batches", "load_texts",
           "long_views", "mix_texts", "token_lengths"]


def load_texts(source: str | os.PathLike | Sequence[str] | Any | None = None, limit: int | None = None,
               seed: int = 0, text_field: str = "text", mix: str = "classic", exclude: Sequence[str] = (),
               share: float = 1.0) -> list[str]:
    """Distillation texts from a file (one per line; ``.jsonl`` with ``text_field``), a list, a
    ``datasets.Dataset``, or ``None`` for the bundled real corpora (training splits only: the ``mix``
    of :func:`ternary_hf.data.default_distillation_texts` without the ``exclude`` sources).

    With a ``source`` and ``share`` below 1, the source's texts are mixed with the bundled corpus so
    that they make ``share`` of the result (:func:`mix_texts`); ``limit`` then caps the bundled part.
    ``limit`` takes a prefix of the bundled corpus's round robin (so every source keeps its share), or
    a seeded sample of the source's texts.

    Raises:
        MissingInputError / InvalidInputError: a missing or malformed file (see
            :func:`ternary_hf.data.texts.read_corpus`), a dataset without ``text_field``, no text at all.
    """
    if source is None:
        texts = _bundled(seed, mix, exclude, limit)  # a prefix of the round robin: every source shares it
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
    if source is not None and share < 1:
        return mix_texts(texts, _bundled(seed, mix, exclude, limit), share, seed)
    if limit is not None and len(texts) > limit:
        texts = random.Random(seed).sample(texts, limit)
    return texts


def _bundled(seed: int, mix: str, exclude: Sequence[str], limit: int | None) -> list[str]:
    from ..data.corpora import default_distillation_texts

    return list(default_distillation_texts(limit=limit, seed=seed, mix=mix, exclude=exclude))


def mix_texts(own: Sequence[str], bundled: Sequence[str], share: float, seed: int) -> list[str]:
    """``own`` texts as ``share`` of a corpus whose rest is ``bundled``. No text of either side is
    dropped: the side short of its share is repeated (each of its texts the same number of times,
    give or take one, the extra copies a seeded sample), so a few hundred own documents are still
    seen at ``share`` of the training batches."""
    if not 0 < share < 1:
        raise InvalidInputError(f"share must be between 0 and 1 to mix, got {share!r}")
    total = max(len(own) / share, len(bundled) / (1 - share))
    rng = random.Random(seed)
    return _repeat(own, round(share * total), rng) + _repeat(bundled, round((1 - share) * total), rng)


def _repeat(texts: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """``texts`` repeated to ``n`` items (at least once each)."""
    copies, rest = divmod(max(n, len(texts)), len(texts))
    return list(texts) * copies + rng.sample(list(texts), rest)


def corpus_fingerprint(texts: Sequence[str]) -> str:
    """A short hash of the texts in order: two runs train on the same corpus exactly when it matches."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def batch_order(lengths: Sequence[int], batch_size: int, n_batches: int, seed: int,
                max_tokens: int = 0) -> list[list[int]]:
    """``n_batches`` seeded batches of item indices, items of similar length together (less padding).

    Each epoch shuffles the items, sorts pools of ``32 * batch_size`` by length, cuts them into
    batches and shuffles the batches; incomplete batches are dropped unless an epoch has no complete
    one. Items of equal length (images) simply come out in shuffled batches.

    With ``max_tokens``, a batch holds at most ``batch_size`` items and at most ``max_tokens`` padded
    tokens (items x its longest length), so a batch of long texts has fewer rows and every step costs
    about the same; a batch is complete when the next item would not fit.
    """
    rng = random.Random(seed)
    batches: list[list[int]] = []
    while len(batches) < n_batches:
        idx = list(range(len(lengths)))
        rng.shuffle(idx)
        pool = batch_size * 32
        epoch_batches: list[list[int]] = []
        complete: list[bool] = []
        for start in range(0, len(idx), pool):
            chunk = sorted(idx[start:start + pool], key=lambda i: lengths[i])
            cut = _token_budget_cut(chunk, lengths, batch_size, max_tokens) if max_tokens else [
                chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
            epoch_batches += cut
            complete += [len(b) == batch_size for b in cut] if not max_tokens else [True] * (len(cut) - 1) + [
                len(cut[-1]) == _capacity(cut[-1], lengths, batch_size, max_tokens)]
        order = list(range(len(epoch_batches)))
        rng.shuffle(order)
        batches += [epoch_batches[i] for i in order if complete[i]] or [epoch_batches[i] for i in order]
    return batches[:n_batches]


def interleave_batches(short: Sequence[list[int]], long: Sequence[list[int]], long_share: float,
                       seed: int) -> list[list[int]]:
    """``len(short)`` batches, ``long_share`` of them (rounded) taken in order from ``long`` and the rest
    in order from ``short``, at seeded positions spread over the whole run.

    Why spread rather than a curriculum (short first, long last): a time-budgeted run does not know
    its last step in advance, and a fixed seeded order keeps a resumed run's batches those of an
    uninterrupted one.
    """
    n = len(short)
    n_long = min(round(long_share * n), len(long))
    rng = random.Random(seed)
    slots = set(rng.sample(range(n), n_long))
    short_it, long_it = iter(short), iter(long)
    return [next(long_it) if i in slots else next(short_it) for i in range(n)]


def _capacity(batch: list[int], lengths: Sequence[int], batch_size: int, max_tokens: int) -> int:
    """How many items a batch of this one's longest length may hold."""
    return max(1, min(batch_size, max_tokens // max(1, max(lengths[i] for i in batch))))


def _token_budget_cut(chunk: list[int], lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Cut length-sorted ``chunk`` into batches of at most ``batch_size`` items and ``max_tokens`` padded tokens."""
    batches: list[list[int]] = [[]]
    for i in chunk:
        current = batches[-1]
        if current and (len(current) >= batch_size or (len(current) + 1) * max(lengths[i], 1) > max_tokens):
            batches.append([i])
        else:
            current.append(i)
    return batches


def token_lengths(texts: Sequence[str], tokenizer: Any, max_length: int) -> list[int]:
    """Each text's token count (special tokens included) once truncated to ``max_length``."""
    out: list[int] = []
    for start in range(0, len(texts), 4096):
        encoded = tokenizer(list(texts[start:start + 4096]), truncation=True, max_length=max_length,
                            return_attention_mask=False, return_token_type_ids=False)
        out += [len(ids) for ids in encoded["input_ids"]]
    return out


def long_views(texts: Sequence[str], tokenizer: Any, max_length: int, long_length: int) -> tuple[list[str], list[int]]:
    """The texts longer than ``max_length`` tokens and their token counts once cut at ``long_length``:
    what ``distill --long-length`` trains on beside the ``max_length`` cut of every text."""
    lengths = token_lengths(texts, tokenizer, long_length)
    keep = [i for i, n in enumerate(lengths) if n > max_length]
    return [texts[i] for i in keep], [lengths[i] for i in keep]


class IndexedTexts(torch.utils.data.Dataset):
    """The corpus as ``(index, text)`` items: the index keys the teacher cache."""

    def __init__(self, texts: Sequence[str]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[int, str]:
        return i, self.texts[i]


class TextCollate:
    """Tokenized batch plus ``index`` (the texts' corpus positions), which the loss pops before the models.

    Items from ``long_from`` on are the long views of texts (``distill --long-length``): they are cut at
    ``long_length`` tokens instead of ``max_length``. Their own indices keep them apart in the teacher
    cache from the same texts' short views.
    """

    def __init__(self, tokenizer: Any, max_length: int, long_length: int = 0, long_from: int | None = None):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.long_length, self.long_from = long_length, long_from

    def _limit(self, index: int) -> int:
        return self.long_length if self.long_from is not None and index >= self.long_from else self.max_length

    def __call__(self, items: list[tuple[int, str]]) -> dict[str, torch.Tensor]:
        texts = [text for _, text in items]
        limits = {self._limit(i) for i, _ in items}
        if len(limits) == 1:
            batch = dict(self.tokenizer(texts, padding=True, truncation=True, max_length=limits.pop(),
                                        return_tensors="pt"))
        else:  # each item cut at its own length, then padded together
            rows = [self.tokenizer(text, truncation=True, max_length=self._limit(i)) for i, text in items]
            batch = dict(self.tokenizer.pad(rows, return_tensors="pt"))
        batch["index"] = torch.tensor([i for i, _ in items], dtype=torch.int64)
        return batch
