"""The model side of the server: load, tokenize, run one batch exactly as ``encode`` does.

Why texts are tokenized before they are queued: a request must be checked (over-long text, usage
counts, batch budget) on a thread that is not the event loop, while the model thread is busy with
another batch. That thread runs the model's own ``preprocess`` on the request and keeps each text's
features (:mod:`.features`), so the model thread only pads a batch together and runs the model: the two
steps ``SentenceTransformer.encode`` runs per batch, split over two threads, giving what ``encode``
gives for the same texts in the same batch. A model whose inputs cannot be split that way (checked
once at start-up) is tokenized on the model thread instead, as ``encode`` does.

Hugging Face fast tokenizers raise "Already borrowed" when one tokenizer is used from two threads while
one of them changes its truncation settings, so every call into the model's tokenizer holds one lock,
and exact counts of over-long texts come from a private copy of the Rust tokenizer with truncation and
padding switched off, which nothing ever changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from . import features
from .features import TextFeatures

logger = logging.getLogger("ternary_hf.serve")

_WARMUP_WORDS = "the quick brown fox jumps over the lazy dog while a server warms up its kernels".split()


class Encoder:
    """A loaded ``SentenceTransformer`` plus what the server needs to know about it."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.model.eval()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_seq_length = int(model.max_seq_length or 512)
        self.prompts: dict[str, str] = dict(getattr(model, "prompts", None) or {})
        default_name = getattr(model, "default_prompt_name", None)
        self.default_prompt = self.prompts.get(default_name) if default_name else None
        self.truncate_dim: int | None = getattr(model, "truncate_dim", None)
        if self.truncate_dim:
            self.dim = min(self.dim, int(self.truncate_dim))
        self._lock = threading.Lock()  # one forward at a time
        self._tokenizer_lock = threading.Lock()  # one call into the model's tokenizer at a time
        self._counter = _counting_tokenizer(model.tokenizer)
        self._pads = features.pad_values(model.tokenizer)
        self._left = getattr(model.tokenizer, "padding_side", "right") == "left"
        self._split_cap: int | None = None  # longest split text; set by check_tokenize_once()

    @classmethod
    def load(cls, name: str, device: str = "cpu", threads: int | None = None) -> Encoder:
        """Load MODEL (a ternary or float sentence-transformers folder, or a repo id in the HF cache)."""
        import torch
        from sentence_transformers import SentenceTransformer

        import ternary_hf  # noqa: F401 - registers the ternary quantizer so ternary folders load

        if threads is not None:
            torch.set_num_threads(threads)
        if not Path(name).exists():
            logger.info("%s is not a local folder; loading it as a repo id (offline: only from the HF cache)", name)
        try:
            model = SentenceTransformer(str(name), device=device)
        except (OSError, ValueError) as exc:
            raise InvalidInputError(
                f"could not load model {name!r} ({exc}); pass a local sentence-transformers folder, e.g. the "
                "bundled one: python -c 'from ternary_hf.data import default_model_path as p; print(p())'"
            ) from None
        return cls(model)

    @property
    def quantization(self) -> str:
        """``"ternary"`` (or another ``quant_method``) when the model is quantized, else ``"float32"``."""
        try:
            qc = self.model[0].auto_model.config.quantization_config
        except (AttributeError, IndexError, TypeError):
            return "float32"
        method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
        return str(getattr(method, "value", method)) if method else "float32"

    def resolve_prompt(self, prompt_name: str | None) -> str | None:
        """The prompt text ``encode(prompt_name=...)`` would prepend (the default prompt when None)."""
        if prompt_name is None:
            return self.default_prompt
        if prompt_name not in self.prompts:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise KeyError(f"prompt_name {prompt_name!r} is not one of this model's prompts ({known})")
        return self.prompts[prompt_name]

    def count_tokens(self, texts: list[str], prompt: str | None) -> list[int]:
        """Tokens (special tokens included, nothing truncated) of ``prompt + text`` for each text."""
        full = [prompt + t for t in texts] if prompt else texts
        if self._counter is not None:
            return [len(e.ids) for e in self._counter.encode_batch(full, add_special_tokens=True)]
        with self._tokenizer_lock:
            ids = self.model.tokenizer(full, truncation=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    @property
    def tokenizes_once(self) -> bool:
        """Whether :meth:`tokenize` hands the model thread ready features (see the module docstring)."""
        return self._split_cap is not None

    def tokenize(self, texts: list[str], prompt: str | None) -> tuple[list[Any], list[int]]:
        """What the model thread needs per text (features, or the text itself) and each text's token count."""
        if self._split_cap is not None:
            with self._tokenizer_lock:
                parts = features.split(self.model.preprocess(texts, prompt=prompt), self._pads, self._left)
            if parts is not None:
                counts = [p.length for p in parts]
                cut = [i for i, n in enumerate(counts) if n >= self._split_cap]  # maybe truncated: count exactly
                for i, n in zip(cut, self.count_tokens([texts[i] for i in cut], prompt), strict=True):
                    counts[i] = n
                return parts, counts
        return list(texts), self.count_tokens(texts, prompt)

    def embed(self, items: Sequence[str] | Sequence[TextFeatures], prompt: str | None) -> np.ndarray:
        """One model batch of texts or :meth:`tokenize` features: float32 ``(n, dim)``, not normalised."""
        import torch
        from sentence_transformers.util import batch_to_device

        if items and isinstance(items[0], TextFeatures):
            batch = features.collate(items, self._pads, self._left)
        else:
            with self._tokenizer_lock:
                batch = self.model.preprocess(list(items), prompt=prompt)
        with self._lock, torch.inference_mode():
            out = self.model(batch_to_device(batch, self.model.device))["sentence_embedding"]
            if self.truncate_dim:
                out = out[:, : self.truncate_dim]
            return out.float().cpu().numpy()

    def check_tokenize_once(self) -> bool:
        """Turn on :meth:`tokenize`'s features when splitting then collating reproduces ``preprocess``."""
        if self._pads is None:
            return False
        texts = [_warmup_text(n) for n in (3, 40, 9, self.max_seq_length * 2, 1)]

        def preprocess(batch: list[str]) -> dict[str, Any]:
            with self._tokenizer_lock:
                return self.model.preprocess(batch, prompt=self.default_prompt)

        try:
            ok = features.agrees(preprocess, self._pads, self._left, texts)
            parts = features.split(preprocess(texts[3:4]), self._pads, self._left) if ok else None
        except Exception:  # noqa: BLE001 - any surprise means: tokenize on the model thread, as encode does
            logger.warning("tokenizing on the model thread: this model's inputs could not be split", exc_info=True)
            return False
        if parts is None:
            logger.info("tokenizing on the model thread: this model's inputs are not plain token ids")
            return False
        self._split_cap = min(parts[0].length, self.max_seq_length)
        return True

    def warmup(self, batch_size: int) -> None:
        """Run short, medium and maximum-length batches once (kernels, allocator and caches warm up)."""
        for n_words, n_texts in ((4, 1), (16, batch_size), (self.max_seq_length, 2)):
            self.embed([_warmup_text(n_words)] * n_texts, self.default_prompt)


def _warmup_text(n_words: int) -> str:
    return " ".join(_WARMUP_WORDS[i % len(_WARMUP_WORDS)] for i in range(n_words))


def _counting_tokenizer(tokenizer: Any) -> Any:
    """A private copy of the Rust tokenizer with truncation and padding off, or None (slow tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy
