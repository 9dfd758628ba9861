"""Distillation trainer on a tiny BERT: losses, data, finalization equivalence, exact resume, 2-process gloo."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_sentences
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from ternary_hf import Int4Linear, Int8Linear, TernaryConfig, TernaryLinear
from ternary_hf.train.config import DistillConfig
from ternary_hf.train.data import load_texts
from ternary_hf.train.finalize import finalize
from ternary_hf.train.losses import TeacherBank, distillation_loss, mean_pool
from ternary_hf.train.student import FakeTernaryLinear, build_student, to_float_model
from ternary_hf.train.text_distill import distill

FAST = dict(batch_size=8, save_every=3, log_every=1, num_threads=1)


def test_student_trains_through_the_ternary_forward_with_straight_through_gradients(tiny_model_dirs):
    from transformers import AutoModel

    teacher = AutoModel.from_pretrained(tiny_model_dirs["bert"])
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_student(teacher, TernaryConfig())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()), "teacher must stay untouched"
    layer = student.encoder.layer[0].intermediate.dense
    assert isinstance(layer, FakeTernaryLinear)
    x = torch.randn(4, layer.in_features, requires_grad=True)
    out = layer(x)
    # forward value: the int8/ternary math of inference
    inference = TernaryLinear.from_linear(layer.to_linear(), "calibrated", "channel", quantize_activations=True)
    assert torch.allclose(out, inference(x.detach()), atol=1e-5)
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert set(to_float_model(student).state_dict()) == set(teacher.state_dict())


def _tiny_student_and_teacher_outputs(model_dir, batch: int, length: int, pad_from: int, **forward_kw):
    """Student and teacher outputs on one random batch whose second row is padded from ``pad_from``."""
    from transformers import AutoModel

    attn = {"attn_implementation": "eager"} if forward_kw.get("output_attentions") else {}
    teacher = AutoModel.from_pretrained(model_dir, **attn).eval()
    student = build_student(teacher, TernaryConfig()).eval()
    ids = torch.randint(5, 100, (batch, length))
    mask = torch.ones_like(ids)
    mask[1, pad_from:] = 0
    kw = dict(input_ids=ids, attention_mask=mask, **forward_kw)
    return student(**kw), teacher(**kw), mask


def test_loss_terms_switch_on_and_off(tiny_model_dirs):
    s_out, t_out, mask = _tiny_student_and_teacher_outputs(tiny_model_dirs["bert"], 4, 9, 5, output_hidden_states=True)
    only = {"hidden_mse": 0, "pooled_cosine": 0, "pooled_mse": 0, "layer_mse": 0, "similarity": 0}
    for name in only:
        cfg = DistillConfig(**dict(only, **{name: 1.0}))
        loss, parts = distillation_loss(s_out, t_out, mask, cfg)
        assert set(parts) == {name} and torch.isfinite(loss) and float(loss) > 0
    loss, parts = distillation_loss(s_out, t_out, mask, DistillConfig(similarity_mode="kl"))
    assert set(parts) == {"hidden_mse", "pooled_cosine", "similarity"}
    # the teacher against itself has zero loss
    zero, _ = distillation_loss(t_out, t_out, mask, DistillConfig(layer_mse=1.0, pooled_mse=1.0))
    assert float(zero) == pytest.approx(0.0, abs=1e-6)  # float32 rounding of 1 - cos
    # masking: padding positions do not count
    masked, _ = distillation_loss(s_out, t_out, mask, DistillConfig(**dict(only, hidden_mse=1.0)))
    unmasked, _ = distillation_loss(s_out, t_out, mask, DistillConfig(**dict(only, hidden_mse=1.0),
                                                                      mask_padding=False))
    assert float(masked) != float(unmasked)


def test_bank_similarity_compares_similarities_to_earlier_teacher_embeddings():
    torch.manual_seed(0)
    hidden_t = torch.randn(4, 6, 16)
    hidden_s = hidden_t + 0.3 * torch.randn(4, 6, 16)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[2, 4:] = 0
    out = lambda h: type("Out", (), {"last_hidden_state": h})()  # noqa: E731
    cfg = DistillConfig(hidden_mse=0, pooled_cosine=0, similarity=0, bank_similarity=1.0, bank_size=5)
    bank = TeacherBank(cfg.bank_size)
    loss, parts = distillation_loss(out(hidden_s), out(hidden_t), mask, cfg, bank)
    assert parts == {} and float(loss) == 0.0  # an empty bank: nothing to compare with yet
    hidden_s.requires_grad_(True)
    distillation_loss(out(hidden_s), out(hidden_t), mask, cfg, bank)[0].backward()  # still a training step
    hidden_s = hidden_s.detach()
    reference = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    bank.push(reference)
    loss, parts = distillation_loss(out(hidden_s), out(hidden_t), mask, cfg, bank)
    s = torch.nn.functional.normalize(mean_pool(hidden_s, mask), dim=-1)
    t = torch.nn.functional.normalize(mean_pool(hidden_t, mask), dim=-1)
    assert float(loss) == pytest.approx(float(((s @ reference.t() - t @ reference.t()) ** 2).mean()), rel=1e-6)
    same, _ = distillation_loss(out(hidden_t), out(hidden_t), mask, cfg, bank)
    assert float(same) == 0.0
    # FIFO: newest first, capped at bank_size; the state round-trips
    newer = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    bank.push(newer)
    assert len(bank) == 5 and torch.equal(bank.embeddings[:4], newer) and torch.equal(bank.embeddings[4], reference[0])
    other = TeacherBank(5)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.embeddings, bank.embeddings)
    with pytest.raises(ValueError, match="bank_size"):
        DistillConfig(bank_size=0)


def test_attention_kl_matches_the_teachers_attention_rows_of_real_tokens(tiny_model_dirs):
    s_out, t_out, mask = _tiny_student_and_teacher_outputs(tiny_model_dirs["bert"], 3, 7, 4, output_attentions=True)
    cfg = DistillConfig(hidden_mse=0, pooled_cosine=0, similarity=0, attention_kl=1.0)
    loss, parts = distillation_loss(s_out, t_out, mask, cfg)
    assert set(parts) == {"attention_kl"} and float(loss.detach()) > 0
    # by hand: sum_j t log(t/s) per query row, mean over layers, heads and real query rows
    expected = []
    for s, t in zip(s_out.attentions, t_out.attentions, strict=True):
        kl = torch.where(t > 0, t * (t.log() - s.log()), 0.0).sum(-1)
        expected.append(torch.cat([kl[b, :, : int(mask[b].sum())].flatten() for b in range(3)]).mean())
    # (float32 cancellation: the rows are near-uniform in a tiny random model, so KL ~1e-5 of terms ~1)
    assert float(loss) == pytest.approx(float(torch.stack(expected).mean()), rel=1e-3)
    same, _ = distillation_loss(t_out, t_out, mask, cfg)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    # a padded query row's attention does not count
    moved = [a.clone() for a in s_out.attentions]
    moved[0][1, :, 5] = moved[0][1, :, 5].flip(-1)
    moved_out = type("Out", (), {"attentions": moved, "last_hidden_state": s_out.last_hidden_state})()
    assert float(distillation_loss(moved_out, t_out, mask, cfg)[0]) == pytest.approx(float(loss), rel=1e-6)
    with pytest.raises(ValueError, match="attention_kl"):
        DistillConfig(attention_kl=-1.0)


def test_distill_with_attention_kl_trains_and_finalizes(tiny_st_dir, tmp_path):
    out = tmp_path / "out"
    result = distill(tiny_st_dir, out, texts=tiny_sentences(16), config=DistillConfig(
        max_steps=2, attention_kl=1.0, **FAST), show_progress_bar=False)
    assert result.steps == 2 and all(row["attention_kl"] > 0 for row in result.losses)
    assert SentenceTransformer(str(out), device="cpu").encode(["a sentence"]).shape[0] == 1


def test_bad_config_and_data_errors(tmp_path):
    with pytest.raises(ValueError, match="every loss weight is 0"):
        DistillConfig(hidden_mse=0, pooled_cosine=0, similarity=0)
    with pytest.raises(ValueError, match="similarity_mode"):
        DistillConfig(similarity_mode="cosine")
    with pytest.raises(ValueError, match="max_steps"):
        DistillConfig(max_steps=0)
    with pytest.raises(FileNotFoundError):
        load_texts(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="empty"):
        load_texts(str(tmp_path / "empty.txt"))
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="no 'text' field"):
        load_texts(str(tmp_path / "d.jsonl"))
    assert load_texts(str(tmp_path / "d.jsonl"), text_field="body") == ["x"]
    (tmp_path / "t.txt").write_text("one\ntwo\n\nthree\n")
    assert load_texts(str(tmp_path / "t.txt")) == ["one", "two", "three"]
    assert sorted(load_texts(["a", "b", "c"], limit=2, seed=1)) == sorted(load_texts(["a", "b", "c"], limit=2, seed=1))


@pytest.mark.parametrize("config", [TernaryConfig(), TernaryConfig(int4_modules=["encoder.layer.0"],
                                                                   int8_modules=["encoder.layer.1.output"])],
                         ids=["ternary", "int4-int8-quantization-aware"])
def test_finalized_model_matches_the_trained_student(tiny_st_dir, tmp_path, config):
    teacher = SentenceTransformer(tiny_st_dir, device="cpu")
    student = build_student(teacher[0].auto_model, config, quantized_int_layers=True)
    torch.manual_seed(3)
    with torch.no_grad():  # stand-in for training: move every latent weight
        for p in student.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    student.eval()
    out = tmp_path / "final"
    finalize(student, teacher, out, config)
    packed = SentenceTransformer(str(out), device="cpu")
    sentences = tiny_sentences(6)
    features = teacher.tokenize(sentences)
    with torch.no_grad():
        hidden = student(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).last_hidden_state
    expected = torch.nn.functional.normalize(mean_pool(hidden, features["attention_mask"]), dim=-1) \
        if any(type(m).__name__ == "Normalize" for m in teacher) else mean_pool(hidden, features["attention_mask"])
    got = packed.encode(sentences, convert_to_tensor=True)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert any(isinstance(m, TernaryLinear) for m in packed[0].auto_model.modules())
    layers = packed[0].auto_model.encoder.layer
    assert isinstance(layers[0].output.dense, Int4Linear) == bool(config.int4_modules)
    assert isinstance(layers[1].output.dense, Int8Linear) == bool(config.int8_modules)


@pytest.mark.parametrize("extra", [{}, {"bank_similarity": 5.0, "bank_size": 20}, {"batch_tokens": 60},
                                   {"max_length": 8, "long_length": 40, "long_share": 0.5}],
                         ids=["default", "bank", "token-budget", "long-views"])
def test_resumed_run_ends_with_the_same_weights(tiny_st_dir, tmp_path, extra):
    texts = tiny_sentences(120)
    cfg = DistillConfig(max_steps=6, **FAST, **extra)
    full = distill(tiny_st_dir, tmp_path / "full", texts=texts, config=cfg, show_progress_bar=False)
    assert full.steps == 6 and len(full.losses) == 6
    partial = distill(tiny_st_dir, tmp_path / "resumed", texts=texts, config=cfg, stop_after=3,
                      show_progress_bar=False)
    assert partial.steps == 3 and not (tmp_path / "resumed").exists()
    # a killed session can log steps past its last checkpoint; the resumed run redoes them, and the
    # CSV must then hold each step once, from the run that counts
    metrics = tmp_path / "resumed.work" / "metrics.csv"
    header = metrics.read_text().splitlines()[0].split(",")
    with open(metrics, "a") as f:
        f.write(",".join("4" if name == "step" else "-1" for name in header) + "\n")
    resumed = distill(tiny_st_dir, tmp_path / "resumed", texts=texts, config=cfg, show_progress_bar=False)
    assert resumed.steps == 6
    # the reported training time counts both sessions, like a time budget does
    assert resumed.seconds > resumed.session_seconds > 0 and partial.seconds > 0
    assert resumed.seconds >= partial.seconds + resumed.session_seconds - 1.0
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the run moved the weights away from plain post-training ternarization
    plain = SentenceTransformer(tiny_st_dir, device="cpu", model_kwargs={"quantization_config": TernaryConfig()})
    plain_state = plain[0].auto_model.state_dict()
    assert any(not torch.equal(plain_state[k], a[k]) for k in a if k.endswith("weight_scale"))
    info = json.loads((tmp_path / "full" / "distillation.json").read_text())
    assert info["steps"] == 6 and info["ternary_config"]["quant_method"] == "ternary"
    assert info["long_views_length"] == extra.get("long_length", 0)  # the tiny teacher's limit is the default 64
    assert (tmp_path / "full.work" / "metrics.csv").is_file()
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 7)) and all(float(r["loss"]) >= 0 for r in rows)
    assert all(None not in r for r in rows)  # every value under a header, also for columns that appear late
    if cfg.bank_similarity:  # the bank is empty on step 1, then has a term on every step
        assert rows[0]["bank_similarity"] == "" and all(float(r["bank_similarity"]) >= 0 for r in rows[1:])


def test_cli_distill_and_two_process_gloo_launch(tiny_st_dir, tmp_path):
    data = tmp_path / "texts.txt"
    # 16 texts over 2 processes, batches of 4: each process's steps 3-4 are its second epoch (teacher cache)
    data.write_text("\n".join(tiny_sentences(16)))
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "ternary_hf.cli", "distill", tiny_st_dir, str(out), "--data", str(data), "--steps", "4",
           "--batch-size", "4", "--save-every", "2", "--bank-similarity", "1", "--bank-size", "8"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("distilled 4 steps") == 1
    model = SentenceTransformer(str(out), device="cpu")
    assert model.encode(["the cat"]).shape == (1, 32)
    checkpoints = tmp_path / "ddp.work" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_2", "checkpoint_4"]
    info = json.loads((out / "distillation.json").read_text())
    # each process caches what it saw: its 8 texts of the first epoch, plus new ones of the second
    assert 8 <= info["teacher_cache"]["texts"] <= 16
    assert info["teacher_cache"]["batches_served"] + info["teacher_cache"]["teacher_forwards"] == 4


def test_periodic_evaluation_reports_what_the_finalized_model_scores(tiny_st_dir, tmp_path):
    from ternary_hf.evaluation.tasks import evaluate

    texts = tiny_sentences(60)
    cfg = DistillConfig(max_steps=4, eval_every=2, eval_tasks="teacher-agreement", eval_limit=30,
                        report_to="tensorboard", **FAST)
    distill(tiny_st_dir, tmp_path / "out", texts=texts, config=cfg, show_progress_bar=False)
    with open(tmp_path / "out.work" / "evals.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4]
    final = evaluate(str(tmp_path / "out"), teacher=tiny_st_dir, tasks="teacher-agreement", limit=30,
                     show_progress_bar=False)
    for metric in ("spearman_pair_similarity", "mean_cosine"):
        logged = float(rows[-1][f"teacher-agreement/{metric}"])
        assert logged == pytest.approx(final.get("teacher-agreement", metric).student, abs=0.01), metric
    assert list((tmp_path / "out.work").rglob("events.out.tfevents.*")), "no TensorBoard event file written"


def test_periodic_evaluation_and_reporting_errors_come_before_training(tiny_st_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        distill(tiny_st_dir, tmp_path / "o", texts=["a b"] * 20,
                config=DistillConfig(max_steps=2, eval_every=1, eval_tasks="sts-b", **FAST))
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.work").exists()
    with pytest.raises(ValueError, match="report_to"):
        DistillConfig(report_to="wandb")
    with pytest.raises(ValueError, match="eval_every"):
        DistillConfig(eval_every=-1)


def test_time_budget_stops_the_run_annealed_and_counts_across_resumes(tiny_st_dir, tmp_path):
    from ternary_hf.train.schedule import warmup_cosine

    assert warmup_cosine(2, 100)(0) == 0.5 and warmup_cosine(2, 100)(51) == pytest.approx(0.5, abs=0.02)
    spent = [0.0]
    schedule = warmup_cosine(5000, 100000, time_fraction=lambda: spent[0], warmup_ratio=0.1)
    assert schedule(0) == pytest.approx(1 / 5000)  # a huge step cap must not stretch the warm-up...
    spent[0] = 0.05
    assert schedule(10) == pytest.approx(0.5)  # ...which ends with 10% of the budget
    spent[0] = 0.55
    assert schedule(20) == pytest.approx(0.5)  # then the cosine follows the clock
    spent[0] = 1.0
    assert schedule(30) == 0.0
    spent[0] = 0.01
    assert warmup_cosine(2, 100, time_fraction=lambda: spent[0], warmup_ratio=0.1)(99) == pytest.approx(0.0, abs=1e-3)

    texts = tiny_sentences(200)
    cfg = DistillConfig(max_steps=100000, max_minutes=0.05, learning_rate=1e-3, **FAST)
    result = distill(tiny_st_dir, tmp_path / "timed", texts=texts, config=cfg, show_progress_bar=False)
    assert 0 < result.steps < 100000
    info = json.loads((tmp_path / "timed" / "distillation.json").read_text())
    assert info["stopped_by_time_budget"] is True
    assert result.losses[-1]["lr"] < 0.25 * cfg.learning_rate  # decayed with the clock, not the step count
    # the clock at the stop (saved with the final checkpoint) has used up the budget; the last logged
    # row can precede it by the bookkeeping done between logging and the budget check
    last_checkpoint = max((tmp_path / "timed.work" / "checkpoints").glob("checkpoint_*"),
                          key=lambda p: int(p.name.split("_")[1]))
    assert json.loads((last_checkpoint / "trainer_state.json").read_text())["elapsed_s"] >= 0.05 * 60
    # a resumed run continues the clock: the budget is already spent, so it stops at once
    again = distill(tiny_st_dir, tmp_path / "timed", texts=texts, config=cfg, show_progress_bar=False)
    assert again.steps == result.steps


def test_an_unrelated_output_folder_is_refused_before_training_and_replaced_only_with_overwrite(
        tiny_st_dir, tmp_path, capsys):
    from ternary_hf.cli import main

    user = tmp_path / "my-models"
    user.mkdir()
    (user / "thesis.txt").write_text("mine")
    cfg = DistillConfig(max_steps=2, **FAST)
    with pytest.raises(FileExistsError, match="has no distillation.json"):
        distill(tiny_st_dir, user, texts=tiny_sentences(20), config=cfg, show_progress_bar=False)
    assert not (tmp_path / "my-models.work").exists(), "the check must come before any training"
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(tiny_sentences(20)))
    assert main(["distill", tiny_st_dir, str(user), "--data", str(data), "--steps", "2"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (user / "thesis.txt").read_text() == "mine"

    distill(tiny_st_dir, user, texts=tiny_sentences(20), config=cfg, show_progress_bar=False, overwrite=True)
    assert not (user / "thesis.txt").exists() and (user / "distillation.json").is_file()
    # a re-run may replace what distill itself wrote, without overwrite
    distill(tiny_st_dir, user, texts=tiny_sentences(20), config=cfg, show_progress_bar=False)
    assert SentenceTransformer(str(user), device="cpu").encode(["the cat"]).shape == (1, 32)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing left aside


def test_num_threads_holds_for_the_call_only(tiny_st_dir, tmp_path, monkeypatch):
    from ternary_hf.evaluation import evaluate

    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    cfg = DistillConfig(max_steps=1, batch_size=4, num_threads=threads, save_every=1)
    seen = []
    original = torch.nn.Module.__call__

    def spy(self, *args, **kwargs):  # the count the training forward runs with
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", spy)
    distill(tiny_st_dir, tmp_path / "out", texts=tiny_sentences(8), config=cfg, show_progress_bar=False)
    monkeypatch.undo()
    assert seen and set(seen) == {threads}
    assert torch.get_num_threads() == before
    evaluate(str(tmp_path / "out"), tasks=["teacher-agreement"], teacher=tiny_st_dir, limit=8,
             show_progress_bar=False, num_threads=threads)
    assert torch.get_num_threads() == before
