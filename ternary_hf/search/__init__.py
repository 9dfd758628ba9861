"""Semantic search with FAISS over sentence-transformers embeddings, saved and reloaded as one folder.

Owns: :mod:`.index` (``SemanticIndex``: index factory strings, binary codes with rescoring, the document
store, save / load).
Imports: :mod:`ternary_hf.utils`, :mod:`ternary_hf.errors` and the optional ``faiss-cpu``.
"""

from .index import Hit, SemanticIndex, binarize, normalize_embeddings, recall_at_k

__all__ = ["Hit", "SemanticIndex", "binarize", "normalize_embeddings", "recall_at_k"]
