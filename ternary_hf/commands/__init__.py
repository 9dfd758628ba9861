"""Subcommands of the ``ternary-hf`` CLI, one module each.

Each module defines ``add_parser(subparsers) -> None``, which adds its subcommand and sets
``func`` (called with the parsed ``argparse.Namespace``, returning an exit code) as a default.
The CLI imports the modules listed in ``COMMAND_MODULES`` lazily, so a command whose optional
dependencies are missing does not break the others.
"""

COMMAND_MODULES = ("quantize", "demo", "eval", "search", "distill", "bench", "push", "fetch_model", "serve")
