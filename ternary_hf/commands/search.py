"""``ternary-hf search build|query``: a FAISS index over a text corpus from the command line.

``build`` streams the corpus file (JSONL records or one text per line) through a model into a
:class:`ternary_hf.search.SemanticIndex` folder, built beside the output and swapped in whole (a folder
that is not an index is refused without ``--overwrite``); ``query`` loads such a folder and prints the
top hits, encoding the query with the recorded model or ``--model`` (e.g. the ternary student querying
an index built by its FP32 teacher).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("search", help="build and query FAISS indexes of a text corpus")
    sub = parser.add_subparsers(dest="search_command", metavar="ACTION")

    build = sub.add_parser("build", help="encode a corpus file and save an index folder")
    build.add_argument("model", help="sentence-transformers model folder or name (ternary folders work)")
    build.add_argument("corpus", help="JSONL file (one object per line) or text file (one document per line)")
    build.add_argument("out", help="output folder for the index")
    build.add_argument(
        "--index", default="Flat",
        help="FAISS index: Flat (exact), HNSW32, IVF256,PQ16, SQ8, binary, binary,HNSW32, or any "
             "faiss.index_factory string supporting inner product (default: Flat)",
    )
    build.add_argument(
        "--truncate-dim", type=int, default=None, help="keep the first N dimensions (Matryoshka)"
    )
    build.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    build.add_argument(
        "--id-field", default=None,
        help="JSONL field holding the document id (default: the line number, starting at 1)",
    )
    build.add_argument(
        "--rescore", default="auto", choices=["auto", "none", "int8", "float16", "float32"],
        help="vectors kept to rescore candidates (auto: int8 for binary indexes, none otherwise)",
    )
    build.add_argument("--train-size", type=int, default=None, help="vectors used to train IVF/PQ/SQ indexes")
    build.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default: 32)")
    build.add_argument("--no-texts", action="store_true", help="do not store document texts in the index")
    build.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    build.add_argument("--overwrite", action="store_true",
                       help="replace OUT even when it is a folder that is not an index (an index is always rebuilt)")
    build.set_defaults(func=run_build)

    query = sub.add_parser("query", help="search an index folder")
    query.add_argument("index_dir", help="folder written by `ternary-hf search build`")
    query.add_argument("queries", nargs="+", help="query text(s)")
    query.add_argument(
        "--model", default=None, help="query encoder (default: the model recorded in the index)"
    )
    query.add_argument("-k", type=int, default=10, help="number of results per query (default: 10)")
    query.add_argument("--json", action="store_true", help="print one JSON object per query")
    query.set_defaults(func=run_query)

    parser.set_defaults(func=lambda args: _help(parser))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _load_model(name: str, role: str) -> Any:
    from ..evaluation.encoders import open_sentence_transformer

    return open_sentence_transformer(name, role=role, device="cpu", hub_names=True)


def run_build(args: argparse.Namespace) -> int:
    from ..data.texts import read_corpus
    from ..errors import MissingInputError
    from ..search import SemanticIndex
    from ..search.persist import check_index_output, staged_index_folder, write_index_files

    hint = "pass --overwrite to replace it"
    check_index_output(args.out, overwrite=args.overwrite, hint=hint)  # before the model loads
    if not Path(args.corpus).is_file():
        raise MissingInputError(f"corpus file {args.corpus} not found; pass a JSONL or text file")
    model = _load_model(args.model, "model")
    with staged_index_folder(args.out, overwrite=args.overwrite, hint=hint) as staging:
        index = SemanticIndex.build(
            model,
            read_corpus(args.corpus, args.text_field, args.id_field),
            index_factory=args.index,
            truncate_dim=args.truncate_dim,
            rescore=None if args.rescore == "none" else args.rescore,
            train_size=args.train_size,
            batch_size=args.batch_size,
            store_texts=not args.no_texts,
            show_progress_bar=not args.no_progress,
            model_name=str(Path(args.model).resolve()) if Path(args.model).exists() else str(args.model),
            work_dir=staging,  # the side files are written where the index is assembled, not in /tmp
        )
        write_index_files(index, staging)
        sizes = index.nbytes()
    print(
        f"indexed {index.ntotal} documents with {args.model} into {args.out} "
        f"({args.index}, dim {index.dim}, {sizes['index'] / index.ntotal:.1f} index bytes/vector"
        + (f" + {sizes['rescore'] / index.ntotal:.1f} rescore bytes/vector" if sizes["rescore"] else "")
        + ")"
    )
    return 0


def run_query(args: argparse.Namespace) -> int:
    from ..errors import InvalidInputError
    from ..search import SemanticIndex
    from ..search.persist import read_metadata

    meta = read_metadata(args.index_dir)
    model_name = args.model or meta.get("query_model_name") or meta.get("model_name")
    if not model_name:
        raise InvalidInputError(f"the index {args.index_dir} records no model; pass --model")
    model = _load_model(model_name, "query model" if args.model else "recorded model (pass --model to choose another)")
    index = SemanticIndex.load(args.index_dir, query_model=model)
    recorded = meta.get("query_model_quantization") or meta.get("model_quantization")
    if not args.model and recorded and index.query_model_quantization is None:
        method = recorded.get("quant_method", "quantized") if isinstance(recorded, dict) else "quantized"
        print(
            f"ternary-hf search: note: the index was built with a {method} "
            f"model quantized on the fly from {model_name}, which loaded as a plain model; pass --model "
            "with the saved quantized folder to query with the same weights",
            file=sys.stderr,
        )
    results = index.search(args.queries, k=args.k)
    for query, hits in zip(args.queries, results, strict=True):
        if args.json:
            print(json.dumps({"query": query, "hits": [
                {"rank": r, "id": h.id, "score": round(h.score, 6), "text": h.text}
                for r, h in enumerate(hits, 1)
            ]}, ensure_ascii=False))
            continue
        print(f"query: {query}")
        for rank, hit in enumerate(hits, start=1):
            text = "" if hit.text is None else " ".join(hit.text.split())
            if len(text) > 100:
                text = text[:97] + "..."
            print(f"{rank:3d}. {hit.score:.4f}  [{hit.id}]  {text}")
    return 0
