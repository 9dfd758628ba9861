"""Where a distilled student's out-of-domain error sits: ``python benchmarks/bench_ood_error.py STUDENT``.

The student tracks its teacher less closely on text it never trained on (issue 28: mean cosine
0.75-0.82 on held-out Django / FOLDOC passages against 0.89 in domain). This script puts parts of
the teacher back into the distilled student, one group at a time, and measures the mean
student-teacher cosine again on the held-out out-of-domain passages of ``ood-length-agreement`` (cut
to 32 / 64 / 128 / 256 tokens) and on in-domain tweets: float activations instead of int8, the
teacher's float word embeddings instead of int4, and the teacher's float linear layers of one group
(attention, feed-forward, lower or upper half) instead of the ternary ones. A group whose float
version lifts the cosine a lot is where the ternary format loses what the teacher knows.

The swapped-in layers did not co-adapt with the rest of the student, so a group's gain is a lower
bound of what its precision costs, not an exact share; swapping only half of a feed-forward block
(its up or its down projection) makes things worse for that reason, so groups keep blocks whole.
Runs transformers' own forward (``TERNARY_HF_FAST_FORWARD=0``), where these swaps take effect.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ["TERNARY_HF_FAST_FORWARD"] = "0"  # read on every forward: the module swaps below must be used

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

import ternary_hf  # noqa: F401  (registers the quantizer that loads the student)
from ternary_hf.data import real_sentences
from ternary_hf.data.defaults import default_model_path
from ternary_hf.data.ood import long_texts
from ternary_hf.evaluation.out_of_domain import LENGTH_BUCKETS
from ternary_hf.integrations.modules import TernaryLinear

IN_DOMAIN = "tweets@128"


def _is_ffn(name: str) -> bool:
    return ".intermediate." in name or (name.endswith(".output.dense") and ".attention." not in name)


def _in_layers(layers: range) -> Callable[[str], bool]:
    return lambda name: any(f".layer.{i}." in name for i in layers)


def groups(n_layers: int) -> dict[str, Callable[[str], bool]]:
    """Which encoder linear layers (by module name) each variant gives back to the teacher."""
    half = n_layers // 2
    return {
        "teacher's attention (q, k, v, o) in every layer": lambda name: ".attention." in name,
        "teacher's feed-forward (up, down) in every layer": _is_ffn,
        f"teacher's layers 0-{half - 1}": _in_layers(range(half)),
        f"teacher's layers {half}-{n_layers - 1}": _in_layers(range(half, n_layers)),
    }


def _encode(model: SentenceTransformer, texts: list[str], max_length: int) -> np.ndarray:
    model.max_seq_length = max_length
    return model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)


def _swap_linears(student: torch.nn.Module, teacher: torch.nn.Module, pick: Callable[[str], bool]) -> int:
    swapped = 0
    for name, module in list(student.named_modules()):
        if not (isinstance(module, TernaryLinear) and name.startswith("encoder.") and pick(name)):
            continue
        parent, _, attr = name.rpartition(".")
        setattr(student.get_submodule(parent), attr, copy.deepcopy(teacher.get_submodule(name)))
        if hasattr(student.get_submodule(parent), "intermediate_act_fn"):  # the student's GELU is fused in
            student.get_submodule(parent).intermediate_act_fn = copy.deepcopy(
                teacher.get_submodule(parent).intermediate_act_fn)
        swapped += 1
    return swapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("student", help="a distilled ternary sentence-transformers folder")
    parser.add_argument("--teacher", default=None, help="its FP32 teacher (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--limit", type=int, default=500, help="passages sampled as by `ternary-hf eval --limit`")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    passages = long_texts("test", limit=args.limit, seed=0).texts
    tweets = list(real_sentences())[:400]
    teacher = SentenceTransformer(str(args.teacher or default_model_path()), device="cpu")
    reference = {n: _encode(teacher, passages, n) for n in LENGTH_BUCKETS}
    reference[IN_DOMAIN] = _encode(teacher, tweets, 128)
    teacher_net = teacher[0].auto_model
    n_layers = int(teacher_net.config.num_hidden_layers)

    def variant(float_activations: bool = False, float_embeddings: bool = False,
                pick: Callable[[str], bool] | None = None) -> SentenceTransformer:
        student = SentenceTransformer(args.student, device="cpu")
        net = student[0].auto_model
        if float_activations:
            for module in net.modules():
                if isinstance(module, TernaryLinear):
                    module.quantize_activations = False
        if float_embeddings:
            net.embeddings.word_embeddings = copy.deepcopy(teacher_net.embeddings.word_embeddings)
        if pick is not None and _swap_linears(net, teacher_net, pick) == 0:
            raise SystemExit("no ternary encoder layer matched a group: is STUDENT a BERT-style ternary model?")
        return student

    variants = {"the student as distilled": lambda: variant(),
                "float activations (no int8)": lambda: variant(float_activations=True),
                "teacher's float word embeddings (no int4)": lambda: variant(float_embeddings=True),
                "both of the above": lambda: variant(True, True)}
    variants.update({name: (lambda pick=pick: variant(pick=pick)) for name, pick in groups(n_layers).items()})
    table: dict[str, dict[str, float]] = {}
    print(f"# {args.student} vs {args.teacher or default_model_path()}: {len(passages)} out-of-domain passages, "
          f"{len(tweets)} tweets; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| variant | " + " | ".join(f"cosine @{n}" for n in LENGTH_BUCKETS) + f" | {IN_DOMAIN} |")
    print("|---|" + "---:|" * (len(LENGTH_BUCKETS) + 1))
    for name, build in variants.items():
        student = build()
        row = {f"@{n}": float(np.einsum("ij,ij->i", _encode(student, passages, n), reference[n]).mean())
               for n in LENGTH_BUCKETS}
        row[IN_DOMAIN] = float(np.einsum("ij,ij->i", _encode(student, tweets, 128), reference[IN_DOMAIN]).mean())
        table[name] = row
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"student": args.student, "passages": len(passages),
                                              "table": table}, indent=1))


if __name__ == "__main__":
    main()
