"""Tokenize once: split a request's tokenized batch into per-text features, and pad texts back into a batch.

Why: the server counts each request's tokens before queueing it (to refuse over-long texts and fill
``usage``), on a tokenizer thread, while the model thread runs another batch. Tokenizing the texts
again on the model thread, as ``SentenceTransformer.encode`` does per batch, would spend the model
thread's time on work the tokenizer thread already did. So the tokenizer thread runs the model's own
``preprocess`` on the request, this module cuts its padded output into one :class:`TextFeatures` per
text, and the model thread only pads the texts of a batch together (:func:`collate`).

Only plain text tokenizers' outputs are split: per-token tensors whose padding value is known
(``input_ids``, ``attention_mask``, ``token_type_ids``) plus batch-wide values (``modality``,
``prompt_length``). Anything else (images, chat templates, flattened inputs) makes :func:`split`
return None and the server tokenizes on the model thread as before. :func:`agrees` checks, once per
loaded model, that split-then-collate reproduces ``preprocess`` exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_BATCH_WIDE = ("modality", "prompt_length")


@dataclass(frozen=True)
class TextFeatures:
    """One text's unpadded per-token arrays plus the batch-wide values it was tokenized with."""

    arrays: dict[str, np.ndarray]
    batch_wide: tuple[tuple[str, Any], ...]

    @property
    def length(self) -> int:
        return len(self.arrays["input_ids"])


def pad_values(tokenizer: Any) -> dict[str, int] | None:
    """What each per-token key is padded with, or None when the tokenizer does not say."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        return None
    return {
        "input_ids": int(pad_id),
        "attention_mask": 0,
        "token_type_ids": int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
    }


def split(features: dict[str, Any], pads: dict[str, int], left: bool) -> list[TextFeatures] | None:
    """Per-text features of a padded ``preprocess`` output, or None if it holds anything else."""
    ids, mask = features.get("input_ids"), features.get("attention_mask")
    if not isinstance(ids, torch.Tensor) or not isinstance(mask, torch.Tensor) or ids.dim() != 2:
        return None
    per_token: dict[str, np.ndarray] = {}
    batch_wide: list[tuple[str, Any]] = []
    for key, value in features.items():
        if key in pads and isinstance(value, torch.Tensor) and value.shape == ids.shape:
            per_token[key] = value.numpy()
        elif key in _BATCH_WIDE and not isinstance(value, torch.Tensor):
            batch_wide.append((key, value))
        else:
            return None
    lengths = mask.sum(dim=1).tolist()
    width = ids.shape[1]
    frozen = tuple(batch_wide)
    return [
        TextFeatures({k: (v[row, width - n:] if left else v[row, :n]) for k, v in per_token.items()}, frozen)
        for row, n in enumerate(lengths)
    ]


def collate(texts: Sequence[TextFeatures], pads: dict[str, int], left: bool) -> dict[str, Any]:
    """The batch ``preprocess`` would give for these texts: padded to the longest, on the same side."""
    width = max(t.length for t in texts)
    out: dict[str, Any] = {}
    for key, sample in texts[0].arrays.items():
        batch = np.full((len(texts), width), pads[key], dtype=sample.dtype)
        for row, t in enumerate(texts):
            values = t.arrays[key]
            if left:
                batch[row, width - len(values):] = values
            else:
                batch[row, : len(values)] = values
        out[key] = torch.from_numpy(batch)
    out.update(texts[0].batch_wide)
    return out


def agrees(preprocess: Callable[[list[str]], dict[str, Any]], pads: dict[str, int], left: bool,
           texts: list[str]) -> bool:
    """Whether splitting ``preprocess(texts)`` and collating a reordered subset gives ``preprocess`` of it."""
    parts = split(preprocess(texts), pads, left)
    if parts is None or len(texts) < 2:
        return False
    order = list(range(len(texts)))[::-2]  # a reordered subset: padding width and rows both change
    expected = preprocess([texts[i] for i in order])
    got = collate([parts[i] for i in order], pads, left)
    if set(expected) != set(got):
        return False
    return all(
        torch.equal(v, got[k]) if isinstance(v, torch.Tensor) else v == got[k] for k, v in expected.items()
    )
