"""A distillation run across sessions: resume with other settings, re-runs of a finished run, kills during
a checkpoint save and during finalize, corpus errors and the CLI flags generated from DistillConfig."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_sentences
from safetensors.torch import load_file

from ternary_hf import TernaryConfig
from ternary_hf.cli import build_parser, main
from ternary_hf.distill import DistillConfig, distill

FAST = dict(batch_size=8, save_every=2, log_every=1, num_threads=1)
ROOT = Path(__file__).resolve().parents[1]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _strict_json(path: Path) -> dict:
    def refuse(name: str):
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_resuming_with_other_settings_is_refused_naming_each_and_fresh_starts_over(tiny_st_dir, tmp_path, capsys):
    texts = tiny_sentences(40)
    out = tmp_path / "out"
    cfg = DistillConfig(max_steps=4, **FAST)
    distill(tiny_st_dir, out, texts=texts, config=cfg, stop_after=2, show_progress_bar=False)

    with pytest.raises(ValueError) as caught:
        distill(tiny_st_dir, out, texts=texts, show_progress_bar=False,
                config=DistillConfig(max_steps=4, **{**FAST, "batch_size": 4}, learning_rate=1e-3))
    message = str(caught.value)
    assert "batch_size (--batch-size): 8 -> 4" in message and "learning_rate (--lr): 0.0005 -> 0.001" in message
    assert "--fresh" in message and "max_steps" not in message
    with pytest.raises(ValueError, match=r"ternary_config.threshold_method \(--threshold\): 'calibrated' -> 'twn'"):
        distill(tiny_st_dir, out, texts=texts, config=cfg, ternary_config=TernaryConfig(threshold_method="twn"),
                show_progress_bar=False)
    with pytest.raises(ValueError, match=r"data \(--data.*40 items.*-> 41 items"):
        distill(tiny_st_dir, out, texts=[*texts, "one more text"], config=cfg, show_progress_bar=False)
    with pytest.raises(ValueError, match=r"hidden_mse \(--hidden-mse\): 1.0 -> 0.5"):
        distill(tiny_st_dir, out, texts=texts, config=DistillConfig(max_steps=4, hidden_mse=0.5, **FAST),
                show_progress_bar=False)
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(texts))
    capsys.readouterr()
    assert main(["distill", tiny_st_dir, str(out), "--data", str(data), "--steps", "4", "--batch-size", "4",
                 "--save-every", "2", "--log-every", "1", "--num-threads", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--fresh" in err and "Traceback" not in err
    assert not out.exists() and not list((tmp_path / "out.work" / "checkpoints").glob("checkpoint_4"))

    # budgets and checkpoint cadence may change on resume; each session is recorded
    resumed = distill(tiny_st_dir, out, texts=texts, config=DistillConfig(max_steps=5, **{**FAST, "save_every": 5}),
                      show_progress_bar=False)
    assert resumed.steps == 5
    info = _strict_json(out / "distillation.json")
    assert [(s["from_step"], s["max_steps"], s["save_every"]) for s in info["sessions"]] == [(0, 4, 2), (2, 5, 5)]

    fresh = distill(tiny_st_dir, out, texts=texts, config=DistillConfig(max_steps=3, **{**FAST, "batch_size": 4}),
                    show_progress_bar=False, fresh=True)
    assert fresh.steps == 3 and fresh.session_seconds == fresh.seconds
    info = _strict_json(out / "distillation.json")
    assert info["config"]["batch_size"] == 4 and [s["from_step"] for s in info["sessions"]] == [0]


def test_rerunning_a_finished_run_leaves_its_output_and_record_byte_identical(tiny_st_dir, tmp_path, capsys):
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(tiny_sentences(30)))
    out = tmp_path / "out"
    cmd = ["distill", tiny_st_dir, str(out), "--data", str(data), "--steps", "3", "--batch-size", "8",
           "--num-threads", "1"]
    assert main(cmd) == 0
    first = _files(out)
    loss = _strict_json(out / "distillation.json")["final_loss"]
    assert isinstance(loss, float) and loss > 0
    capsys.readouterr()
    assert main(cmd) == 0
    said = capsys.readouterr().out
    assert "already distilled: 3 steps" in said and "nan" not in said.lower()
    assert _files(out) == first

    # the output lost (deleted by hand): the finished checkpoint is finalized again, identically
    os.replace(out, tmp_path / "kept")
    result = distill(tiny_st_dir, out, texts=str(data), config=DistillConfig(max_steps=3, batch_size=8, num_threads=1),
                     show_progress_bar=False)
    assert result.steps == 3 and result.final_loss == loss and not result.already_finished
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "kept" / "model.safetensors").read_bytes()
    assert _strict_json(out / "distillation.json")["final_loss"] == loss


_KILL_IN_FINALIZE = """
import os, signal, sys
import torch
from sentence_transformers import SentenceTransformer
from ternary_hf.distill import DistillConfig, distill

original = SentenceTransformer.__init__

def init(self, *args, **kwargs):
    if (kwargs.get("model_kwargs") or {}).get("quantization_config") is not None:
        os.kill(os.getpid(), signal.SIGKILL)  # finalize is loading the float model back through the quantizer
    original(self, *args, **kwargs)

SentenceTransformer.__init__ = init
texts = open(sys.argv[3]).read().splitlines()
distill(sys.argv[1], sys.argv[2], texts=texts, config=DistillConfig(max_steps=2, batch_size=8, num_threads=1),
        show_progress_bar=False)
"""


def test_a_kill_during_finalize_leaves_nothing_that_the_rerun_does_not_clean_up(tiny_st_dir, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    data = tmp_path / "texts.txt"
    texts = tiny_sentences(20)
    data.write_text("\n".join(texts))
    out = runs / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=f"{ROOT}{os.pathsep}"
               + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _KILL_IN_FINALIZE, tiny_st_dir, str(out), str(data)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = [p for p in runs.iterdir() if p.name != "out.work"]
    assert leftovers and not out.exists()  # killed mid-finalize: a staging folder, no output
    assert any(p.is_dir() and any(p.rglob("model.safetensors")) for p in leftovers)

    result = distill(tiny_st_dir, out, texts=texts, config=DistillConfig(max_steps=2, batch_size=8, num_threads=1),
                     show_progress_bar=False)
    assert result.steps == 2 and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in runs.iterdir()) == ["out", "out.work"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_failed_checkpoint_save_leaves_the_previous_one_and_the_resume_is_exact(tiny_st_dir, tmp_path, monkeypatch):
    from accelerate import Accelerator

    texts = tiny_sentences(60)
    cfg = DistillConfig(max_steps=6, **FAST)
    full = distill(tiny_st_dir, tmp_path / "full", texts=texts, config=cfg, show_progress_bar=False)
    # Accelerate's total_limit: saves at steps 2, 4, 6 keep the newest two
    assert sorted(p.name for p in (tmp_path / "full.work" / "checkpoints").iterdir()) == ["checkpoint_4",
                                                                                          "checkpoint_6"]
    original, calls = Accelerator.save_state, []

    def dies_while_saving(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the save of step 4: half written, then the process "dies"
            target = Path(self.project_dir) / "checkpoints" / "checkpoint_4"
            target.mkdir(parents=True)
            (target / "model.safetensors").write_bytes(b"torn")
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", dies_while_saving)
    with pytest.raises(KeyboardInterrupt):
        distill(tiny_st_dir, tmp_path / "resumed", texts=texts, config=cfg, show_progress_bar=False)
    assert [p.name for p in (tmp_path / "resumed.work" / "checkpoints").iterdir()] == ["checkpoint_2"]
    monkeypatch.setattr(Accelerator, "save_state", original)
    resumed = distill(tiny_st_dir, tmp_path / "resumed", texts=texts, config=cfg, show_progress_bar=False)
    assert resumed.steps == 6 and not (tmp_path / "resumed.work" / ".saving").exists()
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a) and full.final_loss == resumed.final_loss


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("binary.txt", b"one\n\xff\xfe\x00 not text\n", r"binary.txt:2: not UTF-8"),
    ("broken.jsonl", b'{"text": "fine"}\n{"text": "unterminated\n', r"broken.jsonl:2: not valid JSON"),
    ("numbers.jsonl", b'{"text": "fine"}\n{"text": 42}\n', r"numbers.jsonl:2: 'text' is 42, not a string"),
    ("missing.txt", None, r"missing.txt not found"),
])
def test_corpus_errors_reach_the_cli_as_one_line_before_any_work(tiny_st_dir, tmp_path, capsys, name, content,
                                                                   expected):
    import re

    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    capsys.readouterr()
    assert main(["distill", tiny_st_dir, str(tmp_path / "out"), "--data", str(path), "--steps", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and re.search(expected, err), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


def test_a_teacher_that_is_not_a_model_is_one_cli_line_before_any_work(tmp_path, capsys):
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(tiny_sentences(8)))
    (tmp_path / "not-a-model").mkdir()
    for teacher in (tmp_path / "missing", tmp_path / "not-a-model"):
        capsys.readouterr()
        assert main(["distill", str(teacher), str(tmp_path / "out"), "--data", str(data), "--steps", "1"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: cannot load the teacher {teacher}"), err
        assert ("no such folder" in err) == (teacher.name == "missing"), err
        assert not (tmp_path / "out.work").exists()


def test_the_cli_reads_the_text_field_flag(tiny_st_dir, tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"body": text}) for text in tiny_sentences(16)) + "\n")
    assert main(["distill", tiny_st_dir, str(tmp_path / "out"), "--data", str(data), "--text-field", "body",
                 "--steps", "1", "--batch-size", "8", "--num-threads", "1"]) == 0
    assert _strict_json(tmp_path / "out" / "distillation.json")["num_texts"] == 16


def test_every_historical_distill_flag_sets_its_config_field():
    args = build_parser().parse_args([
        "distill", "T", "O", "--steps", "7", "--batch-size", "5", "--lr", "0.002", "--max-length", "40",
        "--grad-accum", "3", "--max-texts", "99", "--hidden-mse", "0.5", "--pooled-cosine", "0.25",
        "--pooled-mse", "0.125", "--layer-mse", "2", "--attention-kl", "3", "--similarity", "4",
        "--bank-similarity", "5", "--similarity-mode", "kl", "--bank-size", "64", "--teacher-forcing", "0.3",
        "--no-mask-padding", "--teacher-cache-gb", "1.5", "--float-grad-input", "--float-int-blocks",
        "--minutes", "2.5", "--save-every", "11", "--optimizer", "adamw8bit", "--mixed-precision", "bf16",
        "--seed", "3", "--eval-every", "13", "--eval-tasks", "sts", "--eval-limit", "17", "--report-to", "tensorboard",
        "--data", "d.txt", "--text-field", "body", "--work-dir", "W", "--overwrite", "--no-resume"])
    config = DistillConfig(**{name: getattr(args, name) for name in DistillConfig.__dataclass_fields__})
    assert config == DistillConfig(
        max_steps=7, batch_size=5, learning_rate=0.002, max_length=40, gradient_accumulation_steps=3, max_texts=99,
        hidden_mse=0.5, pooled_cosine=0.25, pooled_mse=0.125, layer_mse=2, attention_kl=3, similarity=4,
        bank_similarity=5, similarity_mode="kl", bank_size=64, teacher_forcing=0.3, mask_padding=False,
        teacher_cache_gb=1.5, int8_grad_input=False, int_blocks_qat=False, max_minutes=2.5, save_every=11,
        optimizer="adamw8bit", mixed_precision="bf16", seed=3, eval_every=13, eval_tasks="sts", eval_limit=17,
        report_to="tensorboard")
    assert (args.data, args.text_field, args.work_dir, args.overwrite, args.fresh) == ("d.txt", "body", "W", True, True)
    defaults = build_parser().parse_args(["distill", "T", "O"])
    assert DistillConfig(**{name: getattr(defaults, name) for name in DistillConfig.__dataclass_fields__}) \
        == DistillConfig()
    with pytest.raises(SystemExit):  # choices come from the config's Literal annotations
        build_parser().parse_args(["distill", "T", "O", "--report-to", "wandb"])
    with pytest.raises(ValueError, match=r"report_to='wandb'; choose one of \['csv', 'tensorboard'\]"):
        DistillConfig(report_to="wandb")


def test_checkpoints_of_the_earlier_layout_are_resumed(tiny_st_dir, tmp_path):
    texts = tiny_sentences(40)
    cfg = DistillConfig(max_steps=4, **FAST)
    full = distill(tiny_st_dir, tmp_path / "full", texts=texts, config=cfg, show_progress_bar=False)
    distill(tiny_st_dir, tmp_path / "old", texts=texts, config=cfg, stop_after=2, show_progress_bar=False)
    work = tmp_path / "old.work"  # as the trainer before Accelerate's naming left it: no run record
    os.replace(work / "checkpoints" / "checkpoint_2", work / "checkpoint-2")
    (work / "checkpoints").rmdir()
    (work / "run.json").unlink()
    resumed = distill(tiny_st_dir, tmp_path / "old", texts=texts, config=cfg, show_progress_bar=False)
    assert resumed.steps == 4 and resumed.final_loss == full.final_loss
    assert not (work / "checkpoint-2").exists()
    weights = "model.safetensors"
    assert (tmp_path / "old" / weights).read_bytes() == (tmp_path / "full" / weights).read_bytes()


def test_a_run_recorded_before_later_settings_resumes_with_the_values_that_reproduce_it(tiny_st_dir, tmp_path):
    texts = tiny_sentences(40)
    before = DistillConfig(max_steps=4, long_length=0, **FAST)  # what runs did before long views existed
    full = distill(tiny_st_dir, tmp_path / "full", texts=texts, config=before, show_progress_bar=False)
    distill(tiny_st_dir, tmp_path / "old", texts=texts, config=before, stop_after=2, show_progress_bar=False)
    record_path = tmp_path / "old.work" / "run.json"
    record = json.loads(record_path.read_text())
    later = ("batch_tokens", "long_length", "long_share", "mix", "exclude_sources", "data_share")
    record["settings"] = {k: v for k, v in record["settings"].items() if k not in later}
    record_path.write_text(json.dumps(record))

    # today's default would switch long views on in the middle of the run: refused, naming the value to pass
    with pytest.raises(ValueError, match=r"runs: long_length \(--long-length\): 0 -> None\. Resume"):
        distill(tiny_st_dir, tmp_path / "old", texts=texts, config=DistillConfig(max_steps=4, **FAST),
                show_progress_bar=False)
    resumed = distill(tiny_st_dir, tmp_path / "old", texts=texts, config=before, show_progress_bar=False)
    assert resumed.steps == 4 and resumed.final_loss == full.final_loss

    # a setting without a known earlier value still counts as changed when the record lacks it
    record = json.loads(record_path.read_text())
    del record["settings"]["hidden_mse"]
    record_path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"hidden_mse \(--hidden-mse\): None -> 1.0"):
        distill(tiny_st_dir, tmp_path / "old", texts=texts, config=DistillConfig(max_steps=5, long_length=0, **FAST),
                show_progress_bar=False)
