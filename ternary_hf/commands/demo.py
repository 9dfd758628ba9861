"""``ternary-hf demo``: the main job on the bundled all-MiniLM-L6-v2.

Today: ternarize the bundled model, save it as 2-bit safetensors, reload it with
sentence-transformers, and print size ratio and teacher-vs-ternary cosine. A re-run reuses the
saved folder (pass ``--fresh`` to rebuild).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import add_config_arguments, config_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the main job on the bundled all-MiniLM-L6-v2")
    parser.add_argument("--out", default="ternary-minilm-l6", help="output folder (default: ./ternary-minilm-l6)")
    parser.add_argument("--fresh", action="store_true", help="rebuild even if OUT exists")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sentence_transformers import SentenceTransformer

    from ..defaults import default_model_path
    from ..quantize import QuantizeReport, quantize_folder

    out = Path(args.out)
    report_file = out / "ternary_quantize.json"
    if report_file.is_file() and not args.fresh:
        report = QuantizeReport(**json.loads(report_file.read_text()))
        print(f"reusing {out} (pass --fresh to rebuild)")
    else:
        try:
            source = default_model_path()
        except ImportError as exc:
            print(f"ternary-hf demo: error: {exc}", file=sys.stderr)
            return 1
        report = quantize_folder(source, out, config=config_from_args(args), overwrite=True)
    reloaded = SentenceTransformer(str(out), device="cpu")
    queries = ["How do I ternarize an embedding model?", "Ternary weights make models small."]
    emb = reloaded.encode(queries, normalize_embeddings=True)
    print(report.summary())
    print(f"reloaded with sentence-transformers: {emb.shape[0]} embeddings of dim {emb.shape[1]}, "
          f"cos(q0, q1) = {float(emb[0] @ emb[1]):.3f}")
    return 0
