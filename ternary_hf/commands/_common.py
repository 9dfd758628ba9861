"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from ..integrations.config import FIELD_CHOICES, TernaryConfig

#: The CLI's word for ``embedding_storage=None`` (tables left as they are).
NO_EMBEDDING_STORAGE = "none"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The :class:`TernaryConfig` options as CLI flags (choices and defaults are the config's own)."""
    defaults = TernaryConfig()
    group = parser.add_argument_group("ternary config")
    group.add_argument("--threshold", choices=FIELD_CHOICES["threshold_method"], default=defaults.threshold_method,
                       help="ternarization rule")
    group.add_argument("--granularity", choices=FIELD_CHOICES["granularity"], default=defaults.granularity,
                       help="scale granularity")
    group.add_argument("--activations", choices=FIELD_CHOICES["activations"], default=defaults.activations,
                       help="activation precision")
    storages = [s for s in FIELD_CHOICES["embedding_storage"] if s is not None] + [NO_EMBEDDING_STORAGE]
    group.add_argument("--embeddings", choices=storages, default=defaults.embedding_storage or NO_EMBEDDING_STORAGE,
                       help="embedding table storage")
    group.add_argument("--embedding-group", type=int, choices=FIELD_CHOICES["embedding_group_size"],
                       default=defaults.embedding_group_size,
                       help="columns per scale of an int4 embedding table (embedding_group_size)")
    group.add_argument("--skip", nargs="*", default=None, metavar="MODULE", help="modules_to_not_convert")
    group.add_argument("--int8", nargs="*", default=None, metavar="MODULE",
                       help="int8_modules: modules stored with int8 weights instead of ternary ones "
                            "(e.g. encoder.layer.5 for MiniLM's last block)")
    group.add_argument("--int4", nargs="*", default=None, metavar="MODULE",
                       help="int4_modules: modules stored with int4 weights instead of ternary ones "
                            "(e.g. encoder.layer.0 for MiniLM's first block)")


def config_from_args(args: argparse.Namespace) -> TernaryConfig:
    """The :class:`TernaryConfig` the flags of :func:`add_config_arguments` describe."""
    return TernaryConfig(
        threshold_method=args.threshold,
        granularity=args.granularity,
        activations=args.activations,
        embedding_storage=None if args.embeddings == NO_EMBEDDING_STORAGE else args.embeddings,
        modules_to_not_convert=args.skip,
        int8_modules=args.int8,
        int4_modules=args.int4,
        embedding_group_size=args.embedding_group,
    )
