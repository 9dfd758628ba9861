"""Distill the bundled all-MiniLM-L6-v2 into a ternary model and compare it with its FP32 teacher.

    python examples/distill_minilm.py [OUT_DIR] [--steps 2000] [--batch-size 32] [--minutes 30] [--limit 500]
    python examples/distill_minilm.py out --steps 2 --batch-size 4 --limit 30   # a smoke run, under a minute

The teacher is the FP32 model itself; the student learns on the bundled real corpora (training splits
only). Killed runs resume from OUT_DIR.work. Afterwards the distilled model is scored against the teacher
with :func:`ternary_hf.evaluation.tasks.evaluate` on ``--limit`` texts per split (``--limit 0``: skip it); the
table is printed and saved as ``OUT_DIR/eval_results.json``, which ``ternary-hf push`` puts in the model
card. Scale out with ``torchrun --nproc_per_node N examples/distill_minilm.py`` (CPU, gloo) or
``accelerate launch`` on GPUs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ternary_hf import TernaryConfig
from ternary_hf.data import default_model_path
from ternary_hf.distill import DistillConfig, distill


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", nargs="?", default="minilm-ternary-distilled", help="where the ternary model goes")
    p.add_argument("--steps", type=int, default=DistillConfig.max_steps,
                   help=f"optimizer steps (default {DistillConfig.max_steps})")
    p.add_argument("--batch-size", type=int, default=DistillConfig.batch_size, help="texts per step (default 32)")
    p.add_argument("--minutes", type=float, default=None,
                   help="time budget: stop (LR annealed) and finalize after this many minutes (default: none)")
    p.add_argument("--limit", type=int, default=500,
                   help="evaluation: at most N texts per split of each data set (default 500; 0: no evaluation)")
    p.add_argument("--tasks", nargs="+", metavar="TASK", default=None,
                   help="evaluation tasks (default: all; see ternary_hf.evaluation.tasks.TASKS)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    teacher = default_model_path()
    config = DistillConfig(max_steps=args.steps, batch_size=args.batch_size, max_minutes=args.minutes)
    result = distill(teacher, args.out_dir, ternary_config=TernaryConfig(), config=config)
    print(f"{result.steps} steps in {result.seconds / 60:.1f} min -> {result.output_dir}")
    if args.limit <= 0 or os.environ.get("RANK", "0") != "0" or not (Path(args.out_dir) / "config.json").is_file():
        return  # evaluation switched off, not the main process of a torchrun launch, or nothing finalized
    try:
        from ternary_hf.evaluation import evaluate
    except ImportError:
        return
    report = evaluate(args.out_dir, teacher=teacher, tasks=args.tasks, limit=args.limit)
    report.to_json(Path(args.out_dir) / "eval_results.json")
    print(report.to_table())


if __name__ == "__main__":
    main()
