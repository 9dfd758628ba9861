"""Distillation data (issue 28): token-budget batches, the user's texts mixed with the bundled corpus by a
share, bundled sources left out, and the checks that run before training."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_sentences

from ternary_hf.errors import InvalidInputError
from ternary_hf.train.config import DistillConfig
from ternary_hf.train.data import (
    IndexedTexts,
    TextCollate,
    batch_order,
    interleave_batches,
    load_texts,
    long_views,
    mix_texts,
)
from ternary_hf.train.text_distill import distill


def test_token_budget_batches_hold_fewer_rows_of_long_texts_and_stay_in_budget():
    lengths = [8, 16, 40, 100, 250] * 400
    batches = batch_order(lengths, batch_size=32, n_batches=300, seed=0, max_tokens=1024)
    assert batches == batch_order(lengths, batch_size=32, n_batches=300, seed=0, max_tokens=1024)
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 32 and len(batch) * longest <= 1024
    rows = {max(lengths[i] for i in b): len(b) for b in batches if len({lengths[i] for i in b}) == 1}
    assert rows[8] == 32 and rows[250] == 4  # the row cap binds for short texts, the budget for long ones
    plain = batch_order(lengths, batch_size=32, n_batches=300, seed=0)
    assert all(len(b) == 32 for b in plain) and plain != batches


def test_own_texts_make_their_share_of_the_mixed_corpus():
    bundled = [f"bundled {i}" for i in range(1000)]
    few = [f"own {i}" for i in range(30)]
    mixed = mix_texts(few, bundled, 0.25, seed=0)
    own = [t for t in mixed if t.startswith("own")]
    assert len(own) / len(mixed) == pytest.approx(0.25, abs=0.01)
    assert set(own) == set(few) and set(bundled) <= set(mixed)  # every text of each side, few ones repeated
    counts = {t: own.count(t) for t in few}
    assert max(counts.values()) - min(counts.values()) <= 1
    many = [f"own {i}" for i in range(3000)]
    mixed = mix_texts(many, bundled, 0.5, seed=0)  # more own text than its share: the bundled side repeats
    assert mixed[:3000] == many and len(mixed) == 6000 and set(mixed[3000:]) == set(bundled)
    assert mixed == mix_texts(many, bundled, 0.5, seed=0)
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        mix_texts(few, bundled, 1.0, seed=0)


def test_load_texts_mixes_a_users_file_with_the_bundled_corpus(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("\n".join(f"my own document number {i}" for i in range(50)) + "\n")
    assert load_texts(str(path)) == [f"my own document number {i}" for i in range(50)]  # share 1: replaces
    mixed = load_texts(str(path), share=0.5, exclude=["20ng", "r52"])
    own = sum(t.startswith("my own document") for t in mixed)
    assert own / len(mixed) == pytest.approx(0.5, abs=0.01) and len(mixed) > 10_000


def test_data_settings_are_checked_before_training(tiny_st_dir, tmp_path):
    with pytest.raises(InvalidInputError, match="data_share"):
        DistillConfig(data_share=0)
    with pytest.raises(InvalidInputError, match="mix"):
        DistillConfig(mix="wiki")
    with pytest.raises(InvalidInputError, match="none were given"):
        distill(tiny_st_dir, tmp_path / "a", config=DistillConfig(data_share=0.5), show_progress_bar=False)
    with pytest.raises(InvalidInputError, match="--data replaces"):
        distill(tiny_st_dir, tmp_path / "b", texts=tiny_sentences(10),
                config=DistillConfig(exclude_sources="20ng"), show_progress_bar=False)
    with pytest.raises(InvalidInputError, match="not a source of the 'broad' mix"):
        distill(tiny_st_dir, tmp_path / "c", config=DistillConfig(mix="broad", exclude_sources="django-docs"),
                show_progress_bar=False)
    assert not (tmp_path / "a.work").exists() and not (tmp_path / "c.work").exists()


def test_long_batches_take_their_share_of_the_steps_in_a_seeded_order():
    short = [[i] for i in range(1000)]
    long = [[10_000 + i] for i in range(1000)]
    order = interleave_batches(short, long, 0.25, seed=3)
    assert order == interleave_batches(short, long, 0.25, seed=3) != interleave_batches(short, long, 0.25, seed=4)
    picked_long = [b for b in order if b[0] >= 10_000]
    assert len(order) == 1000 and len(picked_long) == 250
    assert picked_long == long[:250] and [b for b in order if b[0] < 10_000] == short[:750]  # each side in order
    first_half = sum(b[0] >= 10_000 for b in order[:500])
    assert 90 <= first_half <= 160  # spread over the run, not bunched at one end
    assert len([b for b in interleave_batches(short, long[:10], 0.5, seed=0) if b[0] >= 10_000]) == 10


def test_long_views_are_cut_at_the_long_length_and_kept_apart_from_the_short_ones(minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    texts = ["a short one", " ".join(f"word{i}" for i in range(300)), "another short sentence here",
             " ".join(["news"] * 40)]
    long_texts, long_lengths = long_views(texts, tokenizer, max_length=16, long_length=64)
    assert long_texts == [texts[1], texts[3]] and long_lengths == [64, 42]
    collate = TextCollate(tokenizer, 16, long_length=64, long_from=len(texts))
    items = list(IndexedTexts(texts + long_texts))
    mixed = collate([items[0], items[4], items[1]])  # a short text, a long view, a short view of a long text
    assert mixed["attention_mask"].sum(1).tolist() == [5, 64, 16] and mixed["index"].tolist() == [0, 4, 1]
    assert mixed["input_ids"].shape == (3, 64)
    plain = TextCollate(tokenizer, 16)([items[0], items[1]])
    assert torch.equal(mixed["input_ids"][[0, 2], :16], plain["input_ids"])  # short views as without long ones
    assert mixed["input_ids"][1, 63] == tokenizer.sep_token_id  # cut like any truncation: [SEP] kept


def test_a_run_with_long_views_trains_on_both_cuts(tiny_st_dir, tmp_path):
    from transformers import AutoTokenizer

    from ternary_hf.train.text_distill import _text_batches

    tokenizer = AutoTokenizer.from_pretrained(tiny_st_dir)
    corpus = tiny_sentences(40) + [" ".join(tiny_sentences(12, seed=s)) for s in range(10)]
    cfg = DistillConfig(max_steps=40, batch_size=4, max_length=16, long_length=60, long_share=0.3)
    batches = list(_text_batches(corpus, tokenizer, cfg, processes=1, long_length=cfg.long_views_length(64)))
    long = [b for b in batches if int(b["index"].min()) >= len(corpus)]
    assert len(batches) == 40 and len(long) == 12
    assert all(b["input_ids"].shape[1] <= 16 for b in batches if int(b["index"].max()) < len(corpus))
    assert all(16 < b["input_ids"].shape[1] <= 60 and b["input_ids"].numel() <= 4 * 16 for b in long)
    result = distill(tiny_st_dir, tmp_path / "out", texts=corpus, config=DistillConfig(
        max_steps=6, batch_size=4, max_length=16, long_length=60, long_share=0.5, save_every=3),
        show_progress_bar=False)
    assert result.steps == 6
    with pytest.raises(InvalidInputError, match="long_length=16 must exceed max_length=16"):
        DistillConfig(max_length=16, long_length=16)
    with pytest.raises(InvalidInputError, match="long_share"):
        DistillConfig(long_length=256, long_share=1.0)


def test_long_views_default_to_the_teachers_length_and_switch_off_with_zero():
    assert DistillConfig().long_views_length(256) == 256  # the teacher's max_seq_length
    assert DistillConfig(long_length=128).long_views_length(256) == 128
    assert DistillConfig(long_length=0).long_views_length(256) == 0
    assert DistillConfig(max_length=256).long_views_length(256) == 0  # nothing beyond --max-length
    assert DistillConfig().long_views_length(None) == 0
