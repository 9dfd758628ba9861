"""The ternary model card for the libraries' own saves and pushes, not only for ``ternary-hf push``.

Why: ``SentenceTransformer(ternary_dir).push_to_hub(repo)`` and transformers' ``model.push_to_hub(repo)``
are what most users call, and each writes a README of its own *after* ``save_pretrained`` has run and
right before uploading: sentence-transformers the card the model was loaded with (often the float base
model's) or a generated one; transformers the repo's existing card or a generic one. Neither format has
``base_model_relation``, so the Hub would list the ternary model as unrelated to its base. A card written
at ``save_pretrained`` time is overwritten, so :func:`install` hooks the two points where the library's
card is final and the upload not yet made:

* sentence-transformers: ``SentenceTransformer.save`` (called by ``save``, ``save_pretrained`` and
  ``push_to_hub``): when it wrote a card, ours replaces it. When it was told not to (``push_to_hub`` keeps
  a repo's existing README unless ``replace_model_card=True``), nothing is written, as it would do.
* transformers: ``PreTrainedModel._upload_modified_files``, the one step between the library writing
  README.md into the folder to upload and the upload itself (``push_to_hub`` and
  ``save_pretrained(push_to_hub=True)``); a hand-written README keeps its text and gains the metadata.

Only folders whose ``config.json`` holds a ternary ``quantization_config`` are touched. The base model
comes from where the model was loaded from (``name_or_path``): a ternary folder's own records (its card,
``ternary_quantize.json``, ``distillation.json``), or the float model itself when it was quantized on load.
sentence-transformers is patched when it is imported (a one-shot import hook), so installing costs no
import of it.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from ..utils.io import read_json
from .model_card import is_ternary_config, write_model_card

__all__ = ["install", "installed", "write_saved_card"]

logger = logging.getLogger(__name__)
_FLAG = "_ternary_hf_card"


def _ternary_folder(folder: Path) -> bool:
    config = read_json(folder / "config.json", missing=None, invalid=None)
    return isinstance(config, dict) and is_ternary_config(config)


def write_saved_card(folder: str | os.PathLike[str], repo_id: str | None = None,
                     source: str | os.PathLike[str] | None = None) -> Path | None:
    """Write the ternary card into a folder a library just saved; None (nothing written) if not ternary.

    Args:
        folder: the saved folder (``config.json`` and weights; sentence-transformers files if any).
        repo_id: the repo the card is for (usage snippets); defaults to the folder's name.
        source: where the model was loaded from (its ``name_or_path``): a ternary folder lends its
            records; a float folder or Hub id is the base model (the model was quantized on load).
    """
    folder = Path(folder)
    if not _ternary_folder(folder):
        return None
    repo_id = repo_id or folder.name
    src = Path(source).expanduser() if source is not None else None
    if src is not None and src.is_dir() and src.resolve() != folder.resolve():
        if _ternary_folder(src):
            return write_model_card(folder, repo_id, records_from=src)
        return write_model_card(folder, repo_id, base_model=src)
    is_hub_id = src is not None and not src.is_dir() and str(source).count("/") == 1
    return write_model_card(folder, repo_id, base_model=str(source) if is_hub_id else None)


# --------------------------------------------------------------------------------------------- the hooks


def _wrap(owner: type, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    original = getattr(owner, name, None)
    if original is None:
        logger.warning("ternary-hf: %s.%s not found; stock pushes keep the library's model card", owner.__name__, name)
        return
    if getattr(original, _FLAG, False):
        return
    wrapper = functools.wraps(original)(make(original))
    setattr(wrapper, _FLAG, True)
    setattr(owner, name, wrapper)


def _upload_with_card(original: Callable[..., Any]) -> Callable[..., Any]:
    def _upload_modified_files(self: Any, working_dir: Any, repo_id: str, *args: Any, **kwargs: Any) -> Any:
        write_saved_card(working_dir, repo_id, getattr(self, "name_or_path", None))
        return original(self, working_dir, repo_id, *args, **kwargs)

    return _upload_modified_files


def _st_source(model: Any) -> str | None:
    inner = getattr(model, "transformers_model", None)
    if inner is None:
        inner = getattr(next(iter(model), None), "auto_model", None)
    return getattr(inner, "name_or_path", None)


def _save_with_card(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    def save(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        path, wanted = bound.arguments.get("path"), bound.arguments.get("create_model_card", True)
        if path is not None and wanted:
            card_data = getattr(self, "model_card_data", None)
            repo_id = getattr(card_data, "model_id", None) or bound.arguments.get("model_name")
            write_saved_card(path, repo_id if repo_id and not os.path.isdir(repo_id) else None, _st_source(self))
        return result

    return save


def _patch_sentence_transformers(module: ModuleType) -> None:
    cls = getattr(module, "SentenceTransformer", None)
    if cls is not None:
        _wrap(cls, "save", _save_with_card)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` once, right after the module ``name`` is first imported."""

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one shot; the other finders locate the module
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is not None and hasattr(loader, "exec_module"):
            exec_module = loader.exec_module

            def exec_then_patch(module: ModuleType) -> None:
                exec_module(module)
                self.callback(module)

            loader.exec_module = exec_then_patch
        return spec


def install() -> None:
    """Make the stock saves and pushes of ternary models write the ternary card (idempotent)."""
    from transformers import PreTrainedModel

    _wrap(PreTrainedModel, "_upload_modified_files", _upload_with_card)
    if "sentence_transformers" in sys.modules:
        _patch_sentence_transformers(sys.modules["sentence_transformers"])
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport("sentence_transformers", _patch_sentence_transformers))


def installed() -> bool:
    """Whether :func:`install` has hooked transformers (and sentence-transformers, once it is imported)."""
    from transformers import PreTrainedModel

    hooked = getattr(PreTrainedModel._upload_modified_files, _FLAG, False)
    module = sys.modules.get("sentence_transformers")
    if module is None:
        return hooked and any(isinstance(f, _AfterImport) for f in sys.meta_path)
    return hooked and getattr(module.SentenceTransformer.save, _FLAG, False)
