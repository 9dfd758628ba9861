"""ternary-hf: ternary-weight (-1/0/+1 x scale) embedding models for the Hugging Face stack.

Importing the package registers the ``"ternary"`` quantization method with transformers, so
``AutoModel.from_pretrained(path, quantization_config=TernaryConfig())`` ternarizes a float model and
``AutoModel.from_pretrained(ternary_dir)`` loads a saved ternary one.

Layout (each sub-package's ``__init__`` says what it owns and what it may import; imports only point
down this list): ``errors``, ``utils`` -> ``quant`` (pure math) -> ``kernels`` (CPU kernels) ->
``integrations`` (transformers glue) -> ``data`` -> ``ptq``, ``evaluation``, ``search``, ``hub`` ->
``train`` -> ``vision``, ``demo``, ``commands`` / ``cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import TernaryHfError
from .hub.stock_push import install as install_stock_push_cards
from .integrations import remote_code
from .integrations.config import TernaryConfig
from .integrations.conversion import dequantize_model
from .integrations.int4_linear import Int4Linear
from .integrations.int8_linear import Int8Linear
from .integrations.modules import QuantizedEmbedding, TernaryLinear
from .integrations.quantizer import TernaryHfQuantizer
from .integrations.registration import register
from .quant.packing import pack_ternary, unpack_ternary
from .quant.ternarize import TernaryWeight, ternarize

__version__ = "0.1.0"

# Heavier entry points, imported on first use so `import ternary_hf` stays cheap.
_LAZY = {
    "quantize_folder": "ternary_hf.ptq",
    "QuantizeReport": "ternary_hf.ptq",
    "calibrate_model": "ternary_hf.ptq",
    "DistillConfig": "ternary_hf.train",
    "distill": "ternary_hf.train",
    "evaluate": "ternary_hf.evaluation",
    "SemanticIndex": "ternary_hf.search",
    "push_to_hub": "ternary_hf.hub",
}

__all__ = [
    "TernaryConfig",
    "TernaryHfError",
    "TernaryHfQuantizer",
    "TernaryLinear",
    "Int8Linear",
    "Int4Linear",
    "QuantizedEmbedding",
    "TernaryWeight",
    "ternarize",
    "pack_ternary",
    "unpack_ternary",
    "dequantize_model",
    "register",
    "remote_code",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ternary_hf' has no attribute {name!r}")


register()
# Stock `push_to_hub` of sentence-transformers and transformers publish the ternary model card too.
install_stock_push_cards()
