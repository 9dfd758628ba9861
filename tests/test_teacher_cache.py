"""Teacher-output cache: what it serves, its memory cap, exact refill on resume, and the trainer using it."""

from __future__ import annotations

import json
import shutil

import torch
from conftest import tiny_sentences
from safetensors.torch import load_file

from ternary_hf.distill import DistillConfig, distill
from ternary_hf.train.teacher_cache import TeacherCache, cache_supported

FAST = dict(batch_size=8, save_every=3, log_every=1, num_threads=1)


def _batch(index, lengths, hidden=4, left_padded=False, seed=0):
    torch.manual_seed(seed)
    length = max(lengths)
    mask = torch.zeros(len(lengths), length, dtype=torch.int64)
    for row, n in enumerate(lengths):
        if left_padded:
            mask[row, length - n:] = 1
        else:
            mask[row, :n] = 1
    return torch.tensor(index), mask, torch.randn(len(lengths), length, hidden) * 3


def test_a_batch_is_served_only_when_every_text_is_cached_with_real_tokens_in_place():
    cache = TeacherCache(max_bytes=10**6)
    index, mask, hidden = _batch([5, 9], [3, 5])
    assert cache.lookup(index, mask) is None
    cache.add(index, mask, hidden)
    assert len(cache) == 2 and 5 in cache and cache.nbytes == (3 + 5) * 4 * 2
    # the same texts in another batch: padded to a longer length, in another order
    other_mask = torch.zeros(3, 7, dtype=torch.int64)
    other_mask[0, :5], other_mask[1, :3], other_mask[2, :4] = 1, 1, 1
    assert cache.lookup(torch.tensor([9, 5, 11]), other_mask) is None  # 11 was never seen
    served = cache.lookup(torch.tensor([9, 5]), other_mask[:2])
    assert served.shape == (2, 7, 4) and served.dtype == torch.float32
    assert torch.equal(served[0, :5], hidden[1, :5].half().float())
    assert torch.equal(served[1, :3], hidden[0, :3].half().float())
    assert torch.count_nonzero(served[0, 5:]) == 0 and torch.count_nonzero(served[1, 3:]) == 0
    assert (cache.hits, cache.misses) == (1, 2)


def test_left_padding_and_values_beyond_float16_are_kept_exactly_where_they_were():
    cache = TeacherCache(max_bytes=10**6)
    index, mask, hidden = _batch([0, 1], [2, 4], left_padded=True)
    hidden[0, 3, 1] = 1e6  # overflows float16: that text is kept in float32
    cache.add(index, mask, hidden)
    served = cache.lookup(index, mask)
    assert torch.equal(served[0, 2:], hidden[0, 2:]) and served[0, 3, 1] == 1e6
    assert torch.equal(served[1], hidden[1].half().float())
    assert torch.count_nonzero(served[0, :2]) == 0


def test_the_memory_cap_stops_adding_texts_and_their_batches_run_the_teacher():
    index, mask, hidden = _batch([0, 1, 2], [4, 4, 4])
    cache = TeacherCache(max_bytes=2 * 4 * 4 * 2)  # room for two texts
    cache.add(index, mask, hidden)
    assert len(cache) == 2 and cache.nbytes <= cache.max_bytes
    assert cache.lookup(index, mask) is None and cache.lookup(index[:2], mask[:2]) is not None


def test_replay_refills_the_cache_as_the_run_filled_it():
    calls = []

    def teacher(input_ids, attention_mask):
        calls.append(input_ids.shape)
        return type("Out", (), {"last_hidden_state": input_ids[..., None].float().expand(-1, -1, 3) * 0.5})()

    batches = []
    for index, lengths in ([0, 1], [2, 3]), ([1, 2], [3, 2]), ([0, 2], [2, 2]), ([3, 4], [2, 2]):
        _, mask, _ = _batch(index, lengths)
        batches.append({"index": torch.tensor(index), "attention_mask": mask,
                        "input_ids": torch.arange(mask.numel()).reshape(mask.shape) + 10 * len(batches)})
    live = TeacherCache(10**6)
    for batch in batches:  # what the trainer does
        if live.lookup(batch["index"], batch["attention_mask"]) is None:
            live.add(batch["index"], batch["attention_mask"],
                     teacher(batch["input_ids"], batch["attention_mask"]).last_hidden_state)
    calls.clear()
    rebuilt = TeacherCache(10**6)
    assert rebuilt.replay(batches, teacher) == 3 == len(calls)  # the third batch was all cached: skipped
    for i in range(5):
        assert torch.equal(rebuilt._rows[i], live._rows[i])
    assert rebuilt.replay(batches, teacher) == 0  # everything cached: no teacher forward


def test_the_journal_gives_back_the_rows_up_to_the_checkpoint_and_drops_later_ones(tmp_path):
    live = TeacherCache(10**6)
    other = TeacherCache(10**6)
    assert live.flush(tmp_path, 0) is not None  # nothing cached yet: an empty journal still marks step 0
    sizes = {}
    for step, (index, lengths) in zip((2, 4, 6), (([0, 1], [2, 3]), ([2, 3], [4, 1]), ([4], [5])), strict=True):
        live.add(*_batch(index, lengths, seed=step))
        assert live.flush(tmp_path, step) == tmp_path / f"p0-{step}.safetensors"
        sizes[step] = (len(live), live.nbytes)
    assert live.flush(tmp_path, 6) is None  # the second save of a step (time budget): the file is kept
    other.add(*_batch([7], [2], seed=9))
    other.flush(tmp_path, 6, process=1)

    resumed = TeacherCache(10**6)
    assert resumed.restore(tmp_path, 4) == (4, True)  # texts 0-3; the step-6 journal had no checkpoint
    assert (len(resumed), resumed.nbytes) == sizes[4]
    for key in range(4):
        assert torch.equal(resumed._rows[key], live._rows[key])
    assert not (tmp_path / "p0-6.safetensors").exists() and (tmp_path / "p1-6.safetensors").exists()
    assert TeacherCache(10**6).restore(tmp_path, 5) == (4, False)  # no journal of step 5: replay the rest
    assert TeacherCache(10**6).restore(tmp_path / "missing", 4) == (0, False)


def test_the_cache_is_off_for_losses_that_need_more_than_the_last_hidden_state():
    assert cache_supported(DistillConfig()) is None
    assert cache_supported(DistillConfig(bank_similarity=1.0)) is None
    for kwargs in ({"layer_mse": 1.0}, {"attention_kl": 1.0}, {"teacher_forcing": 0.2}, {"mask_padding": False}):
        assert cache_supported(DistillConfig(**kwargs)) is not None, kwargs


def test_later_epochs_skip_the_teacher_and_a_resumed_run_ends_with_the_same_weights(tiny_st_dir, tmp_path,
                                                                                    monkeypatch):
    real_replay = TeacherCache.replay
    texts = tiny_sentences(24)  # 3 batches of 8: steps 4-6 are the second epoch
    cfg = DistillConfig(max_steps=6, **FAST)
    full = distill(tiny_st_dir, tmp_path / "full", texts=texts, config=cfg, show_progress_bar=False)
    info = json.loads((tmp_path / "full" / "distillation.json").read_text())
    assert info["teacher_cache"]["texts"] == 24
    assert (info["teacher_cache"]["batches_served"], info["teacher_cache"]["teacher_forwards"]) == (3, 3)

    # Resumed from the journal (no teacher forward to refill), and from replaying the batches when the
    # journal is gone (a run checkpointed before journals existed): the same weights either way.
    replays = []
    monkeypatch.setattr(TeacherCache, "replay", lambda self, *a, **k: replays.append(1) or real_replay(self, *a, **k))
    for name, keep_journal in (("resumed", True), ("replayed", False)):
        distill(tiny_st_dir, tmp_path / name, texts=texts, config=cfg, stop_after=4, show_progress_bar=False)
        journal = tmp_path / f"{name}.work" / "teacher_cache"
        assert sorted(p.name for p in journal.iterdir()) == ["p0-3.safetensors", "p0-4.safetensors"]
        if not keep_journal:
            shutil.rmtree(journal)
        replays.clear()
        distill(tiny_st_dir, tmp_path / name, texts=texts, config=cfg, show_progress_bar=False)
        assert len(replays) == (0 if keep_journal else 1)
        assert not journal.exists()  # a finished run frees the disk
        a = load_file(str(tmp_path / "full" / "model.safetensors"))
        b = load_file(str(tmp_path / name / "model.safetensors"))
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)

    # Without the cache the first epoch is the same computation; later steps differ only by the
    # float16 rounding of the cached targets.
    uncached = distill(tiny_st_dir, tmp_path / "uncached", texts=texts,
                       config=DistillConfig(max_steps=6, teacher_cache_gb=0, **FAST), show_progress_bar=False)
    assert json.loads((tmp_path / "uncached" / "distillation.json").read_text())["teacher_cache"] is None
    assert [r["loss"] for r in uncached.losses[:3]] == [r["loss"] for r in full.losses[:3]]
    for cached_row, plain_row in zip(full.losses[3:], uncached.losses[3:], strict=True):
        assert abs(cached_row["loss"] - plain_row["loss"]) <= 1e-3 * plain_row["loss"]


def test_the_refill_after_a_resume_is_not_counted_as_training_time(tiny_st_dir, tmp_path, monkeypatch):
    # An uninterrupted run never spends the refill, so the time budget (and the time-based learning
    # rate schedule) must not see it: make the refill take 3 s and check the session's training clock.
    import time

    import ternary_hf.train.text_distill as distill_module

    texts = tiny_sentences(24)
    cfg = DistillConfig(max_steps=6, **FAST)
    distill(tiny_st_dir, tmp_path / "out", texts=texts, config=cfg, stop_after=4, show_progress_bar=False)
    refill = distill_module.replay_teacher_cache
    calls = []

    def slow_refill(*args, **kwargs):
        calls.append(1)
        time.sleep(3.0)
        return refill(*args, **kwargs)

    monkeypatch.setattr(distill_module, "replay_teacher_cache", slow_refill)
    started = time.time()
    distill(tiny_st_dir, tmp_path / "out", texts=texts, config=cfg, show_progress_bar=False)
    wall = time.time() - started
    info = json.loads((tmp_path / "out" / "distillation.json").read_text())
    assert calls == [1] and wall >= 3.0
    assert info["steps"] == 6 and info["session_seconds"] < wall - 3.0
