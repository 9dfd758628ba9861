"""``ternary-hf bench MODEL --teacher T``: encode speed of a (ternary) model beside its FP32 teacher.

For the per-layer and the full end-to-end comparisons (bitsandbytes, torch dynamic int8, peak RSS,
MPNet) see ``benchmarks/``; this command answers the everyday question "how much faster is my model
than the one it came from, on this machine", side by side in one process.
"""

from __future__ import annotations

import argparse
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

    from ..errors import InvalidInputError, MissingInputError
    from ..evaluation.encoders import open_sentence_transformer
    from ..evaluation.onnx_baseline import onnx_int8_encoder
    from ..evaluation.speed import measure_encode_speed
    from ..utils.io import atomic_write_json

    if args.onnx and not args.teacher:
        raise InvalidInputError("--onnx exports the teacher: give --teacher too")
    for path in filter(None, (args.model, args.teacher)):
        if not Path(path).is_dir():
            raise MissingInputError(f"{path} is not a model folder; pass a sentence-transformers folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = _sentences(args.sentences)
    encoders = {}
    if args.teacher:
        encoders["teacher (FP32)"] = open_sentence_transformer(args.teacher, "teacher", device="cpu")
    encoders[Path(args.model).name or args.model] = open_sentence_transformer(args.model, "model", device="cpu")
    with tempfile.TemporaryDirectory(prefix="ternary-hf-bench-") as tmp:
        if args.onnx:
            encoders["teacher ONNX int8"] = onnx_int8_encoder(args.teacher, tmp,
                                                              say=lambda msg: print(msg, file=sys.stderr))
        result = measure_encode_speed(encoders, texts, batch_size=args.batch_size, rounds=args.rounds,
                                      latency_sentences=args.latency)
    print(f"{result.n_sentences} real sentences, batch {result.batch_size}, {result.threads} threads, "
          f"best of {result.rounds} interleaved rounds")
    print(result.table())
    if args.json:
        atomic_write_json(args.json, result.to_dict())
    return 0


def _sentences(n: int) -> list[str]:
    from ..data import DatasetError, real_sentences
    from ..errors import InvalidInputError, ResourceUnavailableError

    try:
        return real_sentences(n)
    except DatasetError as exc:  # until ternary_hf.data's errors derive from TernaryHfError
        raise ResourceUnavailableError(str(exc)) from None
    except ValueError as exc:
        raise InvalidInputError(f"--sentences {n}: {exc}") from None
