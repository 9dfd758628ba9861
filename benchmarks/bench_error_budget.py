"""Where a ternary model's disagreement with its teacher comes from: ``python benchmarks/bench_error_budget.py``.

The shipped format changes three things at once: int4 embedding table, per-token int8 activations
on every converted linear layer, ternary weights. This script switches them on one at a time on the
FP32 teacher (no training) and scores each variant with the evaluation module's teacher-agreement
task (Spearman of pair similarities, mean cosine, top-10 overlap), so the part that distillation has
to win back is visible: if a component alone already keeps ~1.0, it is not what limits the student.
``--student PATH`` adds a distilled model to the table for comparison.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

import ternary_hf  # noqa: F401  (registers the quantizer)
from ternary_hf import TernaryConfig
from ternary_hf.data.defaults import default_model_path
from ternary_hf.evaluation.tasks import evaluate
from ternary_hf.integrations.conversion import is_skipped
from ternary_hf.train.student import fake_quantize_int8

_METRICS = ("spearman_pair_similarity", "mean_cosine", "top10_overlap")


def _converted_linears(model: nn.Module, model_path: str) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` layers the quantizer would convert (the default heads skipped, as it does)."""
    skip = TernaryConfig().skipped_modules()
    found = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear and not is_skipped(name, skip)]
    if not found:
        raise RuntimeError(f"{model_path}: no nn.Linear layer found to quantize")
    return found


def _int8_activations_only(model_path: str):
    """The FP32 model with every encoder linear layer's input rounded per token to int8 (weights FP32)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (fake_quantize_int8(args[0]), *args[1:])  # the student's int8 rule (exact values forward)

    for _, module in _converted_linears(model, model_path):
        module.register_forward_pre_hook(hook)
    return model


def _ternary_per_group(model_path: str, group: int):
    """Not a shipped format: ternary weights (float activations and table) with one scale per ``group``
    consecutive inputs of each output channel instead of one per channel, to see whether finer scales
    would buy agreement (each group is ternarized with the same calibrated rule as a whole row)."""
    from sentence_transformers import SentenceTransformer

    from ternary_hf.quant.ternarize import ternarize

    model = SentenceTransformer(model_path, device="cpu")
    with torch.no_grad():
        for name, module in _converted_linears(model, model_path):
            out_features, in_features = module.weight.shape
            if in_features % group:
                raise ValueError(f"{name}: {in_features} inputs are not a multiple of --group-size {group}")
            rows = module.weight.reshape(out_features * (in_features // group), group)
            ternary = ternarize(rows, "calibrated", "channel").dequantize(rows.dtype)
            module.weight.copy_(ternary.reshape_as(module.weight))
    return model


def _with_config(model_path: str, config: TernaryConfig):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path, device="cpu", model_kwargs={"quantization_config": config})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="FP32 sentence-transformers folder (default: bundled MiniLM)")
    parser.add_argument("--student", default=None, help="a distilled ternary folder to add to the table")
    parser.add_argument("--limit", type=int, default=500, help="texts per split (evaluation subset size)")
    parser.add_argument("--group-size", type=int, default=128, help="inputs per scale of the per-group variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/error_budget.json")
    args = parser.parse_args()
    model_path = args.model or default_model_path()
    torch.set_num_threads(args.threads)

    variants = {
        "int4 embedding table only": lambda: _with_config(
            model_path, TernaryConfig(modules_to_not_convert=["encoder", "pooler"])),
        "int8 activations only": lambda: _int8_activations_only(model_path),
        "ternary weights only (float activations, float table)": lambda: _with_config(
            model_path, TernaryConfig(activations="float", embedding_storage=None)),
        f"ternary weights only, one scale per {args.group_size} inputs (not shipped)": lambda: _ternary_per_group(
            model_path, args.group_size),
        "all three (plain ternary, as shipped)": lambda: _with_config(model_path, TernaryConfig()),
    }
    if args.student:
        variants[f"distilled student ({Path(args.student).name})"] = lambda: args.student
    from sentence_transformers import SentenceTransformer

    teacher = SentenceTransformer(model_path, device="cpu")
    rows: dict[str, dict[str, float]] = {}
    for label, build in variants.items():
        result = evaluate(build(), teacher, tasks="teacher-agreement", limit=args.limit, show_progress_bar=False,
                          label=label)
        rows[label] = {m: float(result.get("teacher-agreement", m).student) for m in _METRICS}
        print(f"{label:<58} " + "  ".join(f"{m} {rows[label][m]:.3f}" for m in _METRICS), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"model": model_path, "limit": args.limit, "threads": args.threads, "variants": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
