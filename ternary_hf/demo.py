"""The main job, end to end: ``ternary-hf demo`` on the bundled all-MiniLM-L6-v2.

quantize -> distill (time budget, progress bar + ETA) -> save 2-bit safetensors -> reload with
sentence-transformers -> evaluate against the FP32 teacher -> measure encode speed (FP32, ternary,
ONNX Runtime int8) -> FAISS index over real 20 Newsgroups documents, a few real queries side by side
with the teacher -> one summary table, a PNG plot and a model card, ready for ``ternary-hf push``.

Every stage keeps its result in ``<out>.work/`` (keyed by the settings that produced it), so a re-run
only repeats what changed and a killed run resumes distillation from its last checkpoint. The
published folder ``<out>`` is assembled in a staging folder next to it and renamed at the very end
(``ternary_hf.utils.io.staged_folder``): Ctrl-C never leaves a half-written model there.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, MissingDependencyError, MissingInputError
from .integrations.config import TernaryConfig
from .utils.io import (
    atomic_write_json,
    check_output_folder,
    folder_fingerprint,
    read_json,
    staged_folder,
    weight_files_bytes,
)
from .utils.tables import format_table

__all__ = ["DemoConfig", "DemoSummary", "run_demo"]

_STATE = "demo_state.json"
_SUMMARY = "demo_summary.json"  # in every finished output folder; marks one a re-run may replace
_OUT_HINT = "remove it if it is yours to replace"


@dataclass
class DemoConfig:
    """Settings of a demo run. Defaults: a 12-minute distillation and 300 texts per evaluation split;
    the tests run it with tiny ones."""

    out: str = "ternary-minilm-l6"
    teacher: str | None = None  # default: the bundled all-MiniLM-L6-v2
    minutes: float = 12.0
    max_steps: int = 1000
    batch_size: int = 32
    max_length: int = 64  # DistillConfig's default: shorter sequences buy more steps per minute
    learning_rate: float | None = None  # None: DistillConfig's default
    eval_limit: int = 300
    speed_sentences: int = 500
    index_docs: int = 1000
    n_queries: int = 4
    repo_id: str = "your-name/all-MiniLM-L6-v2-ternary"
    fresh: bool = False
    ternary_config: TernaryConfig = field(default_factory=TernaryConfig)

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "max_length", "eval_limit", "speed_sentences", "index_docs",
                     "n_queries"):
            if int(getattr(self, name)) < 1:
                raise InvalidInputError(f"DemoConfig: {name}={getattr(self, name)!r} must be >= 1")
        if not self.minutes > 0:
            raise InvalidInputError(f"DemoConfig: minutes={self.minutes!r} must be > 0")


@dataclass
class DemoSummary:
    """What the demo measured (also written to ``<out>/demo_summary.json``)."""

    output_dir: str
    teacher: str
    distill_steps: int
    distill_seconds: float
    size_bytes: dict[str, int]
    speed: dict[str, Any]
    quality: dict[str, tuple[float, float, float | None]]  # "task metric": (teacher, student, retention %)
    teacher_agreement: dict[str, float]
    length_agreement: dict[str, float]  # out of domain: "mean_cosine@N" (student-teacher, texts cut to N tokens)
    search: dict[str, Any]
    plain: dict[str, Any]
    seconds: float
    reused: list[str]


# ------------------------------------------------------------------------------------------- cache
class _Cache:
    """``<out>.work/``: one folder per stage, each valid only for the settings it was made with."""

    def __init__(self, root: Path, settings: dict[str, Any], fresh: bool, say: Callable[[str], None]):
        self.root = root
        if fresh and root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        old = self._read(root / _STATE)
        if old is not None and old != settings:
            known = old if isinstance(old, dict) else {}  # an unreadable state invalidates every stage
            changed = sorted(k for k in set(known) | set(settings) if known.get(k, _UNKNOWN) != settings.get(k))
            say(f"settings changed ({', '.join(changed)}): the stages that depend on them are redone")
            for key in changed:
                for stage in _DEPENDS.get(key, ()):
                    shutil.rmtree(root / stage, ignore_errors=True)
                    (root / f"{stage}.json").unlink(missing_ok=True)
        atomic_write_json(root / _STATE, settings, sort_keys=True)

    @staticmethod
    def _read(path: Path) -> Any | None:
        """The JSON in ``path``; None when absent, ``_UNKNOWN`` when unreadable (a kill, a hand edit)."""
        return read_json(path, missing=None, invalid=_UNKNOWN)

    def json(self, name: str) -> Any | None:
        """The cached result of stage ``name``, or None (an unreadable one is redone)."""
        value = self._read(self.root / f"{name}.json")
        return None if value is _UNKNOWN else value

    def put(self, name: str, value: Any) -> None:
        atomic_write_json(self.root / f"{name}.json", value)


_UNKNOWN = object()

# which cached stages each setting invalidates
_DEPENDS: dict[str, tuple[str, ...]] = {
    "teacher": ("plain", "distill", "student", "evaluation", "speed", "search", "onnx"),
    "ternary_config": ("plain", "distill", "student", "evaluation", "speed", "search"),
    "distill": ("distill", "student", "evaluation", "speed", "search"),
    "eval_limit": ("evaluation",),
    "speed_sentences": ("speed",),
    "index": ("search",),
}


# ------------------------------------------------------------------------------------------- stages
def _speed(teacher_dir: str, student_dir: str, cache: _Cache, n: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Sentences/s of FP32, ternary and (when installed) ONNX Runtime int8, interleaved rounds."""
    from .data import real_sentences
    from .evaluation.encoders import open_sentence_transformer
    from .evaluation.onnx_baseline import onnx_int8_encoder
    from .evaluation.speed import measure_encode_speed

    texts = real_sentences(n)
    encoders: dict[str, Any] = {
        "fp32": open_sentence_transformer(teacher_dir, "teacher", device="cpu"),
        "ternary": open_sentence_transformer(student_dir, "student", device="cpu"),
    }
    note = ""
    try:
        encoders["onnx-int8"] = onnx_int8_encoder(teacher_dir, cache.root / "onnx", say=say)
    except MissingDependencyError as exc:
        note = f"ONNX-int8 not measured: {exc}"
    result = measure_encode_speed(encoders, texts, batch_size=32, rounds=2)
    return {"sentences_per_s": result.sentences_per_s, "n_sentences": result.n_sentences,
            "batch_size": result.batch_size, "threads": result.threads, "rounds": result.rounds, "note": note}


def _queries(n_queries: int) -> tuple[list[str], list[str]]:
    """The openings of real 20NG test posts, one per newsgroup, and their newsgroups."""
    from .data import load_dataset

    tests = load_dataset("20ng", "test", limit=200, seed=1)
    queries, query_groups, seen = [], [], set()
    for text, label in zip(tests.texts, tests.labels, strict=True):
        if label in seen:
            continue
        seen.add(label)
        queries.append(" ".join(text.split()[:10]))
        query_groups.append(tests.label_names[label])
        if len(queries) == n_queries:
            break
    return queries, query_groups


def _search(teacher_dir: str, student_dir: str, n_docs: int, n_queries: int) -> dict[str, Any]:
    """Index real 20NG training documents with each model; query with the openings of test documents."""
    from .data import load_dataset
    from .evaluation.encoders import open_sentence_transformer
    from .evaluation.metrics import topk_overlap
    from .search import SemanticIndex

    docs = load_dataset("20ng", "train", limit=n_docs, seed=0)
    queries, query_groups = _queries(n_queries)
    results: dict[str, Any] = {"queries": queries, "query_groups": query_groups, "n_docs": len(docs.texts)}
    hits_by_model: dict[str, list[list[Any]]] = {}
    for name, path in (("fp32", teacher_dir), ("ternary", student_dir)):
        index = SemanticIndex(open_sentence_transformer(path, name, device="cpu"), "Flat")
        index.add(docs.texts, ids=list(range(len(docs.texts))), show_progress_bar=True)
        hits = index.search(queries, k=10)
        hits_by_model[name] = [[h.id for h in row] for row in hits]
        results[name] = [
            [{"group": docs.label_names[docs.labels[h.id]], "score": round(float(h.score), 4),
              "text": docs.texts[h.id][:80]} for h in row[:3]] for row in hits]
        results[f"{name}_same_group_at_10"] = sum(
            docs.label_names[docs.labels[h.id]] == g for row, g in zip(hits, query_groups, strict=True) for h in row
        ) / (10 * len(queries))
    results["top10_overlap"] = topk_overlap(hits_by_model["fp32"], hits_by_model["ternary"], k=10)
    return results


# ------------------------------------------------------------------------------------------- report
def format_summary(s: DemoSummary) -> str:
    """The one summary table the demo prints (size, speed, quality) plus the search lines."""
    rows: list[tuple[str, ...]] = []
    fp, tb = s.size_bytes["fp32"], s.size_bytes["ternary"]
    rows.append(("model size (safetensors)", f"{fp / 1e6:.1f} MB", f"{tb / 1e6:.1f} MB", f"{tb / fp:.3f}x"))
    rate = s.speed.get("sentences_per_s", {})
    if rate:
        rows.append(("encode sentences/s (FP32)", f"{rate['fp32']:.0f}", f"{rate['ternary']:.0f}",
                     f"{rate['ternary'] / rate['fp32']:.2f}x"))
        if "onnx-int8" in rate:
            rows.append(("encode sentences/s (ONNX-int8)", f"{rate['onnx-int8']:.0f}", f"{rate['ternary']:.0f}",
                         f"{rate['ternary'] / rate['onnx-int8']:.2f}x"))
    for name, (teacher, student, retention) in s.quality.items():
        rows.append((name, f"{teacher:.3f}", f"{student:.3f}", "" if retention is None else f"{retention:.1f}%"))
    for metric, value in s.teacher_agreement.items():
        rows.append((f"teacher agreement: {metric}", "", f"{value:.3f}", ""))
    for metric, value in s.length_agreement.items():
        rows.append((f"out of domain: cosine to teacher, {metric.split('@')[-1]} tokens", "", f"{value:.3f}", ""))
    if s.search:
        rows.append(("20NG search: same group @10", f"{s.search['fp32_same_group_at_10']:.2f}",
                     f"{s.search['ternary_same_group_at_10']:.2f}",
                     f"overlap {s.search['top10_overlap']:.2f}"))
    text = format_table(("", "FP32 teacher", "ternary", "ratio"), rows)
    if s.speed.get("note"):
        text += f"\n({s.speed['note']})"
    return text


def _print_queries(search: dict[str, Any], say: Callable[[str], None]) -> None:
    for i, (q, group) in enumerate(zip(search["queries"], search["query_groups"], strict=True)):
        say(f"\nquery {i + 1} (from a {group} test post): {q!r}")
        for name in ("fp32", "ternary"):
            for rank, hit in enumerate(search[name][i], 1):
                say(f"  {name:>7} #{rank} [{hit['group']}] {hit['score']:.3f}  {hit['text'][:60]}")


# ------------------------------------------------------------------------------------------- main
def _cached(cache: _Cache, name: str, reused: list[str], compute: Callable[[], Any]) -> Any:
    """The cached JSON result of stage ``name``, or ``compute()``'s, cached for the next run."""
    value = cache.json(name)
    if value is not None:
        reused.append(name)
        return value
    value = compute()
    cache.put(name, value)
    return value


def _plain(teacher: str, cfg: DemoConfig, cache: _Cache, reused: list[str]) -> Any:
    """Plain post-training ternarization: the starting point, and what distillation improves on."""
    from .ptq.quantize import QuantizeReport, quantize_folder

    plain_dir = cache.root / "plain"
    report = plain_dir / "ternary_quantize.json"
    if report.is_file():
        reused.append("quantize")
        return QuantizeReport(**read_json(report, hint=f"remove {report} and run the demo again"))
    return quantize_folder(teacher, plain_dir, config=cfg.ternary_config, overwrite=True)


def _distilled(teacher: str, cfg: DemoConfig, dcfg: Any, cache: _Cache, reused: list[str]) -> dict[str, Any]:
    """Distill into ``<out>.work/student`` (resuming from ``<out>.work/distill`` after a kill); its record."""
    from .train import distill

    student_dir = cache.root / "student"
    record = student_dir / "distillation.json"
    if record.is_file():
        reused.append("distill")
    else:
        distill(teacher, student_dir, ternary_config=cfg.ternary_config, config=dcfg, work_dir=cache.root / "distill")
    return read_json(record, hint=f"remove {student_dir} and run the demo again")


def _evaluation(teacher: str, student_dir: Path, cfg: DemoConfig, cache: _Cache, reused: list[str]) -> Any:
    """The student reloaded from its 2-bit safetensors, evaluated against the teacher."""
    from .evaluation import EvaluationResult, evaluate
    from .evaluation.encoders import open_sentence_transformer

    def run() -> dict[str, Any]:
        student = open_sentence_transformer(student_dir, "student", device="cpu")
        return evaluate(student, teacher=teacher, limit=cfg.eval_limit, label="ternary (distilled)").to_dict()

    return EvaluationResult.from_dict(_cached(cache, "evaluation", reused, run))


def _summary(out: Path, teacher: str, student_dir: Path, info: dict[str, Any], plain: Any, evaluation: Any,
             speed: dict[str, Any], search: dict[str, Any], started: float, reused: list[str]) -> DemoSummary:
    quality: dict[str, tuple[float, float, float | None]] = {}
    for m in evaluation.metrics:  # one number per task: its first metric (P@10, accuracy, V-measure, nDCG@10)
        if m.student is not None and m.teacher is not None and not any(k.startswith(m.task + " ") for k in quality):
            quality[f"{m.task} {m.metric}"] = (float(m.teacher), float(m.student), m.retention)
    agreement = {m.metric: float(m.student) for m in evaluation.metrics
                 if m.task == "teacher-agreement" and m.student is not None}
    lengths = {m.metric: float(m.student) for m in evaluation.metrics
               if m.task == "ood-length-agreement" and m.student is not None}
    return DemoSummary(
        output_dir=str(out), teacher=teacher, distill_steps=int(info["steps"]),
        distill_seconds=float(info["seconds"]),
        size_bytes={"fp32": weight_files_bytes(teacher), "ternary": weight_files_bytes(student_dir)},
        speed=speed, quality=quality, teacher_agreement=agreement, length_agreement=lengths, search=search,
        plain={"size_ratio": plain.size_ratio, "mean_cosine": plain.mean_cosine},
        seconds=time.time() - started, reused=reused,
    )


def _publish(out: Path, student_dir: Path, evaluation: Any, summary: DemoSummary, repo_id: str) -> None:
    """Assemble the model folder beside ``out`` and swap it in whole (Ctrl-C leaves ``out`` as it was)."""
    from .evaluation import plot_results
    from .hub.model_card import write_model_card

    with staged_folder(out, marker=_SUMMARY, hint=_OUT_HINT) as staging:
        shutil.copytree(student_dir, staging, dirs_exist_ok=True)
        evaluation.to_json(staging / "eval_results.json")
        plot_results(evaluation, staging / "retention.png")
        atomic_write_json(staging / _SUMMARY, asdict(summary))
        write_model_card(staging, repo_id)  # base model: from distillation.json's teacher


def _distill_config(cfg: DemoConfig) -> Any:
    from .train import DistillConfig

    kwargs: dict[str, Any] = dict(max_steps=cfg.max_steps, max_minutes=cfg.minutes, batch_size=cfg.batch_size,
                                  max_length=cfg.max_length, save_every=25, log_every=10)
    if cfg.learning_rate is not None:
        kwargs["learning_rate"] = cfg.learning_rate
    return DistillConfig(**kwargs)


def run_demo(cfg: DemoConfig | None = None, say: Callable[[str], None] = print) -> DemoSummary:
    """Run (or resume) the whole main job; see the module docstring."""
    from .data import default_model_path

    cfg = cfg or DemoConfig()
    started = time.time()
    teacher = str(cfg.teacher or default_model_path())
    out = check_output_folder(Path(cfg.out).resolve(), marker=_SUMMARY, hint=_OUT_HINT)
    if not Path(teacher).is_dir():
        raise MissingInputError(f"teacher {teacher} is not a model folder; pass a sentence-transformers folder")
    dcfg = _distill_config(cfg)
    settings = {"teacher": folder_fingerprint(teacher), "ternary_config": cfg.ternary_config.to_dict(),
                "distill": asdict(dcfg), "eval_limit": cfg.eval_limit, "speed_sentences": cfg.speed_sentences,
                "index": [cfg.index_docs, cfg.n_queries]}
    cache = _Cache(out.with_name(out.name + ".work"), settings, cfg.fresh, say)
    student_dir = cache.root / "student"
    reused: list[str] = []

    say(f"[1/6] quantize {teacher} -> ternary (2-bit weights, per-channel scales)")
    plain = _plain(teacher, cfg, cache, reused)
    say(plain.summary())
    say(f"[2/6] distill: the FP32 model teaches its ternary copy ({cfg.minutes:g} min budget, "
        f"at most {cfg.max_steps} steps; Ctrl-C and re-run to resume)")
    info = _distilled(teacher, cfg, dcfg, cache, reused)
    loss = info.get("final_loss")
    loss_text = f"final loss {loss:.4f}" if isinstance(loss, (int, float)) else "final loss not recorded"
    say(f"distilled {info['steps']} steps in {info['seconds'] / 60:.1f} min ({loss_text})")
    say("[3/6] reload the 2-bit model with sentence-transformers and evaluate it against the FP32 teacher")
    evaluation = _evaluation(teacher, student_dir, cfg, cache, reused)
    say(f"[4/6] encode speed on {cfg.speed_sentences} real sentences (batch 32): FP32 vs ternary vs ONNX-int8")
    speed = _cached(cache, "speed", reused, lambda: _speed(teacher, str(student_dir), cache, cfg.speed_sentences, say))
    say(f"[5/6] FAISS search over {cfg.index_docs} real 20 Newsgroups posts, FP32 teacher vs ternary")
    search = _cached(cache, "search", reused,
                     lambda: _search(teacher, str(student_dir), cfg.index_docs, cfg.n_queries))
    _print_queries(search, say)

    summary = _summary(out, teacher, student_dir, info, plain, evaluation, speed, search, started, reused)
    say("[6/6] write the model folder, the plot and the model card")
    _publish(out, student_dir, evaluation, summary, cfg.repo_id)
    say("\n" + format_summary(summary))
    say(f"\nternary model, plot and model card: {out}\n"
        f"push it with: ternary-hf push {out} {cfg.repo_id}"
        + (f"\n(reused from {cache.root}: {', '.join(reused)}; --fresh redoes everything)" if reused else ""))
    return summary
