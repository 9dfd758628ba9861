"""Distillation step time: the trainer's kernel path vs its plain torch path, side by side in one run.

``python benchmarks/bench_train_step.py [--teacher DIR] [--batch-size 32] [--threads 2] [--steps 8]``

Each path trains its own copy of the same student on the same batches of the default corpus, in
interleaved rounds (so load on a shared machine hits them alike). "kernel" is what ``distill`` does
on a CPU with the compiled kernel: latent weights ternarized by one C++ pass, forward on the int8 x
ternary kernel, and the input gradient on the same kernel (``int8_grad_input``). "kernel-float-grad"
is the same with the input gradient in float32 (``int8_grad_input=False``). "kernel-int-torch" is the
kernel path with the int4 / int8 blocks' layers on the torch path (``FakeIntLinear.use_kernel = False``:
``F.linear`` in float32 on the rounded weight, how they trained before 2026-12-07 evening). "torch" is the
device-agnostic path (``TERNARY_HF_DISABLE_KERNEL=1``): ``ternarize()`` with NumPy's sort,
fake-quantized activations, ``F.linear``. Prints seconds per step split into teacher forward, student
forward, backward and optimizer step, and the ratios; and, for the teacher cache (``teacher_cache_gb``),
what serving a batch's teacher output from memory costs against the teacher's forward.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time

PATHS = ("kernel", "kernel-int-torch", "kernel-float-grad", "torch")
PARTS = ("teacher", "student", "backward", "optimizer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="FP32 model folder (default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="steps per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--all-ternary", action="store_true",
                        help="every block ternary (default: the distillation default's int4 blocks)")
    args = parser.parse_args()

    import torch
    from torch import nn

    from ternary_hf import TernaryConfig
    from ternary_hf.data.defaults import default_model_path
    from ternary_hf.kernels import kernel_status
    from ternary_hf.train.config import DistillConfig
    from ternary_hf.train.data import batch_order, load_texts
    from ternary_hf.train.losses import distillation_loss
    from ternary_hf.train.student import FakeIntLinear, build_student, set_int8_grad_input, with_int4_blocks
    from ternary_hf.train.teacher_cache import TeacherCache
    from ternary_hf.train.text_distill import load_teacher

    torch.set_num_threads(args.threads)
    teacher = args.teacher or default_model_path()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load "
          f"{os.getloadavg()[0]:.2f}; torch {torch.__version__}, {args.threads} threads; {kernel_status()}")
    _, teacher_model, tokenizer = load_teacher(teacher)
    teacher_model.eval()
    cfg = DistillConfig(batch_size=args.batch_size, max_length=args.max_length)
    texts = load_texts(None)
    n_batches = args.rounds * args.steps + 1
    order = batch_order([len(t) for t in texts], args.batch_size, n_batches, seed=0)
    batches = [dict(tokenizer([texts[i] for i in b], padding=True, truncation=True, max_length=args.max_length,
                              return_tensors="pt")) for b in order]
    config = TernaryConfig() if args.all_ternary else with_int4_blocks(
        TernaryConfig(), teacher_model, cfg.int4_blocks, cfg.int4_last_blocks)
    student = build_student(teacher_model, config, quantized_int_layers=cfg.int_blocks_qat).train()
    print(f"student: {'all ternary' if args.all_ternary else f'int4 modules {config.int4_modules}'}")
    for module in student.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    runs = {}
    for path in PATHS:
        model = copy.deepcopy(student)
        set_int8_grad_input(model, path in ("kernel", "kernel-int-torch"))
        runs[path] = (model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4))
    totals = {path: dict.fromkeys(PARTS, 0.0) for path in PATHS}
    tokens = 0
    cache = TeacherCache(2**34)
    cache_s = 0.0

    def step(path: str, batch: dict) -> tuple[float, float, float, float]:
        model, optimizer = runs[path]
        if path == "torch":
            os.environ["TERNARY_HF_DISABLE_KERNEL"] = "1"
        else:
            os.environ.pop("TERNARY_HF_DISABLE_KERNEL", None)
        FakeIntLinear.use_kernel = path != "kernel-int-torch"
        t0 = time.perf_counter()
        with torch.no_grad():
            teacher_out = teacher_model(**batch)
        t1 = time.perf_counter()
        student_out = model(**batch)
        loss, _ = distillation_loss(student_out, teacher_out, batch["attention_mask"], cfg)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        t4 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3

    def serve(index: int, batch: dict) -> float:
        key = torch.arange(index * args.batch_size, (index + 1) * args.batch_size)
        if cache.lookup(key, batch["attention_mask"]) is None:
            with torch.no_grad():
                cache.add(key, batch["attention_mask"], teacher_model(**batch).last_hidden_state)
        t0 = time.perf_counter()
        assert cache.lookup(key, batch["attention_mask"]) is not None
        return time.perf_counter() - t0

    for path in PATHS:  # warm-up (kernel build/load, allocator)
        step(path, batches[-1])
    for r in range(args.rounds):
        chunk = batches[r * args.steps:(r + 1) * args.steps]
        tokens += sum(int(b["attention_mask"].numel()) for b in chunk)
        cache_s += sum(serve(r * args.steps + i, batch) for i, batch in enumerate(chunk))
        for path in PATHS if r % 2 == 0 else reversed(PATHS):
            for batch in chunk:
                for part, seconds in zip(PARTS, step(path, batch), strict=True):
                    totals[path][part] += seconds
    os.environ.pop("TERNARY_HF_DISABLE_KERNEL", None)
    n = args.rounds * args.steps
    print(f"{n} steps per path, batch {args.batch_size}, mean padded length {tokens / n / args.batch_size:.0f} tokens")
    print("| path | s/step | " + " | ".join(PARTS) + " |")
    print("|---" * (2 + len(PARTS)) + "|")
    for path in PATHS:
        per = {k: v / n for k, v in totals[path].items()}
        print(f"| {path} | {sum(per.values()):.3f} | " + " | ".join(f"{per[k]:.3f}" for k in PARTS) + " |")
    for other in PATHS[1:]:
        ratio = sum(totals["kernel"].values()) / sum(totals[other].values())
        print(f"kernel / {other} step time: {ratio:.2f}x ({1 / ratio:.2f}x the steps in the same time)")
    teacher_s = totals["kernel"]["teacher"] / n
    served = sum(totals["kernel"].values()) / n - teacher_s + cache_s / n
    print(f"teacher output from the cache: {cache_s / n * 1e3:.1f} ms per batch vs {teacher_s * 1e3:.0f} ms for the "
          f"teacher's forward; a step served from the cache takes ~{served:.3f} s")


if __name__ == "__main__":
    main()
