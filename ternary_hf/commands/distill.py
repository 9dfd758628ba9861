"""``ternary-hf distill TEACHER OUT``: self-taught distillation into a packed ternary model.

Scale out with accelerate: ``accelerate launch --num_processes N -m ternary_hf.cli distill ...``.
"""

from __future__ import annotations

import argparse
import os
import sys

from ._common import add_config_arguments, config_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..train.loop import DistillConfig

    d = DistillConfig()
    parser = subparsers.add_parser(
        "distill",
        help="distill a float model into a ternary one (teacher = the float model)",
        description="Train a ternary student to match TEACHER (latent weights + straight-through estimator), "
        "then save the packed ternary sentence-transformers folder to OUT. Resumes from OUT.work if killed.",
    )
    parser.add_argument("teacher", metavar="TEACHER", help="float model folder or repo id")
    parser.add_argument("output", metavar="OUT")
    parser.add_argument("--data", default=None, help="text file (one per line) or .jsonl; default: bundled corpora")
    parser.add_argument("--text-field", default="text", help="field of a .jsonl file holding the text")
    parser.add_argument("--steps", type=int, default=d.max_steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.learning_rate)
    parser.add_argument("--max-length", type=int, default=d.max_length)
    parser.add_argument("--grad-accum", type=int, default=d.gradient_accumulation_steps)
    parser.add_argument("--max-texts", type=int, default=d.max_texts, help="sample at most this many texts")
    for name in ("hidden_mse", "pooled_cosine", "pooled_mse", "layer_mse", "attention_kl", "similarity",
                 "bank_similarity"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name),
                            help=f"weight of the {name} loss (0: off)")
    parser.add_argument("--similarity-mode", choices=["mse", "kl"], default=d.similarity_mode)
    parser.add_argument("--bank-size", type=int, default=d.bank_size,
                        help="teacher embeddings of earlier batches that --bank-similarity compares against")
    parser.add_argument("--teacher-forcing", type=float, default=d.teacher_forcing,
                        help="fraction of the run that trains each layer on the teacher's input to it "
                        "(layer-wise reconstruction) before the end-to-end losses; 0: off")
    parser.add_argument("--no-mask-padding", action="store_true", help="MSE over padding too (the paper's loss)")
    parser.add_argument("--teacher-cache-gb", type=float, default=d.teacher_cache_gb,
                        help="memory for the teacher's outputs, so later epochs skip its forward (0: off)")
    parser.add_argument("--float-grad-input", action="store_true",
                        help="compute each ternary layer's input gradient in float32 instead of on the int8 kernel")
    parser.add_argument("--minutes", type=float, default=None, help="time budget: stop and finalize after this")
    parser.add_argument("--save-every", type=int, default=d.save_every)
    parser.add_argument("--optimizer", choices=["adamw", "adamw8bit"], default=d.optimizer)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=d.mixed_precision)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--eval-every", type=int, default=d.eval_every,
                        help="evaluate the student against the teacher every N steps (0: off); see --eval-tasks")
    parser.add_argument("--eval-tasks", default=d.eval_tasks, help="evaluation tasks for --eval-every (comma list)")
    parser.add_argument("--eval-limit", type=int, default=d.eval_limit, help="texts per split for --eval-every")
    parser.add_argument("--report-to", choices=["csv", "tensorboard"], default=d.report_to,
                        help="metrics.csv always; tensorboard adds event files in the work dir")
    parser.add_argument("--work-dir", default=None, help="checkpoints + metrics.csv (default: OUT.work)")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT even if it is not an earlier output of distill (checked before training)")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.loop import DistillConfig, distill

    try:
        config = DistillConfig(
            max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, max_length=args.max_length,
            gradient_accumulation_steps=args.grad_accum, max_texts=args.max_texts, hidden_mse=args.hidden_mse,
            pooled_cosine=args.pooled_cosine, pooled_mse=args.pooled_mse, layer_mse=args.layer_mse,
            attention_kl=args.attention_kl, similarity=args.similarity, similarity_mode=args.similarity_mode,
            mask_padding=not args.no_mask_padding, teacher_cache_gb=args.teacher_cache_gb,
            int8_grad_input=not args.float_grad_input,
            bank_similarity=args.bank_similarity, bank_size=args.bank_size,
            teacher_forcing=args.teacher_forcing,
            save_every=args.save_every, optimizer=args.optimizer, mixed_precision=args.mixed_precision,
            seed=args.seed, max_minutes=args.minutes, eval_every=args.eval_every, eval_tasks=args.eval_tasks,
            eval_limit=args.eval_limit, report_to=args.report_to,
        )
        result = distill(args.teacher, args.output, texts=args.data, ternary_config=config_from_args(args),
                         config=config, work_dir=args.work_dir, resume=not args.no_resume, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as exc:
        print(f"ternary-hf distill: error: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":  # one report per multi-process launch
        return 0
    earlier = result.seconds - result.session_seconds  # training time of the sessions before a resume
    resumed = f" ({result.session_seconds / 60:.1f} min in this session)" if earlier > 0 else ""
    print(f"distilled {result.steps} steps in {result.seconds / 60:.1f} min of training{resumed}, "
          f"final loss {result.final_loss:.4f}")
    print(f"ternary model: {result.output_dir}")
    return 0
