"""Distillation data (issue 28): token-budget batches, the user's texts mixed with the bundled corpus by a
share, bundled sources left out, and the checks that run before training."""

from __future__ import annotations

import pytest
from conftest import tiny_sentences

from ternary_hf.errors import InvalidInputError
from ternary_hf.train.config import DistillConfig
from ternary_hf.train.data import batch_order, load_texts, mix_texts
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
