"""ternary_hf.data.registry: one fetcher for PyPI and Debian releases, on small fake packages.

Nothing here reaches a registry: a fake ``.deb`` (an ``ar`` archive with ``data.tar.xz``, as dpkg-deb
builds them) is served by a local HTTP server standing in for the Debian mirror apt is configured for,
or dropped into ``<cache>/downloads``.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from ternary_hf.data import registry
from ternary_hf.errors import ChecksumError, ResourceUnavailableError

GLOSS = b"dog: a domesticated carnivore\ncat: a small feline\n"
POOL = "pool/main/f/fake-dict/fake-dict_1.0-1_all.deb"


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n"
        out.write(header.encode("ascii") + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _fake_deb() -> bytes:
    """A .deb as dpkg-deb lays it out: debian-binary, control.tar.xz, data.tar.xz (paths start with ./)."""
    data = _tar_xz({"./usr/share/dictd/fake.txt": GLOSS, "./usr/share/doc/fake-dict/copyright": b"public domain"})
    return _ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _tar_xz({"./control": b"Package: fake-dict\n"})),
                ("data.tar.xz", data)])


DEB = _fake_deb()
RELEASE = registry.Release("deb", "fake-dict", "1.0-1", "fake-dict_1.0-1_all.deb",
                           hashlib.sha256(DEB).hexdigest(), len(DEB), POOL)
BUNDLE = registry.Bundle("fake-dict-1.0-1", RELEASE,
                         {"fake.txt": (("usr/share/dictd/fake.txt",), hashlib.sha256(GLOSS).hexdigest())})


@pytest.fixture
def no_apt(monkeypatch, tmp_path) -> Path:
    """No apt-get on PATH and an apt configuration with no mirror; returns that configuration folder."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    config = tmp_path / "apt"
    (config / "sources.list.d").mkdir(parents=True)
    monkeypatch.setattr(registry, "APT_CONFIG_DIR", config)
    return config


@pytest.fixture
def mirror(no_apt, tmp_path):
    """A local HTTP server holding the fake .deb at its pool path, named in apt's sources (deb822 format)."""
    root = tmp_path / "mirror"
    (root / POOL).parent.mkdir(parents=True)
    (root / POOL).write_bytes(DEB)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/debian"
    (root / "debian").symlink_to(root)  # the pool lives below the suite root, as on a real mirror
    (no_apt / "sources.list.d" / "debian.sources").write_text(
        f"Types: deb\nURIs: {url}\nSuites: bookworm\nComponents: main\n")
    yield root
    server.shutdown()
    server.server_close()


def test_a_deb_member_is_read_from_data_tar(tmp_path):
    deb = tmp_path / RELEASE.filename
    deb.write_bytes(DEB)
    assert registry.read_member(deb, ("usr/share/dictd/fake.txt",)) == GLOSS
    with pytest.raises(KeyError):
        registry.read_member(deb, ("usr/share/dictd/missing.txt",))


def test_apt_mirrors_reads_both_source_formats(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("# comment\ndeb [arch=amd64] http://a.example/debian bookworm main\n"
                                           "deb-src http://src.example/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "x.sources").write_text("Types: deb\nURIs: http://b.example/debian/ "
                                                           "http://a.example/debian\nSuites: bookworm\n")
    assert registry.apt_mirrors(tmp_path) == ["http://a.example/debian", "http://b.example/debian"]


def test_a_deb_is_fetched_from_the_configured_mirror_and_cached_whole(mirror, tmp_path):
    folder = registry.ensure_bundle(BUNDLE, tmp_path / "cache")
    assert folder == tmp_path / "cache" / BUNDLE.key
    assert (folder / "fake.txt").read_bytes() == GLOSS
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [BUNDLE.key]  # no temp folders left
    (mirror / POOL).unlink()  # cached: no network needed any more
    assert registry.ensure_bundle(BUNDLE, tmp_path / "cache") == folder


def test_a_tampered_mirror_file_is_refused_and_nothing_is_cached(mirror, tmp_path):
    (mirror / POOL).write_bytes(DEB[:-3] + b"xyz")
    with pytest.raises(ChecksumError, match="expected " + RELEASE.sha256[:12]):
        registry.ensure_bundle(BUNDLE, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_offline_error_names_apt_get_download_and_the_downloads_folder(no_apt, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ResourceUnavailableError) as err:
        registry.ensure_bundle(BUNDLE, cache)
    message = str(err.value)
    assert "apt-get download fake-dict=1.0-1" in message and POOL in message
    assert f"copy {RELEASE.filename} into {cache / 'downloads'}" in message
    assert not (cache / BUNDLE.key).exists()


def test_a_deb_dropped_into_downloads_is_used_offline(no_apt, tmp_path):
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / RELEASE.filename).write_bytes(DEB)
    assert (registry.ensure_bundle(BUNDLE, cache) / "fake.txt").read_bytes() == GLOSS


def test_a_damaged_cache_is_fetched_again(mirror, tmp_path):
    folder = registry.ensure_bundle(BUNDLE, tmp_path / "cache")
    (folder / "fake.txt").write_bytes(b"garbage")
    assert (registry.ensure_bundle(BUNDLE, tmp_path / "cache") / "fake.txt").read_bytes() == GLOSS


def test_release_commands_and_kinds():
    wheel = registry.Release("wheel", "pkg", "1.0", "pkg-1.0-py3-none-any.whl", "0" * 64)
    assert wheel.how_to_get() == "pip download --no-deps --only-binary=:all: pkg==1.0 -d DIR"
    sdist = registry.Release("sdist", "pkg", "1.0", "pkg-1.0.tar.gz", "0" * 64)
    assert "--no-binary=:all:" in sdist.pip_command("/x") and sdist.requirement == "pkg==1.0"
    assert RELEASE.requirement == "fake-dict=1.0-1"
    with pytest.raises(ValueError, match="pool path"):
        registry.Release("deb", "x", "1", "x_1_all.deb", "0" * 64)
    with pytest.raises(ValueError, match="kind"):
        registry.Release("rpm", "x", "1", "x.rpm", "0" * 64)
