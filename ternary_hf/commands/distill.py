"""``ternary-hf distill TEACHER OUT``: self-taught distillation into a packed ternary model.

The training flags are :class:`~ternary_hf.train.config.DistillConfig`'s fields (``HfArgumentParser``:
names, types, choices, defaults and help come from the dataclass; historical names such as
``--steps``, ``--lr`` and ``--minutes`` are field aliases). Scale out with accelerate:
``accelerate launch --num_processes N -m ternary_hf.cli distill ...``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from ._common import add_config_arguments, config_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from transformers import HfArgumentParser

    from ..train.config import DistillConfig

    parser = subparsers.add_parser(
        "distill",
        parents=[HfArgumentParser(DistillConfig, add_help=False)],
        help="distill a float model into a ternary one (teacher = the float model)",
        description="Train a ternary student to match TEACHER (latent weights + straight-through estimator), "
        "then save the packed ternary sentence-transformers folder to OUT. Resumes from OUT.work if killed.",
    )
    parser.add_argument("teacher", metavar="TEACHER", help="float model folder or repo id")
    parser.add_argument("output", metavar="OUT")
    parser.add_argument("--data", default=None, help="text file (one per line) or .jsonl; default: bundled corpora")
    parser.add_argument("--text-field", default="text", help="field of a .jsonl file holding the text")
    parser.add_argument("--float-grad-input", dest="int8_grad_input", action="store_false",
                        help="compute each ternary layer's input gradient in float32 instead of on the int8 kernel")
    parser.add_argument("--float-int-blocks", dest="int_blocks_qat", action="store_false",
                        help="train the int8 / int4 blocks in float and round them only when finalized")
    parser.add_argument("--work-dir", default=None, help="checkpoints + metrics.csv (default: OUT.work)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard the checkpoints and metrics in the work dir and start over")
    parser.add_argument("--no-resume", dest="fresh", action="store_true", help="same as --fresh")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT even if it is not an earlier output of distill (checked before training)")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.config import DistillConfig
    from ..train.text_distill import distill

    config = DistillConfig(**{f.name: getattr(args, f.name) for f in fields(DistillConfig)})
    result = distill(args.teacher, args.output, texts=args.data, ternary_config=config_from_args(args),
                     config=config, work_dir=args.work_dir, overwrite=args.overwrite, text_field=args.text_field,
                     fresh=args.fresh)
    if os.environ.get("RANK", "0") != "0":  # one report per multi-process launch
        return 0
    if result.already_finished:
        print(f"already distilled: {result.steps} steps in {result.seconds / 60:.1f} min of training, "
              f"final loss {result.final_loss:.4f}; {result.output_dir} left as it is "
              "(--fresh starts over, a higher --steps / --minutes trains on)")
        return 0
    earlier = result.seconds - result.session_seconds  # training time of the sessions before a resume
    resumed = f" ({result.session_seconds / 60:.1f} min in this session)" if earlier > 0 else ""
    print(f"distilled {result.steps} steps in {result.seconds / 60:.1f} min of training{resumed}, "
          f"final loss {result.final_loss:.4f}")
    print(f"ternary model: {result.output_dir}")
    return 0
