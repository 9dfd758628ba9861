"""Distill the bundled all-MiniLM-L6-v2 into a ternary model and compare it with plain ternarization.

    python examples/distill_minilm.py [OUT_DIR] [STEPS]

The teacher is the FP32 model itself; the student learns on the bundled real corpora (training splits
only). Killed runs resume from OUT_DIR.work. Scale out with
``torchrun --nproc_per_node N examples/distill_minilm.py`` (CPU, gloo) or ``accelerate launch`` on GPUs.
"""

from __future__ import annotations

import sys

from ternary_hf import TernaryConfig
from ternary_hf.defaults import default_model_path
from ternary_hf.distill import DistillConfig, distill


def main(out_dir: str = "minilm-ternary-distilled", steps: str = "300") -> None:
    teacher = default_model_path()
    result = distill(teacher, out_dir, ternary_config=TernaryConfig(), config=DistillConfig(max_steps=int(steps)))
    print(f"{result.steps} steps in {result.seconds / 60:.1f} min -> {result.output_dir}")
    try:
        from ternary_hf.evaluation import evaluate
    except ImportError:
        return
    report = evaluate(out_dir, teacher=teacher, limit=500)
    print(report.to_table())


if __name__ == "__main__":
    main(*sys.argv[1:3])
