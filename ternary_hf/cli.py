"""Entry point of the ``ternary-hf`` command line (see ``ternary_hf.commands`` for the subcommands)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .commands import COMMAND_MODULES
from .errors import TernaryHfError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ternary-hf",
        description="Ternary-weight embedding models for the Hugging Face stack.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"ternary_hf.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ternary_hf.commands.{name}":
                continue  # command not written yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TernaryHfError as exc:  # expected failures: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
