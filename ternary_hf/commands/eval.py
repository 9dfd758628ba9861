"""``ternary-hf eval MODEL``: score a model (and its teacher) on real data; table, JSON and PNG out."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..evaluation import TASKS

    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model (and a teacher) on real-data retrieval, classification and clustering",
        description="Evaluate MODEL (a sentence-transformers folder, FP32 or ternary) on real data fetched "
        "from package registries; with --teacher, also the teacher and the retention (student / teacher). "
        "Tasks: " + "; ".join(f"{name}: {text}" for name, text in TASKS.items()),
    )
    parser.add_argument("model", metavar="MODEL", help="model folder")
    parser.add_argument("--teacher", metavar="TEACHER", default=None, help="reference model folder")
    parser.add_argument(
        "--tasks", nargs="+", metavar="TASK", default=None, help=f"subset of: {', '.join(TASKS)} (default: all)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="at most N texts per split of each data set (seeded sample)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets and of the fitted models")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads while encoding")
    parser.add_argument("--device", default=None, help="torch device (default: sentence-transformers' choice)")
    parser.add_argument("--label", default=None, help="name of MODEL in the table and plot")
    parser.add_argument("--out", metavar="JSON", default=None, help="write the result as JSON")
    parser.add_argument("--plot", metavar="PNG", default=None, help="write a retention plot")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="JSON",
        default=[],
        help="earlier results to draw in the same plot (quality vs size vs speed)",
    )
    parser.add_argument("--cache-dir", default=None, help="data cache folder (default: $TERNARY_HF_CACHE/data)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import DatasetError
    from ..errors import ResourceUnavailableError
    from ..evaluation import evaluate, load_results, plot_results

    previous = load_results(args.compare)
    settings = dict(teacher=args.teacher, tasks=args.tasks, limit=args.limit, seed=args.seed,
                    batch_size=args.batch_size, show_progress_bar=not args.no_progress, device=args.device,
                    cache_dir=args.cache_dir, label=args.label, num_threads=args.threads)
    try:
        result = evaluate(args.model, **settings)
    except DatasetError as exc:  # until ternary_hf.data's errors derive from TernaryHfError
        raise ResourceUnavailableError(str(exc)) from None
    print(result.to_table())
    if args.out:
        result.to_json(args.out)
        print(f"wrote {args.out}")
    if args.plot:
        plot_results([*previous, result], args.plot)
        print(f"wrote {args.plot}")
    return 0
