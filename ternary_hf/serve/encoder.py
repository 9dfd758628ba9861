"""The model side of the server: load, count tokens, run one batch exactly as ``encode`` does.

Why tokens are counted separately from the forward pass: a request must be checked (over-long text,
usage counts, batch budget) before it is queued, on a thread that is not the event loop, while the
model thread is busy with another batch. Hugging Face fast tokenizers raise "Already borrowed" when one
tokenizer is used from two threads while one of them changes its truncation settings, so the counting
side uses its own copy of the Rust tokenizer with truncation and padding switched off, and never
changes it. The forward side calls ``SentenceTransformer.preprocess`` and the model itself, the two
steps ``SentenceTransformer.encode`` runs per batch, so a batch gives what ``encode`` gives for the
same texts in the same batch.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError

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
        self._lock = threading.Lock()  # only used when the tokenizer cannot be copied
        self._counter = _counting_tokenizer(model.tokenizer)

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
        with self._lock:
            ids = self.model.tokenizer(full, truncation=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    def embed(self, texts: list[str], prompt: str | None) -> np.ndarray:
        """One model batch: float32 array ``(len(texts), dim)``, before any normalisation of ours."""
        import torch
        from sentence_transformers.util import batch_to_device

        with self._lock, torch.inference_mode():
            features = self.model.preprocess(texts, prompt=prompt)
            features = batch_to_device(features, self.model.device)
            out = self.model(features)["sentence_embedding"]
            if self.truncate_dim:
                out = out[:, : self.truncate_dim]
            return out.float().cpu().numpy()

    def warmup(self, batch_size: int) -> None:
        """Run short, medium and maximum-length batches once (kernels, allocator and caches warm up)."""
        for n_words, n_texts in ((4, 1), (16, batch_size), (self.max_seq_length, 2)):
            text = " ".join(_WARMUP_WORDS[i % len(_WARMUP_WORDS)] for i in range(n_words))
            self.embed([text] * n_texts, self.default_prompt)


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
