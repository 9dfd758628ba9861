"""Checkpoint size and quantization memory, measured: ``python benchmarks/bench_storage.py [MODEL_DIR ...]``.

For each model folder (default: the bundled all-MiniLM-L6-v2), ternarize it with every embedding
storage option, save, and print the safetensors bytes against the FP32 checkpoint, plus the
linear-only ratio. Then, in a fresh subprocess per model, the peak RSS while quantizing on the fly
(``AutoModel.from_pretrained(..., quantization_config=TernaryConfig())``) against the FP32 checkpoint
size, with the RSS of the process after imports shown apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap

_RSS_PROBE = textwrap.dedent(
    """
    import json, sys
    import torch
    import ternary_hf
    from transformers import AutoModel

    def status(field):  # VmHWM, unlike ru_maxrss, is not inherited from the parent across fork+exec
        line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    base = status("VmRSS")
    model = AutoModel.from_pretrained(sys.argv[1], quantization_config=ternary_hf.TernaryConfig())
    print(json.dumps({"baseline_rss": base, "peak_rss": status("VmHWM"), "anon_rss": status("RssAnon"),
                      "file_rss": status("RssFile")}))
    """
)


def _storage_rows(model_dir: str) -> list[dict]:
    from transformers import AutoModel

    import ternary_hf  # noqa: F401
    from ternary_hf import TernaryConfig
    from ternary_hf.ptq.quantize import linear_layer_bytes
    from ternary_hf.utils.io import weight_files_bytes

    fp32 = weight_files_bytes(model_dir)
    rows = []
    for storage in (None, "fp16", "int8", "int4"):
        model = AutoModel.from_pretrained(model_dir, quantization_config=TernaryConfig(embedding_storage=storage))
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            size = weight_files_bytes(tmp)
        lin_fp32, lin_stored = linear_layer_bytes(model)
        rows.append({"embedding_storage": str(storage), "bytes": size, "ratio": size / fp32,
                     "linear_ratio": lin_stored / lin_fp32, "fp32_bytes": fp32})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model folders (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocess")
    args = parser.parse_args()
    if not args.models:
        from ternary_hf.data.defaults import default_model_path

        args.models = [default_model_path()]
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cpus, python {sys.version.split()[0]}")
    for model_dir in args.models:
        name = os.path.basename(os.path.normpath(model_dir))
        print(f"\n== {name}  ({model_dir})")
        print(f"{'embeddings':>10} | {'MB':>7} | {'ratio vs FP32':>13} | {'linear-only ratio':>17}")
        for row in _storage_rows(model_dir):
            print(f"{row['embedding_storage']:>10} | {row['bytes'] / 1e6:7.1f} | {row['ratio']:13.3f} | "
                  f"{row['linear_ratio']:17.3f}")
        if not args.no_rss:
            out = subprocess.run([sys.executable, "-c", _RSS_PROBE, model_dir], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
            rss = json.loads(out)
            from ternary_hf.utils.io import weight_files_bytes

            fp32 = weight_files_bytes(model_dir)
            print(f"peak RSS while quantizing on the fly: {rss['peak_rss'] / 1e6:.0f} MB = "
                  f"{rss['peak_rss'] / fp32:.2f}x the FP32 checkpoint ({fp32 / 1e6:.0f} MB); "
                  f"process after imports {rss['baseline_rss'] / 1e6:.0f} MB; "
                  f"growth while loading {(rss['peak_rss'] - rss['baseline_rss']) / fp32:.2f}x the checkpoint "
                  "(includes the checkpoint's own pages, mapped by safetensors)")
            print(f"after loading: anonymous {rss['anon_rss'] / 1e6:.0f} MB, "
                  f"file-backed {rss['file_rss'] / 1e6:.0f} MB (libraries + the mapped checkpoint)")


if __name__ == "__main__":
    main()
