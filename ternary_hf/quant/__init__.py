"""Pure ternary math: the 2-bit on-disk layout, the ternarization rules, the reference linear map and
row-wise embedding storage.

Owns: :mod:`.packing` (the one definition of the on-disk layout), :mod:`.ternarize` (float matrix ->
``scale * T``), :mod:`.functional` (the plain-torch ternary linear map and per-token int8 activations:
the reference every fast path is tested against), :mod:`.int8` / :mod:`.int4` (int8 / int4 weights of
``int8_modules`` / ``int4_modules``) and
:mod:`.rowwise` (int8 / int4 embedding rows).
Imports: torch, numpy and :mod:`ternary_hf.errors` only, so everything above can depend on it.
"""

from .functional import quantize_activations_int8, ternary_linear_reference
from .packing import PACKING_FORMAT, pack_ternary, packed_shape, unpack_ternary
from .rowwise import EMBEDDING_STORAGES, dequantize_rows, quantize_rows
from .ternarize import SCALE_GRANULARITIES, THRESHOLD_METHODS, TernaryWeight, dequantize_ternary, ternarize

__all__ = [
    "EMBEDDING_STORAGES",
    "PACKING_FORMAT",
    "SCALE_GRANULARITIES",
    "THRESHOLD_METHODS",
    "TernaryWeight",
    "dequantize_rows",
    "dequantize_ternary",
    "pack_ternary",
    "packed_shape",
    "quantize_activations_int8",
    "quantize_rows",
    "ternarize",
    "ternary_linear_reference",
    "unpack_ternary",
]
