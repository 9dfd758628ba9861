"""Post-training ternarization without training: weight rounding vs calibration (GPTQ on the ternary grid).

``python benchmarks/bench_calibration.py [--teacher DIR] [--texts 256] [--limit 500]``

Builds, from the same FP32 teacher, (a) the plain ternary model (``from_pretrained(...,
quantization_config=TernaryConfig())``: each weight rounded on its own) and (b) the calibrated one
(``ternary-hf quantize --calibrate N``: each layer ternarized to preserve its outputs on N real
training texts), evaluates both against the teacher with :func:`ternary_hf.evaluation.tasks.evaluate`,
prints one table with the retention of each and writes the JSON results to ``--out``.

Evaluating a large teacher is slow (all-mpnet-base-v2: ~20 min on one core at limit 500), so
``--reuse JSON`` takes the teacher column (and, with ``--reuse-plain``, the plain student) from an
earlier result of the same limit and seed instead of encoding them again; the teacher is still loaded
for the teacher-agreement task, which needs its embeddings.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

AGREEMENT = "teacher-agreement"


def _evaluate(model, teacher: str, limit: int, reuse, label: str, threads: int):
    """``evaluate(model, teacher)``, or with ``reuse`` the student alone + teacher agreement, merged."""
    from ternary_hf.evaluation.tasks import TASKS, EvaluationResult, evaluate

    if reuse is None:
        return evaluate(model, teacher=teacher, limit=limit, label=label, num_threads=threads)
    tasks = [t for t in TASKS if t != AGREEMENT]
    alone = evaluate(model, tasks=tasks, limit=limit, label=label, num_threads=threads)
    agreement = evaluate(model, teacher=teacher, tasks=AGREEMENT, limit=limit, label=label, num_threads=threads)
    data = alone.to_dict()
    for row in data["metrics"]:
        row["teacher"] = reuse.get(row["task"], row["metric"]).teacher
    data["metrics"] += [m.__dict__ for m in agreement.metrics]
    data.update(teacher=agreement.teacher, tasks=tasks + [AGREEMENT], teacher_size_bytes=reuse.teacher_size_bytes,
                teacher_texts_per_second=reuse.teacher_texts_per_second,
                notes=alone.notes + agreement.notes + ["teacher column reused from an earlier run (same limit, seed)"])
    return EvaluationResult.from_dict(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="FP32 model folder (default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--out", default="runs/bench_calibration")
    parser.add_argument("--texts", type=int, default=256, help="calibration texts (bundled training corpora)")
    parser.add_argument("--limit", type=int, default=500, help="evaluation subset size per task")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--reuse", default=None, help="earlier evaluation JSON to take the teacher column from")
    parser.add_argument("--reuse-plain", action="store_true", help="also take the plain student from --reuse")
    args = parser.parse_args()

    import torch

    from ternary_hf import TernaryConfig
    from ternary_hf.data.defaults import default_model_path
    from ternary_hf.evaluation.tasks import EvaluationResult
    from ternary_hf.ptq.quantize import load_encoder, quantize_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = args.teacher or default_model_path()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reuse = EvaluationResult.from_json(args.reuse) if args.reuse else None
    if reuse is not None and (reuse.limit, reuse.seed) != (args.limit, 0):
        raise SystemExit(f"--reuse {args.reuse} has limit={reuse.limit}, seed={reuse.seed}; need {args.limit}, 0")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"{torch.get_num_threads()} threads; teacher {teacher}")

    calibrated_dir = out / f"calibrated_{args.texts}"
    if not (calibrated_dir / "ternary_quantize.json").is_file():
        started = time.time()
        report = quantize_folder(teacher, calibrated_dir, calibration_texts=args.texts, overwrite=True)
        print(f"calibrated on {args.texts} texts in {time.time() - started:.0f} s: {report.calibration}")

    results = []
    for label, build in [("plain ternary", lambda: load_encoder(teacher, TernaryConfig())),
                         (f"calibrated ternary ({args.texts} texts)", lambda: str(calibrated_dir))]:
        cached = out / f"eval_{label.split()[0]}_{args.texts}_limit{args.limit}.json"
        if label == "plain ternary" and reuse is not None and args.reuse_plain:
            result = reuse
        elif cached.is_file():
            result = EvaluationResult.from_json(cached)  # re-running the script only redoes what is missing
        else:
            result = _evaluate(build(), teacher, args.limit, reuse, label, args.threads)
            result.to_json(cached)
        results.append(result)

    print(f"\n| task | metric | FP32 teacher | {results[0].name} | {results[1].name} |")
    print("|---|---|---|---|---|")
    for row in results[0].metrics:
        cells = []
        for result in results:
            m = result.get(row.task, row.metric)
            cells.append(f"{m.student:.3f}" + (f" ({m.retention:.1f}%)" if m.retention is not None else ""))
        teacher_cell = f"{row.teacher:.3f}" if row.teacher is not None else "-"
        print(f"| {row.task} | {row.metric} | {teacher_cell} | " + " | ".join(cells) + " |")
    print("mean retention: " + ", ".join(f"{r.name} {r.mean_retention:.1f}%" for r in results))


if __name__ == "__main__":
    main()
