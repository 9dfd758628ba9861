"""Every script in examples/ runs end to end with small settings and produces what it says.

Each script runs in a fresh subprocess (cwd = the test's tmp_path, one OpenMP thread, Hub offline except
for the push example, which talks to the local Hub-compatible server of ``tests/hub_server.py``). The
checks are on real outputs: the models the scripts save load with sentence-transformers / transformers
and encode, the printed tables parse and hold numbers in their valid ranges, the JSON and PNG files exist
and agree with what was printed. The bundled all-MiniLM-L6-v2 and the cached real data sets are used, as
the scripts do by default.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 600  # seconds per script: a hang fails the test instead of the run
SENTENCES = ["The cat sat on the mat.", "Stock markets fell sharply today.", "A kitten is sleeping on a rug."]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "TQDM_DISABLE": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
    )
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def run_example(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=str(cwd),
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def _encode_check(folder: Path) -> np.ndarray:
    """The saved folder loads with sentence-transformers (after ``import ternary_hf``) and encodes sensibly."""
    from sentence_transformers import SentenceTransformer

    import ternary_hf  # noqa: F401

    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "ternary"
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    emb = model.encode(SENTENCES, convert_to_numpy=True)
    assert emb.shape == (3, 384) and np.isfinite(emb).all()
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)  # the Normalize module came along
    assert emb[0] @ emb[2] > emb[0] @ emb[1]  # cat/kitten closer than cat/stock market
    return emb


_ROW = re.compile(r"^(\S+)\s+(\S+)\s+(-|-?\d+\.\d+)\s+(-?\d+\.\d+)\s*(\d+\.\d+%)?\s*(?:(\d+\.\d+)-(\d+\.\d+)%)?\s*$")


def parse_eval_table(stdout: str) -> dict[tuple[str, str], tuple[float | None, float, float | None]]:
    """(task, metric) -> (teacher, student, retention %) from ``EvaluationResult.to_table()`` output."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("task ") and "retention" in line)
    rows = {}
    for line in lines[start + 2 :]:
        m = _ROW.match(line)
        if not m:
            break
        teacher = None if m.group(3) == "-" else float(m.group(3))
        retention = float(m.group(5)[:-1]) if m.group(5) else None
        if m.group(6):  # the retention's 95% interval over the evaluation sample
            assert retention is not None and float(m.group(6)) <= float(m.group(7)), line
        rows[m.group(1), m.group(2)] = (teacher, float(m.group(4)), retention)
    assert rows, f"no table rows in:\n{stdout}"
    return rows


def check_eval_rows(rows: dict, tasks: set[str]) -> None:
    assert {task for task, _ in rows} == tasks
    for (task, metric), (teacher, student, retention) in rows.items():
        if task == "teacher-agreement":
            assert teacher is None and retention is None
            low = -1.0 if metric.startswith("spearman") else 0.0
            assert low <= student <= 1.0, (task, metric, student)
        else:
            assert 0.0 <= teacher <= 1.0 and 0.0 <= student <= 1.0, (task, metric, teacher, student)
            assert retention is None or 0.0 <= retention < 1000.0


def check_against_json(rows: dict, result) -> None:
    """The printed (rounded) table says what the JSON result holds."""
    assert {(m.task, m.metric) for m in result.metrics} == set(rows)
    for (task, metric), (teacher, student, retention) in rows.items():
        row = result.get(task, metric)
        assert row.student == pytest.approx(student, abs=5e-4)
        assert (row.teacher is None) == (teacher is None)
        if teacher is not None:
            assert row.teacher == pytest.approx(teacher, abs=5e-4)
        if retention is not None:
            assert row.retention == pytest.approx(retention, abs=0.05)


def check_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.05  # something was drawn


# ------------------------------------------------------------------------------------------- quantize
@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """quantize_minilm.py run once; its saved folder is also the MODEL argument of the search example."""
    cwd = tmp_path_factory.mktemp("quantize")
    proc = run_example("quantize_minilm.py", "minilm-ternary", cwd=cwd)
    return proc, cwd / "minilm-ternary"


def test_quantize_minilm_saves_a_small_ternary_model_that_reloads(quantized):
    from ternary_hf.data.defaults import default_model_path
    from ternary_hf.utils.io import weight_files_bytes as checkpoint_bytes

    proc, folder = quantized
    m = re.search(r"saved minilm-ternary: ([\d.]+) MB \(([\d.]+)x of FP32\)", proc.stdout)
    assert m, proc.stdout
    ratio = float(m.group(2))
    assert 0.05 < ratio <= 0.15  # README: 0.106x with the default int4 embedding table
    assert ratio == pytest.approx(checkpoint_bytes(folder) / checkpoint_bytes(default_model_path()), abs=1e-3)
    cosines = json.loads(re.search(r"no distillation\): (\[.*\])", proc.stdout).group(1))
    assert len(cosines) == 3 and all(0.0 < c < 1.0 for c in cosines)  # plain ternary: related, not equal
    emb = _encode_check(folder)
    from sentence_transformers import SentenceTransformer

    teacher = SentenceTransformer(default_model_path(), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    assert 0.2 < float(np.mean(np.sum(emb * teacher, axis=1))) < 0.95


def test_calibrate_minilm_beats_rounding_and_saves_a_loadable_folder(tmp_path):
    proc = run_example("calibrate_minilm.py", "--texts", "48", "--sentences", "60", "--out", "cal", cwd=tmp_path)
    assert "37 linear layers calibrated on 48 texts" in proc.stdout
    cos = dict(re.findall(r"real sentences, (rounded|calibrated): ([\d.]+)", proc.stdout))
    assert float(cos["calibrated"]) > float(cos["rounded"]) + 0.05, proc.stdout
    emb = _encode_check(tmp_path / "cal")
    assert emb.shape[1] == 384


# ------------------------------------------------------------------------------------------- evaluate
def test_evaluate_minilm_prints_table_and_writes_json_and_png(tmp_path):
    from ternary_hf.evaluation.tasks import EvaluationResult

    tasks = ["20ng-retrieval", "r8-classification", "teacher-agreement"]
    proc = run_example("evaluate_minilm.py", "--limit", "30", "--tasks", *tasks, "--out", "ev", "--no-progress",
                       cwd=tmp_path)
    rows = parse_eval_table(proc.stdout)
    check_eval_rows(rows, set(tasks))
    assert set(rows) >= {("20ng-retrieval", "p@10"), ("r8-classification", "accuracy"),
                         ("teacher-agreement", "mean_cosine")}
    assert "ternarized on the fly" in proc.stdout

    result = EvaluationResult.from_json(tmp_path / "ev" / "evaluation.json")
    assert result.limit == 30 and result.tasks == ["20ng-retrieval", "r8-classification", "teacher-agreement"]
    assert result.label == "ternary (plain)"
    check_against_json(rows, result)
    # quantized on the fly in memory: ternary weights + int4 embeddings, ~0.1x of the FP32 teacher
    assert result.model_size_bytes < 0.2 * result.teacher_size_bytes
    assert result.model_texts_per_second > 0 and result.teacher_texts_per_second > 0
    check_png(tmp_path / "ev" / "evaluation.png")


# ------------------------------------------------------------------------------------------- search
def test_search_20ng_indexes_queries_and_reports_recall_and_bytes(quantized, tmp_path):
    from sentence_transformers import SentenceTransformer

    import ternary_hf  # noqa: F401
    from ternary_hf.search.index import SemanticIndex

    _, folder = quantized
    proc = run_example("search_20ng.py", str(folder), "--limit", "60", "--queries", "12", "--show", "2",
                       "--show-k", "3", "--out", "s", cwd=tmp_path)
    out = proc.stdout
    assert out.count("\nquery [") == 2 + 1 + 1  # 2 queries on the ternary index, 1 asymmetric, 1 binary
    hit_lines = re.findall(r"^\s+\d+\. (\d\.\d{3}) ([ *])\[([\w.-]+)\] ", out, flags=re.M)
    assert len(hit_lines) == 4 * 3
    assert all(-1.0 <= float(score) <= 1.0 for score, _, _ in hit_lines)

    report = json.loads((tmp_path / "s" / "search_results.json").read_text())
    assert report["documents"] == 60 and report["queries"] == 12 and report["student"] == str(folder)
    rows = {(r["documents"], r["queries"], r["index"]): r for r in report["results"]}
    assert len(rows) == 6
    for r in rows.values():
        for key in ("recall@10_vs_exact_float", "recall@10_vs_fp32_teacher", "p@10"):
            assert 0.0 <= r[key] <= 1.0, r
        assert f"| {r['bytes_per_vector']:.0f} | {r['recall@10_vs_exact_float']:.3f} |" in out
    flat = rows["ternary", "ternary", "Flat (float32)"]
    binary = rows["ternary", "ternary", "binary"]
    rescored = rows["ternary", "ternary", "binary + int8 rescore"]
    teacher = rows["FP32 teacher", "teacher", "Flat (float32)"]
    asym = rows["FP32 teacher", "ternary", "Flat (float32)"]
    assert flat["bytes_per_vector"] == 384 * 4 and binary["bytes_per_vector"] == 384 / 8
    assert rescored["bytes_per_vector"] == 384 / 8 + 384 + 4  # sign bits + int8 codes + one float scale
    assert flat["recall@10_vs_exact_float"] == asym["recall@10_vs_exact_float"] == 1.0
    assert teacher["recall@10_vs_fp32_teacher"] == 1.0
    assert rescored["recall@10_vs_exact_float"] >= binary["recall@10_vs_exact_float"]
    assert rescored["recall@10_vs_exact_float"] > 0.9  # 40 rescored candidates out of 60 documents

    # the saved index reloads and answers a query with a ternary model loaded from the same folder
    index_dir = tmp_path / "s" / "index-ternary"
    meta = json.loads((index_dir / "metadata.json").read_text())
    assert meta["ntotal"] == 60 and meta["dim"] == 384 and meta["metric"] == "cosine"
    assert meta["model_quantization"]["quant_method"] == "ternary"
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    hits = SemanticIndex.load(index_dir, model=model).search(["graphics card driver for windows"], k=5)[0]
    assert len(hits) == 5 and all(h.id.startswith("train-") and h.text for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


# ------------------------------------------------------------------------------------------- distill
def test_distill_minilm_trains_saves_and_evaluates_a_student(tmp_path):
    from ternary_hf.evaluation.tasks import EvaluationResult

    tasks = ["20ng-retrieval", "teacher-agreement"]
    proc = run_example("distill_minilm.py", "student", "--steps", "2", "--batch-size", "4", "--limit", "30",
                       "--tasks", *tasks, cwd=tmp_path)
    assert re.search(r"^2 steps in [\d.]+ min -> student$", proc.stdout, flags=re.M), proc.stdout
    out = tmp_path / "student"
    recipe = json.loads((out / "distillation.json").read_text())
    assert recipe["steps"] == 2 and recipe["config"]["batch_size"] == 4 and recipe["config"]["max_steps"] == 2
    assert (tmp_path / "student.work" / "metrics.csv").is_file()
    _encode_check(out)

    rows = parse_eval_table(proc.stdout)
    check_eval_rows(rows, set(tasks))
    saved = EvaluationResult.from_json(out / "eval_results.json")
    assert saved.limit == 30 and saved.tasks == tasks
    check_against_json(rows, saved)


# ------------------------------------------------------------------------------------------- push
def test_push_to_hub_uploads_verifies_and_a_repush_is_a_no_op(tmp_path):
    sys.path.insert(0, str(HERE))
    try:
        from hub_server import HubServer
    finally:
        sys.path.remove(str(HERE))

    token, repo = "hf_test_write_token", "tester/minilm-ternary-example"
    with HubServer(token=token, upload_mode="auto") as server:
        env = _env(HF_HUB_OFFLINE=None, HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / "hf_home"), HF_TOKEN=token,
                   HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost")
        proc = run_example("push_to_hub.py", repo, "--output", "push", "--verify", cwd=tmp_path, env=env)
        assert "verified: the model loaded from the Hub gives identical embeddings (3, 384)" in proc.stdout
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        folder = tmp_path / summary["folder"]  # relative to the script's cwd
        assert folder == tmp_path / "push" / "model"
        assert summary["repo_id"] == repo and server.head(repo) == summary["commit_id"]
        commits = server.commit_count(repo)
        assert f"pushed: {server.url}/{repo}" in proc.stdout

        files = server.files(repo)
        assert {"config.json", "model.safetensors", "modules.json", "tokenizer.json", "README.md"} <= set(files)
        assert server.file_bytes(repo, "model.safetensors") == (folder / "model.safetensors").read_bytes()
        card = server.file_bytes(repo, "README.md").decode()
        assert "base_model_relation: quantized" in card and "ternary" in card
        _encode_check(folder)

        # the folder is already ternary: pushed as is, and nothing changed, so no new commit
        again = run_example("push_to_hub.py", repo, "--source", str(folder), cwd=tmp_path, env=env)
        assert "is already ternary: pushing it as is" in again.stdout
        assert "unchanged:" in again.stdout, again.stdout
        assert server.head(repo) == summary["commit_id"] and server.commit_count(repo) == commits


# ------------------------------------------------------------------------------------------- vision
def test_vision_fashion_mnist_on_digits_trains_ternarizes_distills_and_compares(tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModel

    import ternary_hf  # noqa: F401

    proc = run_example("vision_fashion_mnist.py", "--dataset", "digits", "--out", "run", "--threads", "1",
                       "--epochs", "8", "--hidden-size", "48", "--layers", "2", "--steps", "10", "--batch-size", "32",
                       "--eval-limit", "1000", "--speed-images", "128", "--rounds", "1", cwd=tmp_path)
    out = tmp_path / "run"
    report = json.loads((out / "results.json").read_text())
    assert set(report["scores"]) == {"teacher", "ternary (plain)", "ternary (distilled)"}
    assert report["distill_steps"] == 10 and report["dataset"] == "digits"
    assert report["teacher"]["test_accuracy"] > 0.3  # 10 classes: chance is 0.1 (measured: 0.55)
    assert f"classifier test accuracy {report['teacher']['test_accuracy']:.4f}" in proc.stdout
    for name, scores in report["scores"].items():
        assert scores["n_train"] == 1000 and scores["n_test"] == report["scores"]["teacher"]["n_test"] > 100
        # measured with these settings: probe ~0.70, P@10 ~0.54 for all three models; chance is 0.1
        assert 0.4 < scores["linear_probe_accuracy"] <= 1.0, (name, scores)
        assert 0.25 < scores["p_at_10"] <= 1.0, (name, scores)
        for metric in ("linear_probe_accuracy", "p_at_10"):
            assert f"{scores[metric]:.4f}" in proc.stdout
    assert report["bytes"]["ternary (distilled)"] < 0.5 * report["bytes"]["teacher"]
    assert all(t > 0 for t in report["seconds_per_round"].values())
    assert "| ternary (distilled) |" in proc.stdout

    # the distilled student is a packed ternary ViT that transformers loads and runs
    student = AutoModel.from_pretrained(str(out / "ternary-distilled")).eval()
    assert student.config.quantization_config.quant_method == "ternary"
    with safe_open(str(out / "ternary-distilled" / "model.safetensors"), "pt") as f:
        packed = [k for k in f.keys() if f.get_slice(k).get_dtype() == "U8"]
    assert packed, "no 2-bit packed weights in the distilled model"
    with torch.no_grad():
        size, channels = student.config.image_size, student.config.num_channels
        emb = student(pixel_values=torch.rand(2, channels, size, size)).last_hidden_state[:, 0]
    assert emb.shape == (2, 48) and torch.isfinite(emb).all()
