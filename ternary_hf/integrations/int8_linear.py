"""``Int8Linear``: the inference layer of the modules named in ``TernaryConfig.int8_modules``.

The same interface as :class:`~ternary_hf.integrations.modules.TernaryLinear` (``quantize_weight``,
``to_linear``, ``reset_stored_weights``) so the quantizer, the checkpoint checks and ``dequantize``
treat both alike; the rule is :mod:`ternary_hf.quant.int8`. Its stored ``weight`` is ``int8`` of the
float weight's shape, so a folder loaded without ternary-hf cannot mistake it for a ternary layer
(the ternary checks compare dtypes), and ``config.json`` names the layers.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidInputError
from ..quant.functional import apply_activation
from ..quant.int8 import dequantize_int8, int8_linear, quantize_weight_int8
from .modules import float_linear, kernel_forward

__all__ = ["Int8Linear"]


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (per output channel) and, by default, per-token int8 activations.

    Buffers (saved in the checkpoint):
        weight: ``int8`` ``(out_features, in_features)``.
        weight_scale: ``float32`` ``(out_features,)``.
    Parameter: ``bias`` as in ``nn.Linear``. ``fused_activation`` (not saved; set by ``fuse_activations``
    at load time) as in ``TernaryLinear``.

    On CPU the compiled kernel runs it (the ternary layers' epilogue, GELU fused); elsewhere (no
    kernel, other devices, autograd) ``torch._int_mm`` or a float matmul computes the same integers.
    """

    #: the ``ternary_hf.kernels`` function that lays the values out for the kernel
    KERNEL_PREPARE = "prepare_int8_weight"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, quantize_activations: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.quantize_activations = quantize_activations
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.zeros(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype or torch.float32))
        else:
            self.register_parameter("bias", None)
        self._prepared: tuple[tuple, torch.Tensor] | None = None
        self.fused_activation: str | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, quantize_activations: bool = True) -> Int8Linear:
        """Quantize an existing ``nn.Linear`` (which is left untouched)."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                     quantize_activations=quantize_activations, device=linear.weight.device,
                     dtype=linear.weight.dtype)
        with torch.no_grad():
            for name, tensor in module.quantize_weight(linear.weight).items():
                getattr(module, name).copy_(tensor)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    @torch.no_grad()
    def reset_stored_weights(self) -> None:
        """All-zero weights, scales and bias: a defined layer for one missing from a checkpoint."""
        self.weight.zero_()
        self.weight_scale.zero_()
        if self.bias is not None:
            self.bias.zero_()

    def quantize_weight(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float weight -> the stored tensors (``weight``, ``weight_scale``)."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise InvalidInputError(
                f"weight of shape {tuple(weight.shape)} does not fit an Int8Linear ({self.out_features}, "
                f"{self.in_features})"
            )
        values, scale = quantize_weight_int8(weight)
        return {"weight": values, "weight_scale": scale}

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int8(self.weight, self.weight_scale, dtype)

    def to_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A float ``nn.Linear`` computing ``s_w * W_q`` (activation quantization is dropped)."""
        return float_linear(self, dtype)

    def int8_values(self, keep: bool = True) -> torch.Tensor:
        """The weight as int8 values ``(out_features, in_features)`` (the stored ``weight`` itself;
        ``keep`` matters for formats that unpack, :class:`~.int4_linear.Int4Linear`)."""
        return self.weight

    def kernel_weight(self, kernels) -> torch.Tensor:
        """The weight in the CPU kernel's layout (the panels of ``kernels.<KERNEL_PREPARE>``), prepared
        once and kept until the weight changes (data pointer, version or device)."""
        key = (self.weight.data_ptr(), self.weight._version, self.weight.device)
        if self._prepared is None or self._prepared[0] != key:
            self._prepared = (key, getattr(kernels, self.KERNEL_PREPARE)(self.int8_values(keep=False)))
        return self._prepared[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = kernel_forward(self, x, int8_weights=True)
        if y is not None:
            return y
        y = int8_linear(x, self.int8_values(), self.weight_scale, self.bias, self.quantize_activations)
        return apply_activation(y, self.fused_activation)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weights=int8, activations={'int8' if self.quantize_activations else 'float'}")
