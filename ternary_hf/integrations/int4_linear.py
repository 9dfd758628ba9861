"""``Int4Linear``: the inference layer of the modules named in ``TernaryConfig.int4_modules``.

An :class:`~ternary_hf.integrations.int8_linear.Int8Linear` whose values lie in ``[-7, 7]`` and are
stored two per byte (:mod:`ternary_hf.quant.int4`): every compute path (the CPU kernel, ``torch._int_mm``,
the fast forward) multiplies the unpacked int8 values exactly as it multiplies an int8 layer's, so only
storage and the quantization rule differ. The stored ``weight`` is ``int8`` of shape
``(out_features, ceil(in_features / 2))``: neither a ternary layer (``uint8``) nor an int8 one (the full
shape), so the checkpoint checks tell the three apart.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError
from ..quant.int4 import pack_int4, quantize_weight_int4, unpack_int4
from ..quant.int8 import dequantize_int8
from .int8_linear import Int8Linear

__all__ = ["Int4Linear"]


class Int4Linear(Int8Linear):
    """A linear layer with int4 weights (per output channel) and, by default, per-token int8 activations.

    Buffers (saved in the checkpoint):
        weight: ``int8`` ``(out_features, ceil(in_features / 2))``, two 4-bit values per byte.
        weight_scale: ``float32`` ``(out_features,)``.
    """

    KERNEL_PREPARE = "prepare_int4_weight"  # small codes: the AVX2 build's faster tile

    def __init__(self, in_features: int, out_features: int, bias: bool = True, quantize_activations: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, quantize_activations, device, dtype)
        self.register_buffer("weight", torch.zeros(out_features, (in_features + 1) // 2, dtype=torch.int8,
                                                   device=device))
        self._values: tuple[tuple, torch.Tensor] | None = None

    def quantize_weight(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float weight -> the stored tensors (packed ``weight``, ``weight_scale``)."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise InvalidInputError(
                f"weight of shape {tuple(weight.shape)} does not fit an Int4Linear ({self.out_features}, "
                f"{self.in_features})"
            )
        values, scale = quantize_weight_int4(weight)
        return {"weight": pack_int4(values), "weight_scale": scale}

    def int8_values(self, keep: bool = True) -> torch.Tensor:
        """The unpacked values ``(out_features, in_features)`` as int8.

        ``keep``: hold them until the weight changes, for the torch path, which multiplies them on
        every call. Callers that use them once (the kernel's panels, dequantization) pass ``False``:
        kept, they would double the layer's memory (one byte per weight beside the packed half byte
        and the kernel's copy)."""
        key = (self.weight.data_ptr(), self.weight._version, self.weight.device)
        if self._values is not None and self._values[0] == key:
            return self._values[1]
        values = unpack_int4(self.weight, self.in_features)
        if keep:
            self._values = (key, values)
        return values

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int8(self.int8_values(keep=False), self.weight_scale, dtype)

    def extra_repr(self) -> str:
        return super().extra_repr().replace("weights=int8", "weights=int4")
