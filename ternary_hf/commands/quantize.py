"""``ternary-hf quantize SRC OUT``: ternarize a transformers / sentence-transformers model and save it."""

from __future__ import annotations

import argparse
import json

from ._common import add_config_arguments, config_from_args


def count(low: int):
    """An argparse ``type`` accepting integers >= ``low`` (argparse prints the message and exits 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="ternarize a model folder or repo id and save it as 2-bit safetensors",
        description="Ternarize SRC (a transformers or sentence-transformers folder, or a Hub repo id) into OUT, "
        "then print the size ratio and the mean teacher-vs-ternary cosine on real sentences. OUT must not be, "
        "hold or lie inside SRC, and SRC must be a float model.",
    )
    parser.add_argument("source", metavar="SRC")
    parser.add_argument("output", metavar="OUT")
    add_config_arguments(parser)
    parser.add_argument("--sentences", type=count(0), default=300, metavar="N",
                        help="real sentences for the cosine check (0: skip)")
    parser.add_argument("--calibrate", type=count(1), default=None, metavar="N",
                        help="ternarize each layer to preserve its outputs on N real training texts (GPTQ on "
                        "the ternary grid; e.g. 256) instead of rounding its weights: slower, closer to the float")
    parser.add_argument("--batch-size", type=count(1), default=32, metavar="N", help="texts per forward pass")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InvalidInputError, TernaryHfError
    from ..ptq.quantize import quantize_folder

    try:
        config = config_from_args(args)
        report = quantize_folder(
            args.source, args.output, config=config, num_sentences=args.sentences, overwrite=args.overwrite,
            calibration_texts=args.calibrate, batch_size=args.batch_size,
        )
    except TernaryHfError:
        raise
    except (OSError, ValueError) as exc:  # e.g. a repo id that is not a model, a config transformers refuses
        raise InvalidInputError(f"cannot quantize {args.source}: {exc}") from exc
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0
