"""``TernaryConfig``: what a user passes to ``from_pretrained`` and what ``config.json`` records.

It validates every argument when built (from Python or from a ``config.json``), so a typo or a
malformed checkpoint fails at once with the bad value and the allowed ones, not deep inside loading.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import InvalidInputError
from ..quant.packing import PACKING_FORMAT
from ..quant.rowwise import EMBEDDING_STORAGES, INT4_GROUP_SIZE, INT4_GROUP_SIZES
from ..quant.ternarize import SCALE_GRANULARITIES, THRESHOLD_METHODS

__all__ = [
    "ACTIVATION_MODES", "DEFAULT_MODULES_TO_NOT_CONVERT", "FIELDS", "FIELD_CHOICES", "LEGACY_EMBEDDING_GROUP_SIZE",
    "QUANT_METHOD", "TernaryConfig",
]

QUANT_METHOD = "ternary"
ACTIVATION_MODES = ("int8", "float")
#: Task heads kept in full precision unless ``modules_to_not_convert`` says otherwise: they are tiny
#: and sit right at the output, where ternary error is not averaged away by later layers.
DEFAULT_MODULES_TO_NOT_CONVERT = ("classifier", "lm_head", "score", "qa_outputs")
#: The constructor's arguments, which are also the keys of ``to_dict()`` besides ``quant_method``.
FIELDS = (
    "threshold_method", "granularity", "activations", "embedding_storage", "modules_to_not_convert", "packing_format",
    "int8_modules", "int4_modules", "embedding_group_size",
)
#: The int4 embedding group size of a ``config.json`` that does not record one: every checkpoint written
#: before ``embedding_group_size`` existed used 32, and ``to_dict`` leaves 32 out so they stay alike.
LEGACY_EMBEDDING_GROUP_SIZE = 32


class TernaryConfig(QuantizationConfigMixin):
    """Configuration of ternary (-1/0/+1 times a scale) quantization for ``from_pretrained``.

    Args:
        threshold_method: how each matrix is ternarized: ``"calibrated"`` (exact least-squares
            threshold, the default), ``"twn"`` (0.7 * mean|W|), ``"absmean"`` (BitNet b1.58) or
            ``"paper"`` (arXiv 2411.15438's rule). See :mod:`ternary_hf.quant.ternarize`.
        granularity: ``"channel"`` (one scale per output channel, the default) or ``"tensor"`` (one
            scale per matrix, to reproduce the founding paper).
        activations: ``"int8"`` (per-token int8 activations: what the fast CPU kernel computes, the
            default) or ``"float"`` (activations left in float, as the paper's GPU path does).
        embedding_storage: how ``nn.Embedding`` tables are stored: ``None`` (unchanged), ``"fp16"``,
            ``"int8"`` (per row) or ``"int4"`` (per group of ``embedding_group_size`` columns, the
            default: in a small encoder the table is as large as all linear layers together, so it
            decides the checkpoint's size).
        modules_to_not_convert: modules kept in full precision, as a list of entries (one string is
            one entry). An entry matches as in transformers' other quantizers (a regular expression
            matching the start of the module's name up to a dot, or a plain suffix of the name) or
            as whole dotted components anywhere in the name; see
            :func:`ternary_hf.integrations.conversion.is_skipped`. ``None`` keeps the usual task heads
            (:data:`DEFAULT_MODULES_TO_NOT_CONVERT`); ``[]`` converts all.
        packing_format: the on-disk layout identifier (see :mod:`ternary_hf.quant.packing`); only the
            current one is accepted.
        int8_modules: modules stored with int8 weights (per output channel) instead of ternary ones,
            entries matched as in ``modules_to_not_convert`` (which wins where both match); ``None``
            (the default) stores none. For the last encoder block, where ternary error costs the most
            out-of-domain quality (docs/quality.md): 4x that block's ternary bytes. See
            :mod:`ternary_hf.quant.int8`.
        int4_modules: modules stored with int4 weights (per output channel, two per byte) instead of
            ternary ones, matched the same way; a module matched by both ``int8_modules`` and
            ``int4_modules`` is refused. For the lower encoder blocks, where ternary weights cost the
            rest of the network most out of domain (docs/quality.md): 2x those blocks' ternary bytes.
            See :mod:`ternary_hf.quant.int4`.
        embedding_group_size: columns per float16 scale of an int4 embedding table (16, 32, 64 or 128).
            The default 64 spends 4.25 bits per value where 32 spends 4.5, which matters because the
            table is a third or more of a small encoder's checkpoint. A ``config.json`` without this key
            (written before it existed) means 32. See :mod:`ternary_hf.quant.rowwise`.

    Every field is checked whenever it is set, at construction or later (``config.granularity =
    "row"`` fails the same way), and an unknown keyword argument is refused.

    Raises:
        InvalidInputError: (a ``ValueError``) naming the bad argument, its value and the allowed values.
    """

    def __init__(
        self,
        threshold_method: str = "calibrated",
        granularity: str = "channel",
        activations: str = "int8",
        embedding_storage: str | None = "int4",
        modules_to_not_convert: str | Sequence[str] | None = None,
        packing_format: str = PACKING_FORMAT,
        int8_modules: str | Sequence[str] | None = None,
        int4_modules: str | Sequence[str] | None = None,
        embedding_group_size: int = INT4_GROUP_SIZE,
        **kwargs: Any,
    ) -> None:
        quant_method = kwargs.pop("quant_method", QUANT_METHOD)  # in to_dict(); another value is refused below
        if kwargs:
            raise InvalidInputError(
                f"TernaryConfig got unknown argument(s) {sorted(kwargs)}; its arguments are {list(FIELDS)}"
            )
        self.quant_method = quant_method
        self.threshold_method = threshold_method
        self.granularity = granularity
        self.activations = activations
        self.embedding_storage = embedding_storage
        self.modules_to_not_convert = modules_to_not_convert
        self.packing_format = packing_format
        self.int8_modules = int8_modules
        self.int4_modules = int4_modules
        self.embedding_group_size = embedding_group_size

    def __setattr__(self, name: str, value: Any) -> None:
        """Validate a field whenever it is set (at construction, by ``config.x = ...``, by ``update``)."""
        check = _CHECKS.get(name)
        super().__setattr__(name, value if check is None else check(value))

    def post_init(self) -> None:
        """Validate every field again (fields are already checked when set; kept for transformers' convention)."""
        for name, check in _CHECKS.items():
            check(getattr(self, name))

    @property
    def quantize_activations(self) -> bool:
        return self.activations == "int8"

    def skipped_modules(self) -> list[str]:
        """The module names kept in full precision (the default heads when none were given)."""
        if self.modules_to_not_convert is None:
            return list(DEFAULT_MODULES_TO_NOT_CONVERT)
        return list(self.modules_to_not_convert)

    def int8_module_names(self) -> list[str]:
        """The entries of ``int8_modules`` (empty when none)."""
        return list(self.int8_modules or [])

    def int4_module_names(self) -> list[str]:
        """The entries of ``int4_modules`` (empty when none)."""
        return list(self.int4_modules or [])

    def to_dict(self) -> dict[str, Any]:
        # int4_modules only when set and embedding_group_size only when not 32: a folder without int4 layers
        # or with 32-column embedding groups stays readable by versions before them
        return {
            "quant_method": self.quant_method,
            "threshold_method": self.threshold_method,
            "granularity": self.granularity,
            "activations": self.activations,
            "embedding_storage": self.embedding_storage,
            "modules_to_not_convert": self.modules_to_not_convert,
            "packing_format": self.packing_format,
            "int8_modules": self.int8_modules,
            **({"int4_modules": self.int4_modules} if self.int4_modules is not None else {}),
            **({"embedding_group_size": self.embedding_group_size}
               if self.embedding_group_size != LEGACY_EMBEDDING_GROUP_SIZE else {}),
        }

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs: Any):
        """Build from a ``config.json`` dict, with an error that says where the bad value came from.

        Keys this version does not know (written by a newer ternary-hf?) are left out with a warning
        rather than refused, so a newer folder still loads when it can.
        """
        if not isinstance(config_dict, dict):
            raise InvalidInputError(
                f"quantization_config in config.json must be an object, got {type(config_dict).__name__}"
            )
        method = config_dict.get("quant_method", QUANT_METHOD)
        if method != QUANT_METHOD:
            raise InvalidInputError(
                f"quantization_config has quant_method={method!r}; TernaryConfig needs {QUANT_METHOD!r}"
            )
        known = {"embedding_group_size": LEGACY_EMBEDDING_GROUP_SIZE,
                 **{k: v for k, v in config_dict.items() if k in FIELDS or k == "quant_method"}}
        unknown = sorted(set(config_dict) - set(known))
        if unknown:
            warnings.warn(
                f"TernaryConfig ignores unknown keys {unknown} in config.json (written by a newer ternary-hf?); "
                f"it knows {list(FIELDS)}",
                stacklevel=2,
            )
        try:
            return super().from_dict(known, return_unused_kwargs=return_unused_kwargs, **kwargs)
        except ValueError as exc:
            raise InvalidInputError(f"invalid ternary quantization_config in config.json: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TernaryConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable, compared by value


def _choice(name: str, allowed: tuple) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in allowed:
            raise InvalidInputError(f"TernaryConfig: {name}={value!r} is not allowed; choose one of {list(allowed)}")
        return value

    return check


def _module_names(field: str, none_means: str) -> Callable[[Any], list[str] | None]:
    """The check of a module-list field: ``None``, one name as a string, or a list / tuple of names;
    each name must be a valid regular expression, since transformers' matching rule reads it as one."""

    def check(value: Any) -> list[str] | None:
        if value is None:
            return None
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, (list, tuple)):
            raise InvalidInputError(
                f"TernaryConfig: {field}={value!r} is not allowed; give a list of module names "
                f"(or one name as a string), or None for {none_means}"
            )
        bad = [m for m in names if not isinstance(m, str) or not m]
        if bad:
            raise InvalidInputError(
                f"TernaryConfig: {field} must be a list of non-empty module names, got bad entries {bad!r}"
            )
        for entry in names:
            try:
                re.compile(entry)
            except re.error as exc:
                raise InvalidInputError(
                    f"TernaryConfig: {field} entry {entry!r} is not a valid regular expression ({exc}); "
                    "entries match as transformers' quantizers match them (see ternary_hf.integrations.conversion."
                    "is_skipped): escape special characters, e.g. re.escape(name)"
                ) from exc
        return list(names)

    return check


#: The allowed values of each field that has a fixed set (what the CLI offers as choices, too).
FIELD_CHOICES: dict[str, tuple] = {
    "threshold_method": THRESHOLD_METHODS,
    "granularity": SCALE_GRANULARITIES,
    "activations": ACTIVATION_MODES,
    "embedding_storage": (None, *EMBEDDING_STORAGES),
    "packing_format": (PACKING_FORMAT,),
    "embedding_group_size": INT4_GROUP_SIZES,
}

#: The check run whenever a field is set; it returns the value to store (a normalised one).
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "quant_method": _choice("quant_method", (QUANT_METHOD,)),
    **{name: _choice(name, allowed) for name, allowed in FIELD_CHOICES.items()},
    "modules_to_not_convert": _module_names("modules_to_not_convert", "the default heads"),
    "int8_modules": _module_names("int8_modules", "none"),
    "int4_modules": _module_names("int4_modules", "none"),
}
