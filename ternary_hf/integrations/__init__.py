"""The transformers glue: what makes ``from_pretrained(..., quantization_config=TernaryConfig())`` and
``from_pretrained(ternary_dir)`` work.

Owns: :mod:`.config` (``TernaryConfig``), :mod:`.registration` (the ``"ternary"`` entry in transformers'
registries), :mod:`.quantizer` (the thin ``HfQuantizer``), :mod:`.modules` (``TernaryLinear`` and
``QuantizedEmbedding``, the inference layers), :mod:`.int8_linear` / :mod:`.int4_linear` (``Int8Linear``,
``Int4Linear``, for the layers of ``int8_modules`` / ``int4_modules``), :mod:`.conversion` (swapping ``nn.Linear`` /
``nn.Embedding`` for them and back), :mod:`.fusion` (activations fused into a layer at load time),
:mod:`.remote_code` (the ``trust_remote_code`` shim written into saved folders),
:mod:`.safetensors_checks` (up-front checks of checkpoint files) and :mod:`.fast_forward` (the padding-free
encoder forward the quantizer attaches to a loaded model).
Imports: :mod:`ternary_hf.quant`, :mod:`ternary_hf.kernels`, :mod:`ternary_hf.utils` and
:mod:`ternary_hf.errors`; never the training, evaluation or application packages.
"""

from .config import TernaryConfig
from .conversion import dequantize_model
from .int4_linear import Int4Linear
from .int8_linear import Int8Linear
from .modules import QuantizedEmbedding, TernaryLinear
from .quantizer import TernaryHfQuantizer
from .registration import register

__all__ = ["Int4Linear", "Int8Linear", "QuantizedEmbedding", "TernaryConfig", "TernaryHfQuantizer", "TernaryLinear",
           "dequantize_model", "register"]
