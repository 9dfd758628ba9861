"""ternary-hf: ternary-weight (-1/0/+1 x scale) embedding models for the Hugging Face stack.

Importing the package registers the ``"ternary"`` quantization method with transformers, so
``AutoModel.from_pretrained(path, quantization_config=TernaryConfig())`` ternarizes a float model and
``AutoModel.from_pretrained(ternary_dir)`` loads a saved ternary one.
"""

from __future__ import annotations

from . import remote_code
from .config import TernaryConfig
from .conversion import dequantize_model
from .modules import QuantizedEmbedding, TernaryLinear
from .packing import pack_ternary, unpack_ternary
from .quantizer import TernaryHfQuantizer
from .registration import register
from .ternarize import TernaryWeight, ternarize

__version__ = "0.1.0"

__all__ = [
    "TernaryConfig",
    "TernaryHfQuantizer",
    "TernaryLinear",
    "QuantizedEmbedding",
    "TernaryWeight",
    "ternarize",
    "pack_ternary",
    "unpack_ternary",
    "dequantize_model",
    "register",
    "remote_code",
    "__version__",
]

register()
