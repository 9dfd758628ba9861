"""The main job end to end on the bundled MiniLM with tiny settings: outputs, cache reuse, Ctrl-C safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sentence_transformers import SentenceTransformer

from ternary_hf import TernaryLinear
from ternary_hf.demo import DemoConfig, format_summary, run_demo

TINY = dict(minutes=1.0, max_steps=4, batch_size=4, max_length=32, eval_limit=20, speed_sentences=32,
            index_docs=60, n_queries=2)


def test_demo_writes_a_loadable_model_card_plot_and_summary_then_reuses_its_cache(tmp_path):
    out = tmp_path / "demo"
    lines: list[str] = []
    summary = run_demo(DemoConfig(out=str(out), **TINY), say=lines.append)
    assert summary.distill_steps == 4 and summary.reused == []
    for name in ("model.safetensors", "README.md", "retention.png", "eval_results.json", "demo_summary.json",
                 "distillation.json"):
        assert (out / name).is_file(), name
    model = SentenceTransformer(str(out), device="cpu")
    assert any(isinstance(m, TernaryLinear) for m in model.modules())
    assert model.encode(["a real query"]).shape == (1, 384)
    card = (out / "README.md").read_text()
    assert "ternary" in card.lower() and "all-MiniLM-L6-v2" in card
    assert summary.size_bytes["ternary"] < 0.15 * summary.size_bytes["fp32"]
    rates = summary.speed["sentences_per_s"]
    assert rates["fp32"] > 0 and rates["ternary"] > 0
    assert {"20ng-retrieval p@10", "rt-sentiment accuracy", "teacher agreement"} <= {
        *summary.quality, "teacher agreement" if summary.teacher_agreement else ""}
    assert 0 <= summary.search["top10_overlap"] <= 1 and len(summary.search["queries"]) == 2
    table = format_summary(summary)
    assert "model size" in table and "encode sentences/s (FP32)" in table and table in "\n".join(lines)
    saved = json.loads((out / "demo_summary.json").read_text())
    assert saved["size_bytes"] == summary.size_bytes

    again = run_demo(DemoConfig(out=str(out), **TINY), say=lambda _: None)
    assert set(again.reused) == {"quantize", "distill", "evaluation", "speed", "search"}
    assert again.quality == summary.quality
    # a changed setting redoes only what depends on it
    third = run_demo(DemoConfig(out=str(out), **{**TINY, "index_docs": 50}), say=lambda _: None)
    assert "search" not in third.reused and "evaluation" in third.reused


def test_interrupting_the_demo_leaves_no_model_folder_and_the_rerun_resumes(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "ternary_hf.cli", "demo", "--out", str(out), "--steps", "60", "--batch-size", "4",
           "--max-length", "32", "--eval-limit", "20", "--speed-sentences", "32", "--index-docs", "60",
           "--queries", "2"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    # A shell running this suite in the background starts it with SIGINT ignored, and children inherit
    # that (Python then installs no KeyboardInterrupt handler); restore the terminal's default.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoint = tmp_path / "demo.work" / "distill" / "checkpoints" / "checkpoint_25"
    deadline = time.time() + 600
    while not checkpoint.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert checkpoint.is_dir(), proc.communicate()[1][-2000:] if proc.poll() is not None else "no checkpoint"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo.")]  # no staging folder left

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from" in rerun.stdout + rerun.stderr
    assert "distilled 60 steps" in rerun.stdout
    SentenceTransformer(str(out), device="cpu").encode(["works"])


def test_demo_rejects_bad_settings_before_doing_anything(tmp_path):
    with pytest.raises(ValueError, match="minutes"):
        DemoConfig(out=str(tmp_path / "x"), minutes=0)
    with pytest.raises(ValueError, match="eval_limit"):
        DemoConfig(eval_limit=0)


def test_the_demo_distills_with_the_trainers_measured_sequence_length():
    from ternary_hf.distill import DistillConfig

    # DemoConfig keeps its own copy of the default; the two must not drift apart
    assert DemoConfig().max_length == DistillConfig().max_length


def test_the_demo_refuses_an_out_folder_it_did_not_write_before_doing_anything(tmp_path, capsys):
    from ternary_hf.cli import main

    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    assert main(["demo", "--out", str(out), "--steps", "2"]) == 1
    err = capsys.readouterr().err
    assert "demo_summary.json" in err and "remove it" in err
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"]
    assert not (tmp_path / "photos.work").exists()
