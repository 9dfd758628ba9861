"""``TernaryConfig``: what a user passes to ``from_pretrained`` and what ``config.json`` records.

It validates every argument when built (from Python or from a ``config.json``), so a typo or a
malformed checkpoint fails at once with the bad value and the allowed ones, not deep inside loading.
"""

from __future__ import annotations

import warnings
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from ..quant.packing import PACKING_FORMAT
from ..quant.rowwise import EMBEDDING_STORAGES
from ..quant.ternarize import SCALE_GRANULARITIES, THRESHOLD_METHODS

__all__ = ["TernaryConfig", "QUANT_METHOD", "ACTIVATION_MODES", "DEFAULT_MODULES_TO_NOT_CONVERT"]

QUANT_METHOD = "ternary"
ACTIVATION_MODES = ("int8", "float")
#: Task heads kept in full precision unless ``modules_to_not_convert`` says otherwise: they are tiny
#: and sit right at the output, where ternary error is not averaged away by later layers.
DEFAULT_MODULES_TO_NOT_CONVERT = ("classifier", "lm_head", "score", "qa_outputs")


class TernaryConfig(QuantizationConfigMixin):
    """Configuration of ternary (-1/0/+1 times a scale) quantization for ``from_pretrained``.

    Args:
        threshold_method: how each matrix is ternarized: ``"calibrated"`` (exact least-squares
            threshold, the default), ``"twn"`` (0.7 * mean|W|), ``"absmean"`` (BitNet b1.58) or
            ``"paper"`` (arXiv 2411.15438's rule). See :mod:`ternary_hf.ternarize`.
        granularity: ``"channel"`` (one scale per output channel, the default) or ``"tensor"`` (one
            scale per matrix, to reproduce the founding paper).
        activations: ``"int8"`` (per-token int8 activations: what the fast CPU kernel computes, the
            default) or ``"float"`` (activations left in float, as the paper's GPU path does).
        embedding_storage: how ``nn.Embedding`` tables are stored: ``None`` (unchanged), ``"fp16"``,
            ``"int8"`` (per row) or ``"int4"`` (per group of 32, the default: the table is half of a
            small encoder's bytes, and int4 is what brings all-MiniLM-L6-v2 under 0.15x).
        modules_to_not_convert: module names (or name suffixes) kept in full precision. ``None``
            keeps the usual task heads (:data:`DEFAULT_MODULES_TO_NOT_CONVERT`); ``[]`` converts all.
        packing_format: the on-disk layout identifier (see :mod:`ternary_hf.packing`); only the
            current one is accepted.

    Raises:
        ValueError: naming the bad argument, its value and the allowed values.
    """

    def __init__(
        self,
        threshold_method: str = "calibrated",
        granularity: str = "channel",
        activations: str = "int8",
        embedding_storage: str | None = "int4",
        modules_to_not_convert: list[str] | None = None,
        packing_format: str = PACKING_FORMAT,
        **kwargs: Any,
    ) -> None:
        self.quant_method = QUANT_METHOD
        self.threshold_method = threshold_method
        self.granularity = granularity
        self.activations = activations
        self.embedding_storage = embedding_storage
        self.modules_to_not_convert = None if modules_to_not_convert is None else list(modules_to_not_convert)
        self.packing_format = packing_format
        kwargs.pop("quant_method", None)
        if kwargs:
            warnings.warn(
                f"TernaryConfig ignores unknown keys {sorted(kwargs)} (written by a newer ternary-hf?)",
                stacklevel=2,
            )
        self.post_init()

    def post_init(self) -> None:
        """Validate every field; called by the constructor."""
        _choice("threshold_method", self.threshold_method, THRESHOLD_METHODS)
        _choice("granularity", self.granularity, SCALE_GRANULARITIES)
        _choice("activations", self.activations, ACTIVATION_MODES)
        _choice("embedding_storage", self.embedding_storage, (None, *EMBEDDING_STORAGES))
        _choice("packing_format", self.packing_format, (PACKING_FORMAT,))
        if self.modules_to_not_convert is not None:
            bad = [m for m in self.modules_to_not_convert if not isinstance(m, str) or not m]
            if bad:
                raise ValueError(
                    f"modules_to_not_convert must be a list of non-empty module names, got bad entries {bad!r}"
                )

    @property
    def quantize_activations(self) -> bool:
        return self.activations == "int8"

    def skipped_modules(self) -> list[str]:
        """The module names kept in full precision (the default heads when none were given)."""
        if self.modules_to_not_convert is None:
            return list(DEFAULT_MODULES_TO_NOT_CONVERT)
        return list(self.modules_to_not_convert)

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": self.quant_method,
            "threshold_method": self.threshold_method,
            "granularity": self.granularity,
            "activations": self.activations,
            "embedding_storage": self.embedding_storage,
            "modules_to_not_convert": self.modules_to_not_convert,
            "packing_format": self.packing_format,
        }

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs: Any):
        """Build from a ``config.json`` dict, with an error that says where the bad value came from."""
        if not isinstance(config_dict, dict):
            raise ValueError(f"quantization_config in config.json must be an object, got {type(config_dict).__name__}")
        method = config_dict.get("quant_method", QUANT_METHOD)
        if method != QUANT_METHOD:
            raise ValueError(f"quantization_config has quant_method={method!r}; TernaryConfig needs {QUANT_METHOD!r}")
        try:
            return super().from_dict(dict(config_dict), return_unused_kwargs=return_unused_kwargs, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid ternary quantization_config in config.json: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TernaryConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable, compared by value


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"TernaryConfig: {name}={value!r} is not allowed; choose one of {list(allowed)}")
