"""Post-training ternarization: one call from a float folder to a saved ternary one, with or without data.

Owns: :mod:`.quantize` (``quantize_folder``: load, ternarize, save, report size and teacher agreement) and
:mod:`.calibration` (GPTQ on the ternary grid: each layer keeps its outputs on real texts).
Imports: :mod:`ternary_hf.integrations`, :mod:`ternary_hf.quant`, :mod:`ternary_hf.data` and
:mod:`ternary_hf.utils`.
"""

from .calibration import CalibrationReport, calibrate_model, gptq_ternarize
from .quantize import QuantizeReport, quantize_folder

__all__ = ["CalibrationReport", "QuantizeReport", "calibrate_model", "gptq_ternarize", "quantize_folder"]
