"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from ..integrations.config import ACTIVATION_MODES, TernaryConfig
from ..quant.rowwise import EMBEDDING_STORAGES
from ..quant.ternarize import SCALE_GRANULARITIES, THRESHOLD_METHODS


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The :class:`TernaryConfig` options as CLI flags."""
    group = parser.add_argument_group("ternary config")
    group.add_argument("--threshold", choices=THRESHOLD_METHODS, default="calibrated", help="ternarization rule")
    group.add_argument("--granularity", choices=SCALE_GRANULARITIES, default="channel", help="scale granularity")
    group.add_argument("--activations", choices=ACTIVATION_MODES, default="int8", help="activation precision")
    group.add_argument(
        "--embeddings", choices=[*EMBEDDING_STORAGES, "none"], default="int4", help="embedding table storage"
    )
    group.add_argument("--skip", nargs="*", default=None, metavar="MODULE", help="modules_to_not_convert")


def config_from_args(args: argparse.Namespace) -> TernaryConfig:
    return TernaryConfig(
        threshold_method=args.threshold,
        granularity=args.granularity,
        activations=args.activations,
        embedding_storage=None if args.embeddings == "none" else args.embeddings,
        modules_to_not_convert=args.skip,
    )
