"""``TernaryHfQuantizer``: the thin glue between transformers' loading machinery and ternary-hf.

Before weights load it swaps ``nn.Linear`` (and, if configured, ``nn.Embedding``) for the ternary
modules on the meta-device skeleton. On the fly, transformers then streams each float weight through
:class:`TernaryQuantize` (layer by layer, so the float model never exists in memory); a pre-quantized
checkpoint loads its packed tensors as they are.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import warnings
from typing import Any

import torch
from transformers.core_model_loading import ConversionOps
from transformers.quantizers.base import HfQuantizer
from transformers.quantizers.quantizers_utils import get_module_from_name

from .config import TernaryConfig
from .conversion import QUANTIZED_MODULES, dequantize_model, replace_with_ternary
from .fast_forward import enable_fast_forward
from .fusion import fuse_activations
from .remote_code import attach_autoload_on_save, detach_autoload_on_save
from .safetensors_checks import (
    linears_stored_ternary,
    read_safetensors_header,
    validate_loaded_modules,
    validate_ternary_checkpoint,
)

__all__ = ["TernaryHfQuantizer", "TernaryQuantize"]

logger = logging.getLogger(__name__)


def _load_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim() if sys.platform.startswith("linux") else None


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS after each layer.

    glibc keeps the float temporaries of one layer in its heap and reuses them only partly, so
    without this the process grows with every layer converted (peak memory: docs/format.md).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class TernaryQuantize(ConversionOps):
    """Conversion op: one float ``...weight`` in, the module's stored tensors out (``weight``, ``weight_scale``)."""

    def __init__(self, hf_quantizer: TernaryHfQuantizer) -> None:
        self.hf_quantizer = hf_quantizer

    @torch.no_grad()
    def convert(self, input_dict: dict[str, Any], model: Any = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        result: dict[str, torch.Tensor] = {}
        for key, value in input_dict.items():
            tensor = value[0] if isinstance(value, list) else value
            module, tensor_name = get_module_from_name(model, key)
            if tensor_name != "weight" or not isinstance(module, QUANTIZED_MODULES):
                result[key] = tensor
                continue
            prefix = key[: -len(tensor_name)]
            self.hf_quantizer.quantized_modules.add(prefix.rstrip("."))
            for name, stored in module.quantize_weight(tensor).items():
                result[prefix + name] = stored
        del input_dict, tensor
        _release_freed_memory()
        return result


class TernaryHfQuantizer(HfQuantizer):
    """Ternary weights (-1/0/+1 x per-channel scale), quantized on the fly or loaded pre-quantized."""

    requires_calibration = False
    quantization_config: TernaryConfig

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        if not isinstance(self.quantization_config, TernaryConfig):
            raise TypeError(
                f"the ternary quantizer needs a ternary_hf.TernaryConfig, got {type(self.quantization_config).__name__}"
            )

    def param_needs_quantization(self, model: Any, param_name: str, **kwargs: Any) -> bool:
        if self.pre_quantized:
            return False
        module, tensor_name = get_module_from_name(model, param_name)
        return tensor_name == "weight" and isinstance(module, QUANTIZED_MODULES)

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> None:
        skip = self.quantization_config.skipped_modules() + list(getattr(model, "_keep_in_fp32_modules", None) or [])
        self.modules_to_not_convert = skip
        files = kwargs.get("checkpoint_files") or []
        prefix = getattr(model, "base_model_prefix", "")
        # A folder saved by an older ternary-hf may have matched its list differently: its files win.
        stored = linears_stored_ternary(files, model, prefix) if self.pre_quantized else set()
        n_linear, n_embedding = replace_with_ternary(model, self.quantization_config, skip, stored)
        if n_linear == 0:
            warnings.warn(
                f"{type(model).__name__} has no nn.Linear layer to ternarize (skipped: {skip}); the model is "
                "unchanged apart from embeddings. Check modules_to_not_convert, or whether this architecture "
                "uses another linear class (e.g. Conv1D).",
                stacklevel=2,
            )
        logger.info("ternary-hf: converted %d linear layers and %d embedding tables", n_linear, n_embedding)
        self.quantized_modules: set[str] = set()  # filled by TernaryQuantize as weights stream in
        if self.pre_quantized:
            validate_ternary_checkpoint(files, model, prefix)
        else:
            for path in files:
                if str(path).endswith(".safetensors"):
                    read_safetensors_header(path)

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        if not self.pre_quantized:
            self._zero_layers_missing_from_checkpoint(model)
        source = str(getattr(model, "name_or_path", "") or "the checkpoint")
        validate_loaded_modules(model, source, require_loaded=self.pre_quantized)
        n_fused = fuse_activations(model)
        logger.info("ternary-hf: fused %d GELU activations into the preceding ternary layers", n_fused)
        enable_fast_forward(model)  # padding-free, batch-invariant forward for the encoders it covers
        attach_autoload_on_save(model)
        return model

    def _zero_layers_missing_from_checkpoint(self, model: Any) -> None:
        """A converted layer whose float weight is not in the checkpoint (e.g. BERT's pooler in a
        sentence-transformers export) never went through the quantizer: its packed buffer holds
        whatever memory it got. Give it a defined value, all-zero ternary weights with scale 0
        (transformers reports such weights as MISSING and would random-initialize a float layer)."""
        zeroed = []
        for name, module in model.named_modules():
            if isinstance(module, QUANTIZED_MODULES) and name not in self.quantized_modules:
                module.reset_stored_weights()
                zeroed.append(name)
        if zeroed:
            logger.warning("ternary-hf: %s had no weight in the checkpoint; set to zero", ", ".join(zeroed))

    def is_serializable(self, safe_serialization: Any = None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        # Packed weights have no gradient; train with ternary_hf.distill (latent weights + STE) instead.
        return False

    def get_quantize_ops(self) -> TernaryQuantize:
        return TernaryQuantize(self)

    def _dequantize(self, model: Any, dtype: torch.dtype | None = None) -> Any:
        dequantize_model(model, dtype)  # detaches the fast forward first
        detach_autoload_on_save(model)
        return model
