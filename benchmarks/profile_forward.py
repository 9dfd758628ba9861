"""Where one ternary encoder forward spends its time, per kernel build, thread count and batch size (issue 29).

Why this script: the ternary GEMM runs near the CPU's int8 peak, so what decides end-to-end speed
against ONNX Runtime / OpenVINO is everything around it. For each kernel build this CPU runs
(AVX-512 VNNI, AVX2), 1 and 2 threads, a batch of 32 real sentences and a single sentence, it
times one ``SentenceTransformer`` forward of the ternary model in two ways, side by side:

* ``eager`` - transformers' own layer-by-layer forward (``TERNARY_HF_FAST_FORWARD=0``), as before
  ``ternary_hf.integrations.fast_forward``;
* ``fast``  - the runtime's padding-free forward, run op by op from Python so each part can be timed
  (``FastEncoder.use_native = False``); the default runs the same ops in one kernel call
  (``encoder_forward``), whose total is printed as a last row (its parts are the same ops).

Parts (exclusive time of each, median over ``--reps`` forwards; with 1 thread the CPU time of that
thread, which other jobs on a shared machine do not inflate; with 2 threads wall time): embeddings; the ternary GEMMs
(their fused GELU epilogue included); activation quantization (estimated: each GEMM's input run
through a 16-output layer, which makes the same pass over the input for 1/(N/16) of the GEMM);
attention (scores, softmax, context: the part between the projections); LayerNorm + residual add;
GELU as its own op; pooling + normalisation (sentence-transformers' modules and the model's pooler);
Python / dispatch overhead (the rest: glue ops, masks, reshapes, interpreter).

Usage::

    python benchmarks/profile_forward.py                       # MiniLM, every build, threads 2 1, batch 32 1
    python benchmarks/profile_forward.py --mpnet DIR --reps 5  # all-mpnet-base-v2 too
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _machine import cpu_model, load_avg

PARTS = ["embeddings", "linear: GEMM", "linear: act. quant (est.)", "attention", "LayerNorm + residual", "GELU",
         "pooling + normalize", "Python / dispatch / glue"]


class Timer:
    """Exclusive time per part: a wrapped call's time minus that of wrapped calls inside it."""

    clock = time.perf_counter

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[float] = []
        self.inputs: list[Any] = []
        self.capture = False

    def wrap(self, obj: Any, attr: str, part: str, capture: bool = False) -> None:
        original = getattr(obj, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if capture and self.capture:
                self.inputs.append(args)
            self.stack.append(0.0)
            t0 = self.clock()
            try:
                return original(*args, **kwargs)
            finally:
                dt = self.clock() - t0
                inner = self.stack.pop()
                self.totals[part] += dt - inner
                if self.stack:
                    self.stack[-1] += dt

        setattr(obj, attr, timed)


def _instrument(st: Any, timer: Timer) -> None:
    from ternary_hf import kernels
    from ternary_hf.integrations.fast_forward import ops
    from ternary_hf.integrations.modules import TernaryLinear

    auto = st[0].auto_model
    for mod in auto.modules():
        cls = type(mod).__name__
        if isinstance(mod, TernaryLinear):
            timer.wrap(mod, "forward", "linear: GEMM")
        elif cls.endswith("Embeddings"):
            timer.wrap(mod, "forward", "embeddings")
        elif cls.endswith("SelfAttention"):
            timer.wrap(mod, "forward", "attention")  # minus its projections (wrapped inside)
        elif cls.endswith("Output") or cls == "MPNetAttention":
            timer.wrap(mod, "forward", "LayerNorm + residual")  # minus the dense / attention inside
        elif cls.endswith("Intermediate"):
            timer.wrap(mod, "forward", "GELU")
        elif cls.endswith("Pooler"):
            timer.wrap(mod, "forward", "pooling + normalize")
    for mod in list(st)[1:]:
        timer.wrap(mod, "forward", "pooling + normalize")
    timer.wrap(kernels, "ternary_linear_cpu", "linear: GEMM", capture=True)  # the fast path's GEMMs
    timer.wrap(ops, "varlen_attention", "attention")
    timer.wrap(ops, "add_layernorm", "LayerNorm + residual")


def _quant_estimate(inputs: list[Any]) -> float:
    """Milliseconds the GEMMs' fused activation quantization takes (see the module docstring)."""
    import torch

    from ternary_hf.kernels import prepare_weight, ternary_linear_cpu
    from ternary_hf.quant.packing import pack_ternary

    def ms(fn: Any) -> float:
        fn()
        samples = []
        for _ in range(5):
            t0 = Timer.clock()
            fn()
            samples.append(Timer.clock() - t0)
        return statistics.median(samples) * 1e3

    total = 0.0
    for x, prepared, scale, bias, k, n, *rest in inputs:
        small = prepare_weight(pack_ternary(torch.ones(16, k)), k)
        t_full = ms(lambda: ternary_linear_cpu(x, prepared, scale, bias, k, n, *rest))  # noqa: B023
        t16 = ms(lambda: ternary_linear_cpu(x, small, torch.ones(16), None, k, 16))  # noqa: B023
        total += max(0.0, t16 - t_full * 16 / n)
    return total


def worker(args: argparse.Namespace) -> None:
    import logging
    import warnings

    import torch
    from sentence_transformers import SentenceTransformer

    import ternary_hf

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    st = SentenceTransformer(args.model_dir, device="cpu",
                             model_kwargs={"quantization_config": ternary_hf.TernaryConfig()})
    pool = sorted(json.loads(Path(args.sentences).read_text()), key=len)
    mid = max(0, len(pool) // 2 - args.batch_size // 2)
    texts = pool[mid : mid + args.batch_size]  # median-length sentences, as encode() groups them
    features = st.preprocess(texts) if hasattr(st, "preprocess") else st.tokenize(texts)
    timer = Timer()
    if args.threads == 1:
        Timer.clock = time.thread_time  # one thread does all the work: its CPU time
    _instrument(st, timer)
    result: dict[str, Any] = {"tokens": int(features["attention_mask"].sum()),
                              "padded": int(features["attention_mask"].numel())}
    engine = st[0].auto_model._ternary_fast_forward
    for path, flag in (("eager", "0"), ("fast", "1"), ("native", "1")):
        os.environ["TERNARY_HF_FAST_FORWARD"] = flag
        engine.use_native = path == "native"
        runs: list[dict[str, float]] = []
        with torch.inference_mode():
            for rep in range(args.reps + 2):
                timer.totals.clear()
                timer.inputs.clear()
                timer.capture = rep == args.reps + 1
                t0 = timer.clock()
                st(dict(features))
                total = (timer.clock() - t0) * 1e3
                if rep >= 2 or rep == args.reps + 1:
                    runs.append({**{k: v * 1e3 for k, v in timer.totals.items()}, "total": total})
        per = {p: statistics.median(r.get(p, 0.0) for r in runs) for p in PARTS[:-1] if p != PARTS[2]}
        per["total"] = statistics.median(r["total"] for r in runs)
        timer.capture = False
        if path == "native":
            result[path] = {"total": per["total"]}
            continue
        if timer.inputs:
            with torch.inference_mode():
                quant = _quant_estimate(list(timer.inputs))
            per[PARTS[2]] = min(quant, per[PARTS[1]])
            per[PARTS[1]] -= per[PARTS[2]]
        per[PARTS[-1]] = per["total"] - sum(per.get(p, 0.0) for p in PARTS[:-1])
        result[path] = per
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mpnet", default=None, help="all-mpnet-base-v2 folder (also profile it)")
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 1])
    parser.add_argument("--isas", nargs="+", default=None, help="kernel builds (default: all this CPU runs)")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sentences", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.threads = args.threads[0]
        return worker(args)

    from bench_encode import benchmark_sentences, cpu_isa_flags

    from ternary_hf.data.defaults import default_model_path
    from ternary_hf.kernels._build import supported_isas

    isas = args.isas or supported_isas()
    print(f"# date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"# machine: {cpu_model()}, {os.cpu_count()} logical CPUs; ISA flags: {' '.join(cpu_isa_flags())}; "
          f"load average {load_avg()}")
    texts, source = benchmark_sentences(1000)
    sentences = Path(os.environ.get("TMPDIR", "/tmp")) / f"profile_forward_{os.getpid()}.json"
    sentences.write_text(json.dumps(texts))
    print(f"# sentences: {source}; a batch = the median-length sentences (sorted by characters)")
    print("# ms per forward, median over the reps (1 thread: CPU time of the thread; 2 threads: wall time); "
          "'fast' = ternary_hf.integrations.fast_forward, 'eager' = transformers' forward")
    models = {"all-MiniLM-L6-v2": default_model_path()}
    if args.mpnet:
        models["all-mpnet-base-v2"] = args.mpnet
    for name, model_dir in models.items():
        for isa in isas:
            for threads in args.threads:
                for batch in args.batch_sizes:
                    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TERNARY_HF_KERNEL_ISA=isa,
                               TOKENIZERS_PARALLELISM="false")
                    cmd = [sys.executable, __file__, "--worker", "--model-dir", model_dir, "--threads", str(threads),
                           "--batch-size", str(batch), "--sentences", str(sentences), "--reps", str(args.reps)]
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                    if out.returncode != 0:
                        print(f"\n# {name} {isa} threads={threads} batch={batch}: FAILED "
                              f"{' | '.join(out.stderr.strip().splitlines()[-3:])}")
                        continue
                    _print_block(name, isa, threads, batch, json.loads(out.stdout.strip().splitlines()[-1]))
    sentences.unlink()
    print(f"\n# load average at the end: {load_avg()}")


def _print_block(name: str, isa: str, threads: int, batch: int, res: dict[str, Any]) -> None:
    eager, fast = res["eager"], res["fast"]
    print(f"\n#### {name}, {isa} build, threads={threads}, batch {batch} ({res['tokens']} tokens, "
          f"{res['padded']} with padding)\n")
    print("| part | eager ms | share | fast ms | share | fast / eager |")
    print("|---|---:|---:|---:|---:|---:|")
    for part in PARTS:
        e, f = eager.get(part, 0.0), fast.get(part, 0.0)
        ratio = f"{f / e:.2f}" if e > 0.005 else "-"
        print(f"| {part} | {e:.2f} | {e / eager['total']:.0%} | {f:.2f} | {f / fast['total']:.0%} | {ratio} |")
    print(f"| **total** | **{eager['total']:.2f}** | | **{fast['total']:.2f}** | | "
          f"**{fast['total'] / eager['total']:.2f}** |")
    native = res["native"]["total"]
    print(f"| total, the same ops in one kernel call (the default) | | | {native:.2f} | | "
          f"{native / eager['total']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
