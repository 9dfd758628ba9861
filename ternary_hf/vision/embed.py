"""Image embeddings from any ViT-like model: L2-normalised CLS or mean-pooled last hidden states.

One function for the float teacher, a ternary model (quantized on the fly or a saved folder) and the
student being trained, so every comparison in this package embeds images the same way.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from ..utils.progress import bar_switch
from .data import to_pixel_values

__all__ = ["POOLINGS", "check_pooling", "embed_images", "load_model", "pool"]

#: how an image's tokens become its embedding
POOLINGS = ("cls", "mean")


def check_pooling(pooling: str) -> None:
    """Raise :class:`~ternary_hf.errors.InvalidInputError` unless ``pooling`` is one of :data:`POOLINGS`."""
    if pooling not in POOLINGS:
        raise InvalidInputError(f"pooling={pooling!r} is not allowed; choose {' or '.join(map(repr, POOLINGS))}")


def load_model(model: Any) -> nn.Module:
    """``model`` itself, or the model saved in a folder (``AutoModel``; a ternary folder loads as ternary)."""
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoModel

        return AutoModel.from_pretrained(str(model)).eval()
    return model


def _last_hidden(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values=pixels)
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:  # e.g. a *ForImageClassification model: use its last hidden state
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
    return hidden


def pool(hidden: torch.Tensor, pooling: str) -> torch.Tensor:
    """The CLS token's hidden state, or the mean over all tokens."""
    return hidden[:, 0] if pooling == "cls" else hidden.mean(dim=1)


def embed_images(model: Any, images: Any, batch_size: int = 256, pooling: str = "cls",
                 show_progress_bar: bool | None = None) -> np.ndarray:
    """L2-normalised image embeddings, float32 ``(N, hidden_size)``.

    Args:
        model: a ViT-like model (float, ternary on the fly, a student being trained) or a folder to load
            with ``AutoModel.from_pretrained`` (a saved ternary folder loads as ternary).
        images: uint8 / float images, or ready ``pixel_values`` (see :mod:`ternary_hf.vision.data`).
        pooling: ``"cls"`` (the CLS token, what the ViT classifier reads) or ``"mean"`` (all tokens).
        show_progress_bar: default: shown for more than 20 batches.
    """
    from tqdm.auto import tqdm

    check_pooling(pooling)
    model = load_model(model)
    was_training = model.training
    model.eval()
    pixels = to_pixel_values(images, model.config)
    n_batches = math.ceil(len(pixels) / batch_size)
    show = n_batches > 20 if show_progress_bar is None else show_progress_bar
    chunks = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(pixels), batch_size), total=n_batches, desc="embedding images",
                          **bar_switch(show)):
            pooled = pool(_last_hidden(model, pixels[start:start + batch_size]), pooling)
            chunks.append(F.normalize(pooled.float(), dim=-1))
    model.train(was_training)
    if not chunks:
        return np.zeros((0, int(model.config.hidden_size)), dtype=np.float32)
    return np.ascontiguousarray(torch.cat(chunks).numpy(), dtype=np.float32)
