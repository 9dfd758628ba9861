"""Semantic search with FAISS over sentence-transformers embeddings, saved and reloaded as one folder.

Owns: :mod:`.index` (``SemanticIndex``: building, streaming, training), :mod:`.querying` (its search
methods), :mod:`.factory` (FAISS index strings, training sizes, search parameters), :mod:`.stores` (the
rescoring vectors and documents kept on disk), :mod:`.persist` (the folder format, atomic save, checked
load), :mod:`.encoding` (what the index asks of a model and of documents) and :mod:`.vectors` (float32
rows, normalisation, sign bits, :func:`exact_search`, recall). A new index kind goes in :mod:`.factory`.
Imports: :mod:`ternary_hf.utils`, :mod:`ternary_hf.errors`, numpy, tqdm and the optional ``faiss-cpu``.
"""

from .index import SemanticIndex
from .vectors import Hit, binarize, exact_search, normalize_embeddings, recall_at_k

__all__ = ["Hit", "SemanticIndex", "binarize", "exact_search", "normalize_embeddings", "recall_at_k"]
