"""FAISS index types side by side for FP32-teacher and ternary embeddings of real 20 Newsgroups posts.

Why this script: a ternary model is used through a search index, so the question is not only "how
close are its embeddings" but "what does each index type cost and keep" with them — and whether the
cheap trick of asymmetric search (documents indexed once with the FP32 teacher, queries encoded by the
small ternary student) beats an index built from ternary embeddings.

One run, same documents and queries for every row:

1. Encode ``--docs`` 20NG train posts and ``--queries`` 20NG test posts with the teacher (the bundled
   all-MiniLM-L6-v2, or ``--teacher``) and the student (``--student`` folder, else the plain ternary
   model: the teacher loaded with ``quantization_config=TernaryConfig()``). Embeddings are cached in
   ``--cache-dir`` so a re-run only times the indexes.
2. For each embedding set and each index type (Flat, HNSW32, IVF{n},PQ32 alone and with int8
   rescoring, SQ8, binary alone and with int8 rescoring of ``--rescore-multiplier`` x 10
   candidates): bytes per vector (serialised FAISS index, plus rescoring vectors; the fixed part —
   centroids, codebooks — apart), build time from embeddings, queries per second at k=10 (best of
   ``--reps``, ``--threads`` FAISS threads), and recall@10 against exact float search (Flat) over
   the same embeddings.
3. Query-by-example on 20NG (P@10: share of the top 10 from the query's newsgroup) and the top-10
   overlap with the teacher's own results, for teacher->teacher, student->student and
   student->teacher (asymmetric) search, with the Flat and binary+rescore indexes.

The machine (CPU, cores, load), library versions and sizes are printed first; ``--out`` also writes
the numbers as JSON. Usage::

    python benchmarks/bench_search.py                       # 2,000 docs, 200 queries, seq len 128
    python benchmarks/bench_search.py --docs 11293 --queries 1000 --max-seq-length 256
    python benchmarks/bench_search.py --student ./distilled-minilm --out search.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import cpu_model

from ternary_hf.search import SemanticIndex, recall_at_k
from ternary_hf.utils.tables import format_table


def machine_line() -> str:
    import faiss
    import sentence_transformers
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores, load avg {load[0]:.2f}; python "
        f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"faiss {faiss.__version__}, sentence-transformers {sentence_transformers.__version__}"
    )


def load_corpus(n_docs: int, n_queries: int, seed: int):
    try:
        from ternary_hf.data.corpora import DatasetError, load_dataset
    except ImportError as exc:
        sys.exit(f"bench_search: ternary_hf.data.corpora is not available ({exc}); it provides the real 20NG "
                 "documents this benchmark needs")
    try:
        docs = load_dataset("20ng", "train", limit=n_docs, seed=seed)
        queries = load_dataset("20ng", "test", limit=n_queries, seed=seed)
    except DatasetError as exc:
        sys.exit(f"bench_search: 20 Newsgroups is not available: {exc}")
    return docs, queries


class Models:
    """The FP32 teacher and the ternary student, loaded on first use only (cached embeddings need neither)."""

    def __init__(self, teacher_path: str | None, student_path: str | None, max_seq_length: int) -> None:
        import ternary_hf
        from ternary_hf.data.defaults import default_model_path

        teacher_path = str(teacher_path or default_model_path())
        self.paths = {"teacher": teacher_path, "student": student_path or teacher_path}
        self.config = None if student_path else ternary_hf.TernaryConfig()
        self.names = {
            "teacher": teacher_path,
            "student": student_path or "plain ternary (TernaryConfig() on the fly, no distillation)",
        }
        config_key = None if self.config is None else json.dumps(self.config.to_dict(), sort_keys=True)
        self.cache_keys = {"teacher": teacher_path, "student": student_path or f"ternary:{config_key}"}
        self.max_seq_length = max_seq_length
        self._loaded: dict[str, object] = {}

    def get(self, label: str):
        """The model, warmed up (a first call may build the CPU kernel, which should not be timed)."""
        if label not in self._loaded:
            from sentence_transformers import SentenceTransformer

            kwargs = {}
            if label == "student" and self.config is not None:
                kwargs["model_kwargs"] = {"quantization_config": self.config}
            model = SentenceTransformer(self.paths[label], device="cpu", local_files_only=True, **kwargs)
            model.max_seq_length = min(model.max_seq_length, self.max_seq_length)
            model.encode(["warm up", "a second, slightly longer warm-up sentence"], show_progress_bar=False)
            self._loaded[label] = model
        return self._loaded[label]


def encode_cached(models: Models, label: str, texts: list[str], what: str, cache_dir: Path, batch_size: int):
    """Encode (or read back) raw float32 embeddings; returns (embeddings, docs per second or None)."""
    key_parts = [models.cache_keys[label], models.max_seq_length, what, len(texts), texts[:3], texts[-1:]]
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:16]
    path = cache_dir / f"{key}.npy"
    if path.exists():
        return np.load(path), None
    model = models.get(label)
    t0 = time.perf_counter()
    emb = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=True)
    rate = len(texts) / (time.perf_counter() - t0)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, emb.astype(np.float32))
    return emb.astype(np.float32), rate


def index_types(n_docs: int, multiplier: int) -> list[tuple[str, str, dict]]:
    nlist = 2 ** max(3, round(math.log2(2 * math.sqrt(n_docs))))
    pq = f"IVF{nlist},PQ32"
    rescore = {"rescore": "int8", "rescore_multiplier": multiplier}
    ivfpq = [(pq, pq, {}), (f"{pq}+int8 rescore", pq, rescore)] if n_docs >= 256 else []  # PQ trains on 256+
    return [
        ("Flat", "Flat", {}),
        ("HNSW32", "HNSW32", {}),
        *ivfpq,
        ("SQ8", "SQ8", {}),
        ("binary", "binary", {"rescore": None}),
        ("binary+int8 rescore", "binary", rescore),
    ]


def bytes_per_vector(index: SemanticIndex) -> tuple[float, float, int]:
    """(index bytes per added vector, rescore bytes per vector, fixed bytes of the trained empty index).

    The fixed part (IVF centroids, PQ codebooks) is reported apart: on a small corpus it would
    otherwise dominate the per-vector figure.
    """
    import faiss

    sizes = index.nbytes()
    empty = faiss.clone_binary_index(index.index) if index.binary else faiss.clone_index(index.index)
    empty.reset()
    ser = faiss.serialize_index_binary(empty) if index.binary else faiss.serialize_index(empty)
    fixed = int(ser.size)
    return (sizes["index"] - fixed) / index.ntotal, sizes["rescore"] / index.ntotal, fixed


def time_search(index: SemanticIndex, queries: np.ndarray, k: int, reps: int) -> tuple[float, np.ndarray]:
    best, pos = math.inf, None
    for _ in range(reps):
        t0 = time.perf_counter()
        _, pos = index.search_arrays(queries, k)
        best = min(best, time.perf_counter() - t0)
    return len(queries) / best, pos


def bench_indexes(
    label: str, docs: np.ndarray, queries: np.ndarray, k: int, reps: int, multiplier: int
) -> list[dict]:
    rows = []
    exact = None
    for name, factory, kwargs in index_types(len(docs), multiplier):
        t0 = time.perf_counter()
        index = SemanticIndex.from_embeddings(docs, factory, **kwargs)
        build = time.perf_counter() - t0
        qps, pos = time_search(index, queries, k, reps)
        if exact is None:
            exact = pos  # the first row is Flat: exact float search
        per_vec, rescore_per_vec, fixed = bytes_per_vector(index)
        rows.append({
            "embeddings": label, "index": name, "factory": factory, **kwargs,
            "index_bytes_per_vector": per_vec, "rescore_bytes_per_vector": rescore_per_vec,
            "fixed_bytes": fixed,
            "build_s": build, "qps": qps, "recall@10": recall_at_k(pos, exact, k),
        })
        print(f"  {label:8s} {name:22s} done", file=sys.stderr)
    return rows


def precision_at_k(pos: np.ndarray, doc_labels: np.ndarray, query_labels: np.ndarray) -> float:
    return float((doc_labels[pos] == query_labels[:, None]).mean())


def bench_asymmetric(t_docs, t_queries, s_docs, s_queries, doc_labels, query_labels, k: int) -> list[dict]:
    rows = []
    kinds = (("Flat", "Flat", {}), ("binary+int8 rescore", "binary", {"rescore": "int8"}))
    for name, factory, kwargs in kinds:
        teacher_index = SemanticIndex.from_embeddings(t_docs, factory, **kwargs)
        student_index = SemanticIndex.from_embeddings(s_docs, factory, **kwargs)
        reference = teacher_index.search_arrays(t_queries, k)[1]
        for mode, index, q in (
            ("teacher -> teacher index", teacher_index, t_queries),
            ("student -> student index", student_index, s_queries),
            ("student -> teacher index (asymmetric)", teacher_index, s_queries),
        ):
            pos = index.search_arrays(q, k)[1]
            rows.append({
                "index": name, "mode": mode, "P@10": precision_at_k(pos, doc_labels, query_labels),
                "overlap@10 with teacher": recall_at_k(pos, reference, k),
            })
    return rows


def print_tables(index_rows: list[dict], asym_rows: list[dict]) -> None:
    print("\n## Index types (recall@10 vs exact float search over the same embeddings)\n")
    header = ["embeddings", "index", "bytes/vector (index + rescore)", "fixed KB", "build s", "QPS", "recall@10"]
    rows = []
    for r in index_rows:
        extra = f" + {r['rescore_bytes_per_vector']:.0f}" if r["rescore_bytes_per_vector"] else ""
        rows.append([r["embeddings"], r["index"], f"{r['index_bytes_per_vector']:.1f}{extra}",
                     f"{r['fixed_bytes'] / 1024:.0f}", f"{r['build_s']:.2f}", f"{r['qps']:,.0f}",
                     f"{r['recall@10']:.3f}"])
    print(format_table(header, rows, style="markdown", left=2))
    by = {(r["embeddings"], r["index"]): r for r in index_rows}
    print("\nstudent / teacher ratios (same index type): ", end="")
    ratios = []
    for (emb, name), r in by.items():
        if emb == "student" and ("teacher", name) in by:
            t = by[("teacher", name)]
            delta = r["recall@10"] - t["recall@10"]
            ratios.append(f"{name}: QPS x{r['qps'] / t['qps']:.2f}, recall {delta:+.3f}")
    print("; ".join(ratios))
    print("\n## 20NG query-by-example: asymmetric (teacher documents, student queries) vs ternary-only\n")
    rows = [[r["index"], r["mode"], f"{r['P@10']:.3f}", f"{r['overlap@10 with teacher']:.3f}"] for r in asym_rows]
    print(format_table(["index", "queries -> documents", "P@10", "top-10 overlap with teacher"], rows,
                       style="markdown", left=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=2000, help="20NG train posts indexed (default 2000)")
    parser.add_argument("--queries", type=int, default=200, help="20NG test posts as queries (default 200)")
    parser.add_argument("--teacher", default=None, help="FP32 model folder (default: bundled MiniLM-L6)")
    parser.add_argument("--student", default=None, help="ternary model folder (default: plain ternary)")
    parser.add_argument("--max-seq-length", type=int, default=128, help="token limit (default 128)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads (default 1)")
    parser.add_argument("--reps", type=int, default=3, help="search repetitions, best kept (default 3)")
    parser.add_argument(
        "--rescore-multiplier", type=int, default=4, help="candidates rescored per result (default 4)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache-dir", default=str(Path(tempfile.gettempdir()) / "ternary_hf_bench_search"),
        help="where encoded embeddings are cached between runs",
    )
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    k = 10
    print(machine_line())
    docs, queries = load_corpus(args.docs, args.queries, args.seed)
    models = Models(args.teacher, args.student, args.max_seq_length)
    t_name, s_name = models.names["teacher"], models.names["student"]
    cache = Path(args.cache_dir)
    rates = {}
    emb = {}
    for label in ("teacher", "student"):
        bs = args.batch_size
        emb[label, "docs"], rates[label] = encode_cached(models, label, docs.texts, "20ng-train", cache, bs)
        emb[label, "queries"], _ = encode_cached(models, label, queries.texts, "20ng-test", cache, bs)
    print(f"teacher: {t_name}\nstudent: {s_name}")
    print(f"corpus: {len(docs)} 20NG train posts, {len(queries)} 20NG test posts as queries, "
          f"max_seq_length {args.max_seq_length}, dim {emb['teacher', 'docs'].shape[1]}, k={k}, "
          f"FAISS threads {args.threads}")
    for label in ("teacher", "student"):
        rate = rates[label]
        print(f"encoding {label}: " + (f"{rate:.1f} docs/s" if rate else "from cache (not timed this run)"))
    t = emb["teacher", "docs"] / np.linalg.norm(emb["teacher", "docs"], axis=1, keepdims=True)
    s = emb["student", "docs"] / np.linalg.norm(emb["student", "docs"], axis=1, keepdims=True)
    print(f"mean cosine(student, teacher) over the documents: {float((t * s).sum(1).mean()):.3f}")

    import faiss

    faiss.omp_set_num_threads(args.threads)  # after encoding: it also sets torch's OpenMP pool

    index_rows = []
    for label in ("teacher", "student"):
        index_rows += bench_indexes(
            label, emb[label, "docs"], emb[label, "queries"], k, args.reps, args.rescore_multiplier
        )
    asym_rows = bench_asymmetric(
        emb["teacher", "docs"], emb["teacher", "queries"], emb["student", "docs"], emb["student", "queries"],
        np.asarray(docs.labels), np.asarray(queries.labels), k,
    )
    print_tables(index_rows, asym_rows)
    if args.out:
        Path(args.out).write_text(json.dumps({
            "machine": machine_line(), "teacher": t_name, "student": s_name, "docs": len(docs),
            "queries": len(queries), "max_seq_length": args.max_seq_length, "encode_docs_per_s": rates,
            "indexes": index_rows, "asymmetric": asym_rows,
        }, indent=2))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
