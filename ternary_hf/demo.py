"""The main job, end to end: ``ternary-hf demo`` on the bundled all-MiniLM-L6-v2.

quantize -> distill (time budget, progress bar + ETA) -> save 2-bit safetensors -> reload with
sentence-transformers -> evaluate against the FP32 teacher -> measure encode speed (FP32, ternary,
ONNX Runtime int8) -> FAISS index over real 20 Newsgroups documents, a few real queries side by side
with the teacher -> one summary table, a PNG plot and a model card, ready for ``ternary-hf push``.

Every stage keeps its result in ``<out>.work/`` (keyed by the settings that produced it), so a re-run
only repeats what changed and a killed run resumes distillation from its last checkpoint. The
published folder ``<out>`` is assembled in a temporary folder next to it and renamed at the very end:
Ctrl-C never leaves a half-written model there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .integrations.config import TernaryConfig
from .utils.io import check_output_folder, folder_fingerprint, replace_folder
from .utils.tables import format_table

__all__ = ["DemoConfig", "DemoSummary", "run_demo"]

_STATE = "demo_state.json"
_SUMMARY = "demo_summary.json"  # in every finished output folder; marks one a re-run may replace
_HEADLINE_METRICS = ("p@10", "accuracy", "v_measure")  # one number per task in the summary


@dataclass
class DemoConfig:
    """Settings of a demo run. Defaults: a 12-minute distillation and 300 texts per evaluation split
    (about 20 minutes in all on 2 cores); the tests run it with tiny ones."""

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
                raise ValueError(f"DemoConfig: {name}={getattr(self, name)!r} must be >= 1")
        if not self.minutes > 0:
            raise ValueError(f"DemoConfig: minutes={self.minutes!r} must be > 0")


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
        state_file = root / _STATE
        old = json.loads(state_file.read_text()) if state_file.is_file() else None
        if old is not None and old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            say(f"settings changed ({', '.join(changed)}): the stages that depend on them are redone")
            for key in changed:
                for stage in _DEPENDS.get(key, ()):
                    shutil.rmtree(root / stage, ignore_errors=True)
                    (root / f"{stage}.json").unlink(missing_ok=True)
        state_file.write_text(json.dumps(settings, indent=2, sort_keys=True))

    def json(self, name: str) -> Any | None:
        path = self.root / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, name: str, value: Any) -> None:
        tmp = self.root / f".{name}.json.tmp"
        tmp.write_text(json.dumps(value, indent=2))
        os.replace(tmp, self.root / f"{name}.json")


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
    import torch
    from sentence_transformers import SentenceTransformer

    from .data.corpora import real_sentences
    from .evaluation.onnx_baseline import OnnxEncoder, export_onnx, onnx_available
    from .evaluation.speed import measure_encode_speed

    texts = real_sentences(n)
    encoders: dict[str, Any] = {
        "fp32": SentenceTransformer(teacher_dir, device="cpu"),
        "ternary": SentenceTransformer(student_dir, device="cpu"),
    }
    note = ""
    ok, why = onnx_available()
    if ok:
        say("exporting the FP32 teacher to ONNX and quantizing it to int8 (cached) ...")
        paths = export_onnx(teacher_dir, cache.root / "onnx")
        encoders["onnx-int8"] = OnnxEncoder(paths["int8"], teacher_dir, threads=torch.get_num_threads())
    else:
        note = f"ONNX-int8 not measured: {why}"
    result = measure_encode_speed(encoders, texts, batch_size=32, rounds=2)
    return {"sentences_per_s": result.sentences_per_s, "n_sentences": result.n_sentences,
            "batch_size": result.batch_size, "threads": result.threads, "rounds": result.rounds, "note": note}


def _search(teacher_dir: str, student_dir: str, n_docs: int, n_queries: int) -> dict[str, Any]:
    """Index real 20NG training documents with each model; query with the openings of test documents."""
    from sentence_transformers import SentenceTransformer

    from .data.corpora import load_dataset
    from .search.index import SemanticIndex

    docs = load_dataset("20ng", "train", limit=n_docs, seed=0)
    tests = load_dataset("20ng", "test", limit=200, seed=1)
    queries, query_groups, seen = [], [], set()
    for text, label in zip(tests.texts, tests.labels, strict=True):  # one query per newsgroup
        if label in seen:
            continue
        seen.add(label)
        queries.append(" ".join(text.split()[:10]))
        query_groups.append(tests.label_names[label])
        if len(queries) == n_queries:
            break
    results: dict[str, Any] = {"queries": queries, "query_groups": query_groups, "n_docs": len(docs.texts)}
    hits_by_model: dict[str, list[list[Any]]] = {}
    for name, path in (("fp32", teacher_dir), ("ternary", student_dir)):
        model = SentenceTransformer(path, device="cpu")
        index = SemanticIndex(model, "Flat")
        index.add(docs.texts, ids=list(range(len(docs.texts))), show_progress_bar=True)
        hits = index.search(queries, k=10)
        hits_by_model[name] = [[h.id for h in row] for row in hits]
        results[name] = [
            [{"group": docs.label_names[docs.labels[h.id]], "score": round(float(h.score), 4),
              "text": docs.texts[h.id][:80]} for h in row[:3]] for row in hits]
        results[f"{name}_same_group_at_10"] = sum(
            docs.label_names[docs.labels[h.id]] == g for row, g in zip(hits, query_groups, strict=True) for h in row
        ) / (10 * len(queries))
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(hits_by_model["fp32"], hits_by_model["ternary"], strict=True)]
    results["top10_overlap"] = sum(overlap) / len(overlap)
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
def run_demo(cfg: DemoConfig | None = None, say: Callable[[str], None] = print) -> DemoSummary:
    """Run (or resume) the whole main job; see the module docstring."""
    from sentence_transformers import SentenceTransformer

    from .data.defaults import default_model_path
    from .evaluation.tasks import EvaluationResult, evaluate, plot_results
    from .hub.model_card import write_model_card
    from .ptq.quantize import QuantizeReport, checkpoint_bytes, quantize_folder
    from .train.loop import DistillConfig, distill

    cfg = cfg or DemoConfig()
    started = time.time()
    teacher = str(cfg.teacher or default_model_path())
    out = check_output_folder(Path(cfg.out).resolve(), marker=_SUMMARY,
                              hint="remove it if it is yours to replace")
    dcfg_kwargs: dict[str, Any] = dict(max_steps=cfg.max_steps, max_minutes=cfg.minutes, batch_size=cfg.batch_size,
                                       max_length=cfg.max_length, save_every=25, log_every=10)
    if cfg.learning_rate is not None:
        dcfg_kwargs["learning_rate"] = cfg.learning_rate
    dcfg = DistillConfig(**dcfg_kwargs)
    settings = {"teacher": folder_fingerprint(teacher), "ternary_config": cfg.ternary_config.to_dict(),
                "distill": asdict(dcfg), "eval_limit": cfg.eval_limit, "speed_sentences": cfg.speed_sentences,
                "index": [cfg.index_docs, cfg.n_queries]}
    cache = _Cache(out.with_name(out.name + ".work"), settings, cfg.fresh, say)
    reused: list[str] = []

    # 1. plain post-training ternarization: the starting point, and what distillation improves on
    say(f"[1/6] quantize {teacher} -> ternary (2-bit weights, per-channel scales)")
    plain_dir = cache.root / "plain"
    if (plain_dir / "ternary_quantize.json").is_file():
        plain = QuantizeReport(**json.loads((plain_dir / "ternary_quantize.json").read_text()))
        reused.append("quantize")
    else:
        plain = quantize_folder(teacher, plain_dir, config=cfg.ternary_config, overwrite=True)
    say(plain.summary())

    # 2. distillation: resumes from <out>.work/distill after a kill
    student_dir = cache.root / "student"
    say(f"[2/6] distill: the FP32 model teaches its ternary copy ({cfg.minutes:g} min budget, "
        f"at most {cfg.max_steps} steps; Ctrl-C and re-run to resume)")
    if (student_dir / "distillation.json").is_file():
        info = json.loads((student_dir / "distillation.json").read_text())
        reused.append("distill")
    else:
        distill(teacher, student_dir, ternary_config=cfg.ternary_config, config=dcfg,
                work_dir=cache.root / "distill")
        info = json.loads((student_dir / "distillation.json").read_text())
    say(f"distilled {info['steps']} steps in {info['seconds'] / 60:.1f} min (final loss {info['final_loss']:.4f})")

    # 3. reload from the 2-bit safetensors with sentence-transformers and evaluate against the teacher
    say("[3/6] reload the 2-bit model with sentence-transformers and evaluate it against the FP32 teacher")
    student = SentenceTransformer(str(student_dir), device="cpu")
    cached_eval = cache.json("evaluation")
    if cached_eval is not None:
        evaluation = EvaluationResult.from_dict(cached_eval)
        reused.append("evaluation")
    else:
        evaluation = evaluate(student, teacher=teacher, limit=cfg.eval_limit, label="ternary (distilled)")
        cache.put("evaluation", evaluation.to_dict())
    del student

    # 4. speed
    say(f"[4/6] encode speed on {cfg.speed_sentences} real sentences (batch 32): FP32 vs ternary vs ONNX-int8")
    speed = cache.json("speed")
    if speed is not None:
        reused.append("speed")
    else:
        speed = _speed(teacher, str(student_dir), cache, cfg.speed_sentences, say)
        cache.put("speed", speed)

    # 5. search
    say(f"[5/6] FAISS search over {cfg.index_docs} real 20 Newsgroups posts, FP32 teacher vs ternary")
    search = cache.json("search")
    if search is not None:
        reused.append("search")
    else:
        search = _search(teacher, str(student_dir), cfg.index_docs, cfg.n_queries)
        cache.put("search", search)
    _print_queries(search, say)

    # 6. publish: assemble next to <out>, rename at the end
    quality = {f"{m.task} {m.metric}": (float(m.teacher), float(m.student), m.retention) for m in evaluation.metrics
               if m.metric in _HEADLINE_METRICS and m.student is not None and m.teacher is not None}
    agreement = {m.metric: float(m.student) for m in evaluation.metrics
                 if m.task == "teacher-agreement" and m.student is not None}
    summary = DemoSummary(
        output_dir=str(out), teacher=teacher, distill_steps=int(info["steps"]),
        distill_seconds=float(info["seconds"]),
        size_bytes={"fp32": checkpoint_bytes(teacher), "ternary": checkpoint_bytes(student_dir)},
        speed=speed, quality=quality, teacher_agreement=agreement, search=search,
        plain={"size_ratio": plain.size_ratio, "mean_cosine": plain.mean_cosine},
        seconds=time.time() - started, reused=reused,
    )
    say("[6/6] write the model folder, the plot and the model card")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model_dir = staging / "model"
        shutil.copytree(student_dir, model_dir)
        evaluation.to_json(model_dir / "eval_results.json")
        plot_results(evaluation, model_dir / "retention.png")
        (model_dir / _SUMMARY).write_text(json.dumps(asdict(summary), indent=2))
        write_model_card(model_dir, cfg.repo_id)  # base model: from distillation.json's teacher
        replace_folder(model_dir, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say("\n" + format_summary(summary))
    say(f"\nternary model, plot and model card: {out}\n"
        f"push it with: ternary-hf push {out} {cfg.repo_id}"
        + (f"\n(reused from {cache.root}: {', '.join(reused)}; --fresh redoes everything)" if reused else ""))
    return summary
