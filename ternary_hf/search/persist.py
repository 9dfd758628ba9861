"""An index on disk: one folder, written whole or not at all, read back with every file checked.

Why: an index folder is the product of a long encoding run and is often rebuilt in place. It is built
aside (a staging folder in the target's parent, never /tmp) and swapped in whole, so a kill leaves the
old index answering; a folder that does not carry this format's name in its ``metadata.json`` is the
user's and is refused unless ``overwrite`` is given; and a damaged file (metadata, FAISS index, document
or rescoring file) is reported by name with what to do, not as a parser's traceback.

Folder layout (``format_version`` 1):

``metadata.json``
    ``format``, ``format_version``, ``model_name``, ``query_model_name``, ``model_quantization`` and
    ``query_model_quantization`` (the models' ``quantization_config``, e.g. ternary, or null),
    ``model_dim`` (dimension the document model produces), ``dim`` (dimension indexed, after
    truncation), ``truncate_dim``, ``normalize``, ``metric`` (``"cosine"`` or ``"dot"``),
    ``train_size``, ``index_factory`` (as given), ``faiss_factory`` (as passed to FAISS), ``binary``,
    ``rescore`` (``null`` or the dtype of the rescoring vectors), ``rescore_multiplier``,
    ``search_params``, ``ntotal``, ``store_texts``, ``faiss_version``.
``index.faiss``
    ``faiss.write_index`` output (``faiss.write_index_binary`` when ``binary`` is true).
``documents.jsonl``
    One ``{"id": ..., "text": ...}`` object per line, UTF-8; line ``i`` is FAISS row ``i``.
``rescore.f32`` / ``rescore.f16`` / ``rescore.i8`` (only when ``rescore`` is set)
    Raw little-endian row-major vectors of shape ``(ntotal, dim)``, already truncated and
    normalised; for int8 also ``rescore_scales.f32``, one float32 scale per row.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, MissingInputError, OutputExistsError
from ..utils.io import atomic_write_json, read_json, staged_folder
from .factory import faiss_reason
from .vectors import import_faiss

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "METADATA_FILE",
    "check_index_output",
    "index_metadata",
    "is_index_folder",
    "read_metadata",
    "staged_index_folder",
    "write_index_files",
]

FORMAT_NAME = "ternary-hf-semantic-index"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
INDEX_FILE = "index.faiss"
_REQUIRED = ("index_factory", "truncate_dim", "normalize", "rescore", "rescore_multiplier", "search_params",
             "store_texts", "model_name", "model_dim", "dim", "binary", "ntotal")
_REBUILD = "rebuild the index (`ternary-hf search build` or SemanticIndex.save)"


def _read_json_object(path: Path) -> dict[str, Any]:
    data = read_json(path, hint=f"the index folder is damaged: {_REBUILD}")
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} holds a JSON {type(data).__name__}, not an object; {_REBUILD}")
    return data


def is_index_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder whose ``metadata.json`` names this index format (any version)."""
    meta = Path(path) / METADATA_FILE
    if not meta.is_file():
        return False
    try:
        return _read_json_object(meta).get("format") == FORMAT_NAME
    except (InvalidInputError, OSError):
        return False


def read_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``metadata.json`` of an index folder.

    Raises:
        MissingInputError: no folder or no ``metadata.json``.
        InvalidInputError: not JSON, another format, a newer version, or required keys missing.
    """
    folder = Path(folder)
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        raise MissingInputError(
            f"{folder} is not a saved SemanticIndex folder (no {METADATA_FILE}); build one with "
            "SemanticIndex.save() or `ternary-hf search build`"
        )
    meta = _read_json_object(meta_path)
    version = meta.get("format_version", 0)
    if meta.get("format") != FORMAT_NAME or not isinstance(version, int) or version > FORMAT_VERSION:
        raise InvalidInputError(
            f"{meta_path} is format {meta.get('format')!r} version {version}; this "
            f"ternary_hf reads {FORMAT_NAME!r} up to version {FORMAT_VERSION}; upgrade ternary-hf"
        )
    missing = [key for key in _REQUIRED if key not in meta]
    if missing:
        raise InvalidInputError(f"{meta_path} lacks {', '.join(missing)}; the index folder is damaged: {_REBUILD}")
    return meta


def read_faiss_index(folder: Path, binary: bool, ntotal: int) -> Any:
    """``index.faiss`` of ``folder``, checked to hold ``ntotal`` vectors."""
    faiss = import_faiss()
    path = folder / INDEX_FILE
    if not path.is_file():
        raise MissingInputError(f"{path} is missing; the index folder is incomplete: {_REBUILD}")
    try:
        index = (faiss.read_index_binary if binary else faiss.read_index)(str(path))
    except RuntimeError as exc:
        raise InvalidInputError(
            f"{path} cannot be read by FAISS ({faiss_reason(exc)}); the file is damaged or not "
            f"{'a binary' if binary else 'a float'} index as {METADATA_FILE} says: {_REBUILD}"
        ) from None
    if index.ntotal != ntotal:
        raise InvalidInputError(
            f"{folder}: {INDEX_FILE} holds {index.ntotal} vectors but metadata says {ntotal}; "
            "the folder is inconsistent, rebuild it"
        )
    return index


def check_index_output(path: str | os.PathLike[str], overwrite: bool = False,
                       hint: str = "pass overwrite=True to replace it") -> Path:
    """Refuse an output path that is a file, or a non-empty folder that is not an index, before any work.

    An index folder (see :func:`is_index_folder`) may be rebuilt; an empty folder holds nothing to lose.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} is a file, not a folder; choose another output path for the index")
    if path.is_dir() and not overwrite and not is_index_folder(path) and any(path.iterdir()):
        raise OutputExistsError(
            f"{path} is a folder that is not a ternary-hf index (its {METADATA_FILE} does not name the format "
            f"{FORMAT_NAME!r}), so it is not replaced; choose a new output folder or {hint}"
        )
    return path


@contextlib.contextmanager
def staged_index_folder(path: str | os.PathLike[str], overwrite: bool = False,
                        hint: str = "pass overwrite=True to replace it") -> Iterator[Path]:
    """A staging folder beside ``path`` that replaces it whole when the block ends without an error."""
    target = check_index_output(path, overwrite, hint)
    with staged_folder(target, overwrite=True) as staging:
        yield staging


def write_index_files(index: Any, folder: Path) -> None:
    """Write a :class:`~ternary_hf.search.SemanticIndex`'s files into ``folder``, ``metadata.json`` last.

    Not atomic on its own: call it on a staging folder (:func:`staged_index_folder`).
    """
    faiss = import_faiss()
    folder = Path(folder)
    write = faiss.write_index_binary if index.binary else faiss.write_index
    write(index.index, str(folder / INDEX_FILE))
    for store in index.stores():
        for name in store.filenames:
            src, dst = Path(store.directory) / name, folder / name
            if src.exists() and not (dst.exists() and os.path.samefile(src, dst)):
                shutil.copyfile(src, dst)
    atomic_write_json(folder / METADATA_FILE, index.metadata())


def index_metadata(index: Any) -> dict[str, Any]:
    """What ``metadata.json`` records for a :class:`~ternary_hf.search.SemanticIndex` (the fields above)."""
    faiss = import_faiss()
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_name": index.model_name,
        "query_model_name": index.query_model_name,
        "model_quantization": index.model_quantization,
        "query_model_quantization": index.query_model_quantization,
        "model_dim": index.model_dim,
        "dim": index.dim,
        "truncate_dim": index.truncate_dim,
        "normalize": index.normalize,
        "metric": "cosine" if index.normalize else "dot",
        "index_factory": index.index_factory,
        "faiss_factory": index.faiss_factory,
        "binary": index.binary,
        "rescore": index.rescore,
        "rescore_multiplier": index.rescore_multiplier,
        "search_params": index.search_params,
        "train_size": index.train_size,
        "ntotal": index.ntotal,
        "store_texts": index.store_texts,
        "faiss_version": faiss.__version__,
    }
