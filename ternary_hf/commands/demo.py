"""``ternary-hf demo``: the main job on the bundled all-MiniLM-L6-v2 (see :mod:`ternary_hf.demo`)."""

from __future__ import annotations

import argparse
import sys

from ._common import add_config_arguments, config_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..demo import DemoConfig

    d = DemoConfig()
    parser = subparsers.add_parser(
        "demo", help="the main job: quantize, distill, evaluate, benchmark and search with the bundled MiniLM",
        description="quantize -> distill -> save 2-bit safetensors -> reload -> evaluate vs FP32 -> speed vs FP32 "
        "and ONNX-int8 -> FAISS search over 20 Newsgroups -> summary table, plot and model card in OUT. "
        "Results are cached in OUT.work: a re-run is fast, an interrupted run resumes.",
    )
    parser.add_argument("--out", default=d.out, help=f"output folder (default: ./{d.out})")
    parser.add_argument("--teacher", default=None, help="float sentence-transformers folder (default: bundled MiniLM)")
    parser.add_argument("--minutes", type=float, default=d.minutes, help="distillation time budget in minutes")
    parser.add_argument("--steps", type=int, default=d.max_steps, help="at most this many distillation steps")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--max-length", type=int, default=d.max_length)
    parser.add_argument("--lr", type=float, default=None, help="distillation learning rate")
    parser.add_argument("--eval-limit", type=int, default=d.eval_limit, help="texts per evaluation split")
    parser.add_argument("--speed-sentences", type=int, default=d.speed_sentences)
    parser.add_argument("--index-docs", type=int, default=d.index_docs, help="20NG posts in the search demo")
    parser.add_argument("--queries", type=int, default=d.n_queries, help="number of example queries")
    parser.add_argument("--repo-id", default=d.repo_id, help="repo id written into the model card")
    parser.add_argument("--fresh", action="store_true", help="ignore the cache in OUT.work and redo everything")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, run_demo

    try:
        cfg = DemoConfig(out=args.out, teacher=args.teacher, minutes=args.minutes, max_steps=args.steps,
                         batch_size=args.batch_size, max_length=args.max_length, learning_rate=args.lr,
                         eval_limit=args.eval_limit, speed_sentences=args.speed_sentences,
                         index_docs=args.index_docs, n_queries=args.queries, repo_id=args.repo_id,
                         fresh=args.fresh, ternary_config=config_from_args(args))
        run_demo(cfg)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {args.out} is untouched; run the same command again to resume "
              f"(cached stages and distillation checkpoints are in {args.out}.work)", file=sys.stderr)
        return 130
    return 0
