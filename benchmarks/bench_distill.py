"""Distillation recipes side by side: ``python benchmarks/bench_distill.py [--minutes 30] [--limit 2000]``.

Trains, on the same data and time budget, (a) the founding paper's recipe (per-tensor ``paper`` rule,
float activations, unmasked last-hidden-state MSE only) and (b) ternary-hf's default recipe
(per-channel calibrated rule, int8 activations, masked hidden MSE + pooled cosine + in-batch
similarity), then evaluates the FP32 teacher, plain post-training ternarization and both students
with :func:`ternary_hf.evaluation.tasks.evaluate` on real data. Prints one table and writes JSON per model.

``--recipes ternary-hf ternary-hf-128tok`` adds variants of the default, one change each, for an
equal-time comparison (the earlier 128-token training sequences; TernaryBERT's per-layer hidden MSE).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

RECIPES = {
    "paper": dict(
        ternary=dict(threshold_method="paper", granularity="tensor", activations="float", embedding_storage=None),
        distill=dict(hidden_mse=1.0, pooled_cosine=0.0, similarity=0.0, mask_padding=False),
    ),
    "ternary-hf": dict(ternary=dict(), distill=dict()),
    # candidate changes to the default, each one change at a time (not run unless asked for)
    "ternary-hf-128tok": dict(ternary=dict(), distill=dict(max_length=128)),
    "ternary-hf-layers": dict(ternary=dict(), distill=dict(layer_mse=1.0)),
}
DEFAULT_RECIPES = ["paper", "ternary-hf"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="FP32 model folder (default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--out", default="runs/bench_distill")
    parser.add_argument("--minutes", type=float, default=30.0, help="time budget per recipe")
    parser.add_argument("--steps", type=int, default=5000,
                        help="at most this many steps (by default the time budget ends the run, LR annealed with it)")
    parser.add_argument("--limit", type=int, default=500, help="evaluation subset size per task")
    parser.add_argument("--recipes", nargs="*", default=DEFAULT_RECIPES, choices=list(RECIPES))
    args = parser.parse_args()

    from ternary_hf import TernaryConfig
    from ternary_hf.data.defaults import default_model_path
    from ternary_hf.distill import DistillConfig, distill
    from ternary_hf.evaluation.tasks import evaluate

    teacher = args.teacher or default_model_path()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; teacher {teacher}")

    models: dict[str, object] = {"FP32 teacher": teacher}
    from ternary_hf.ptq.quantize import load_encoder

    models["plain ternary (no training)"] = load_encoder(teacher, TernaryConfig())
    for name in args.recipes:
        recipe = RECIPES[name]
        target = out / name
        if not (target / "distillation.json").is_file():
            started = time.time()
            distill(teacher, target, ternary_config=TernaryConfig(**recipe["ternary"]),
                    config=DistillConfig(max_steps=args.steps, max_minutes=args.minutes, **recipe["distill"]))
            print(f"{name}: distilled in {(time.time() - started) / 60:.1f} min")
        info = json.loads((target / "distillation.json").read_text())
        models[f"distilled, {name} recipe ({info['steps']} steps, {info['seconds'] / 60:.0f} min)"] = str(target)

    from ternary_hf.evaluation.tasks import EvaluationResult

    results = []
    for i, (label, model) in enumerate(models.items()):
        cached = out / f"eval_{i}_limit{args.limit}.json"
        if cached.is_file() and EvaluationResult.from_json(cached).label == label:
            result = EvaluationResult.from_json(cached)  # re-running the script only redoes what is missing
        else:
            result = evaluate(model, teacher=teacher, limit=args.limit, label=label)
            result.to_json(cached)
        results.append(result)
        print(result.to_table())
    rows = sorted({(m.task, m.metric) for r in results for m in r.metrics})
    header = "| task | metric | " + " | ".join(r.name for r in results) + " |"
    print("\n" + header + "\n" + "|---" * (2 + len(results)) + "|")
    for task, metric in rows:
        cells = []
        for r in results:
            try:
                m = r.get(task, metric)
            except KeyError:
                cells.append("")
                continue
            ret = f" ({m.retention:.1f}%)" if m.retention is not None else ""
            cells.append(f"{m.student:.4f}{ret}" if m.student is not None else "")
        print(f"| {task} | {metric} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
