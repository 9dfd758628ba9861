"""``ternary-hf bench MODEL --teacher T``: encode speed of a (ternary) model beside its FP32 teacher.

For the per-layer and the full end-to-end comparisons (bitsandbytes, torch dynamic int8, peak RSS,
MPNet) see ``benchmarks/``; this command answers the everyday question "how much faster is my model
than the one it came from, on this machine", side by side in one process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time SentenceTransformer.encode of a model beside its FP32 teacher (and ONNX Runtime int8)",
        description="Encode the same real sentences with MODEL and, given --teacher, the FP32 teacher (and with "
        "--onnx the teacher exported to ONNX Runtime int8), in interleaved rounds in one process; print "
        "sentences/s, the ratio to the teacher and the batch-1 latency.",
    )
    parser.add_argument("model", metavar="MODEL", help="sentence-transformers folder (a ternary one, typically)")
    parser.add_argument("--teacher", default=None, help="FP32 folder to compare with (the ratios' reference)")
    parser.add_argument("--onnx", action="store_true",
                        help="also the teacher in ONNX Runtime int8 (needs --teacher; pip install 'ternary-hf[onnx]')")
    parser.add_argument("--sentences", type=int, default=500, help="real sentences to encode (tweets, at most 917)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--latency", type=int, default=50, metavar="N",
                        help="batch-1 latency: median over N single sentences (0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from sentence_transformers import SentenceTransformer

    import ternary_hf  # noqa: F401  (registers the quantizer before a ternary folder is loaded)

    from ..data.corpora import DatasetError, real_sentences
    from ..evaluation.speed import measure_encode_speed

    if args.onnx and not args.teacher:
        print("ternary-hf bench: error: --onnx exports the teacher: give --teacher too", file=sys.stderr)
        return 1
    for path in filter(None, (args.model, args.teacher)):
        if not Path(path).is_dir():
            print(f"ternary-hf bench: error: {path} is not a model folder", file=sys.stderr)
            return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        texts = real_sentences(args.sentences)
        encoders = {}
        if args.teacher:
            encoders["teacher (FP32)"] = SentenceTransformer(args.teacher, device="cpu")
        encoders[Path(args.model).name or args.model] = SentenceTransformer(args.model, device="cpu")
        with tempfile.TemporaryDirectory(prefix="ternary-hf-bench-") as tmp:
            if args.onnx:
                from ..evaluation.onnx_baseline import OnnxEncoder, export_onnx, onnx_available

                ok, why = onnx_available()
                if not ok:
                    raise ValueError(f"ONNX Runtime int8 not available: {why}")
                print("exporting the teacher to ONNX and quantizing it to int8 ...", file=sys.stderr)
                paths = export_onnx(args.teacher, tmp)
                encoders["teacher ONNX int8"] = OnnxEncoder(paths["int8"], args.teacher,
                                                            threads=torch.get_num_threads())
            result = measure_encode_speed(encoders, texts, batch_size=args.batch_size, rounds=args.rounds,
                                          latency_sentences=args.latency)
    except (ValueError, OSError, DatasetError) as exc:
        print(f"ternary-hf bench: error: {exc}", file=sys.stderr)
        return 1
    print(f"{result.n_sentences} real sentences, batch {result.batch_size}, {result.threads} threads, "
          f"best of {result.rounds} interleaved rounds")
    print(result.table())
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0
