"""Ternary image embeddings end to end: train a ViT teacher, ternarize it, distill, compare on real images.

    python examples/vision_fashion_mnist.py [--out vision-run] [--threads 1] [--epochs 3] [--steps 400] ...
    python examples/vision_fashion_mnist.py --dataset digits --steps 20   # seconds, for tests

No pretrained image model ships in any package here, so the FP32 teacher is a small ViT trained on the
Fashion-MNIST train split (Debian package ``dataset-fashion-mnist``). Then:

* plain ternary: ``AutoModel.from_pretrained(teacher, quantization_config=TernaryConfig())``;
* distilled ternary: :func:`ternary_hf.vision.distill_vision` on the (unlabeled) train images.

Printed: storage size and CPU time of the embedding forward (FP32 vs ternary measured side by side in
interleaved rounds), linear-probe accuracy and image-to-image retrieval P@10 (test images querying the
train images) with retention against the teacher. A rerun reuses the teacher and resumes distillation
from ``OUT/ternary-distilled.work``; ``--fresh`` starts over. Measured results: docs/vision.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoModel

from ternary_hf import TernaryConfig
from ternary_hf.utils.io import atomic_write_json
from ternary_hf.utils.tables import format_table
from ternary_hf.vision import (
    distill_vision,
    evaluate_vision,
    load_image_dataset,
    model_bytes,
    time_embedding,
    train_vit_teacher,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, digits, or a folder of IDX files")
    p.add_argument("--out", default="vision-run", help="folder for the teacher, the ternary models and results")
    p.add_argument("--fresh", action="store_true", help="delete OUT first (default: reuse teacher, resume)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    g = p.add_argument_group("teacher")
    g.add_argument("--epochs", type=int, default=3)
    g.add_argument("--train-limit", type=int, default=30000, help="teacher trains on this many train images")
    g.add_argument("--hidden-size", type=int, default=128)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--patch-size", type=int, default=None, help="default image_size // 4")
    g.add_argument("--teacher-lr", type=float, default=1e-3)
    g = p.add_argument_group("distillation")
    g.add_argument("--steps", type=int, default=400)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=5e-4)
    g.add_argument("--distill-limit", type=int, default=None, help="distill on this many train images")
    g.add_argument("--pooling", choices=("cls", "mean"), default="cls")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-limit", type=int, default=10000, help="train images for the probe and the gallery")
    g.add_argument("--test-limit", type=int, default=None, help="test images (probe accuracy, queries)")
    g.add_argument("--speed-images", type=int, default=2048, help="test images embedded per timing round")
    g.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir, plain_dir, distilled_dir = out / "teacher", out / "ternary-plain", out / "ternary-distilled"
    started = time.time()

    if (teacher_dir / "teacher_training.json").is_file():
        teacher_info = json.loads((teacher_dir / "teacher_training.json").read_text())
        print(f"reusing the teacher in {teacher_dir} (--fresh retrains)")
    else:
        result = train_vit_teacher(args.dataset, teacher_dir, epochs=args.epochs, limit=args.train_limit,
                                   hidden_size=args.hidden_size, num_layers=args.layers, num_heads=args.heads,
                                   patch_size=args.patch_size, learning_rate=args.teacher_lr)
        teacher_info = json.loads((Path(result.output_dir) / "teacher_training.json").read_text())
    print(f"teacher: classifier test accuracy {teacher_info['test_accuracy']:.4f}, "
          f"trained in {teacher_info['seconds'] / 60:.1f} min")

    tcfg = TernaryConfig()
    plain = AutoModel.from_pretrained(str(teacher_dir), quantization_config=tcfg).eval()
    plain.save_pretrained(plain_dir)

    train = load_image_dataset(args.dataset, "train", limit=args.distill_limit)
    distilled = distill_vision(teacher_dir, distilled_dir, train.images, tcfg, steps=args.steps,
                               batch_size=args.batch_size, lr=args.lr, pooling=args.pooling)
    print(f"distilled {distilled.steps} steps in {distilled.seconds / 60:.1f} min (this session)")

    teacher = AutoModel.from_pretrained(str(teacher_dir)).eval()
    student = AutoModel.from_pretrained(str(distilled_dir)).eval()
    scores = {"teacher": evaluate_vision(teacher, dataset=args.dataset, limit=args.eval_limit,
                                         test_limit=args.test_limit, pooling=args.pooling)}
    for name, model in (("ternary (plain)", plain), ("ternary (distilled)", student)):
        result = evaluate_vision(model, dataset=args.dataset, limit=args.eval_limit, test_limit=args.test_limit,
                                 pooling=args.pooling)
        for metric in ("linear_probe_accuracy", "p_at_10"):
            result[f"retention_{metric}"] = result[metric] / scores["teacher"][metric]
        scores[name] = result

    test = load_image_dataset(args.dataset, "test", limit=args.speed_images)
    t_fp32, t_plain, t_ternary = time_embedding([teacher, plain, student], test.images, rounds=args.rounds,
                                                pooling=args.pooling)
    sizes = {"teacher": model_bytes(teacher_dir), "ternary (plain)": model_bytes(plain_dir),
             "ternary (distilled)": model_bytes(distilled_dir)}
    times = {"teacher": t_fp32, "ternary (plain)": t_plain, "ternary (distilled)": t_ternary}

    n = scores["teacher"]
    print(f"\n{args.dataset}: {n['n_train']} train images (probe training set and retrieval gallery), "
          f"{n['n_test']} test images (probe accuracy and queries); pooling {args.pooling}; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"speed: {len(test.images)} test images per round, batch 256, median of {args.rounds} interleaved rounds")
    header = ["model", "size", "size ratio", "embed time", "speed ratio", "linear probe (retention)",
              "P@10 (retention)"]
    rows = []
    for name, s in scores.items():
        size = sizes[name]
        row = [name, f"{size / 1e6:.2f} MB", f"{size / sizes['teacher']:.3f}x", f"{times[name]:.3f} s",
               f"{times[name] / t_fp32:.2f}x"]
        for metric in ("linear_probe_accuracy", "p_at_10"):
            ret = s.get(f"retention_{metric}")
            row.append(f"{s[metric]:.4f}" + (f" ({100 * ret:.1f}%)" if ret is not None else ""))
        rows.append(row)
    print(format_table(header, rows, style="markdown"))
    report = {"dataset": args.dataset, "args": vars(args), "teacher": teacher_info, "scores": scores,
              "bytes": sizes, "seconds_per_round": times, "threads": torch.get_num_threads(),
              "distill_steps": distilled.steps, "wall_minutes": (time.time() - started) / 60}
    atomic_write_json(out / "results.json", report)
    print(f"\nresults: {os.fspath(out / 'results.json')} ({report['wall_minutes']:.1f} min)")
    return report


if __name__ == "__main__":
    main()
