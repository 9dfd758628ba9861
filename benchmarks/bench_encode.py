"""End to end: ``SentenceTransformer.encode`` with a ternary model vs the CPU alternatives (issue 5, benchmark 2).

Why this script: a fast ternary GEMM (benchmark 1, ``bench_linear.py``) only matters if whole-model
encoding gets faster than what a CPU user runs today. For all-MiniLM-L6-v2 (the bundled model) and
all-mpnet-base-v2 (``--mpnet DIR``) it encodes the same real sentences (batch 32) with, side by side
in ONE run:

* ``fp32``     - plain ``SentenceTransformer`` in torch float32, the denominator of every ratio;
* ``ternary``  - ours: ``SentenceTransformer(path, model_kwargs={"quantization_config": TernaryConfig()})``
  (2-bit weights, per-token int8 activations, the AVX2 or AVX-512 VNNI kernel build; int4 embedding table);
* ``onnx-int8`` - ONNX Runtime with dynamic int8 weights: the model exported with
  ``torch.onnx.export(..., dynamo=False)`` from a separate copy, ``onnxruntime.quantization.quantize_dynamic``
  (``QInt8`` weights), then the tokenizer + mean pooling + normalisation done here (optimum-onnx, which
  sentence-transformers' ``backend="onnx"`` needs, pins transformers 4 and breaks this stack);
* ``onnx-u8``  - (optional, ``--backends ... onnx-u8``) the same with ``QUInt8`` weights: on AVX2 without
  VNNI, ORT's u8 x s8 path can saturate int16 pair sums, which costs accuracy (MPNet!);
* ``ternary-avx2`` - (optional) ours with the AVX2 kernel build forced (``TERNARY_HF_KERNEL_ISA=avx2``):
  on a CPU with AVX-512 VNNI, where ``ternary`` runs the VNNI build, this shows what VNNI buys;
* ``openvino`` - OpenVINO at its default precision (it picks bf16 on CPUs with AMX, f32 elsewhere; the
  table names what it picked), the model converted with ``openvino.convert_model`` (``_openvino.py``);
* ``openvino-int8`` - the same graph quantized with NNCF (static int8, ``ModelType.TRANSFORMER``,
  calibrated on 300 Amazon review sentences, none of them in the benchmark set);
* ``torch-bf16`` - plain ``SentenceTransformer`` with the model in ``torch.bfloat16`` (run only when the
  CPU has AMX-BF16 or AVX512-BF16, where oneDNN has native bf16 kernels);
* ``qdyn``     - ``torch.ao.quantization.quantize_dynamic`` int8 on every ``nn.Linear``;
* ``ternary-lean`` - ours with the ONNX/OpenVINO rows' own tokenizer, mean pooling and normalisation
  (``OnnxEncoder`` with the torch model as its session) instead of ``SentenceTransformer.encode``: the
  same work around the network as those rows, so their latencies compare network with network
  (``encode`` adds ~2 ms of bookkeeping per call: ``model.eval()``, device lookup, tokenizer wrappers);
* ``ternary-int8-last`` - (optional) ours with the last encoder block stored int8
  (``TernaryConfig(int8_modules=["encoder.layer.<last>"])``, the quality option of docs/quality.md): what
  running that block outside the kernel's fused encoder costs;
* ``ternary-distill-default`` - (optional) ours in the format ``ternary-hf distill`` writes by default: its
  int8 / int4 blocks (``DistillConfig``'s ``int8_blocks``, ``int4_blocks``, ``int4_last_blocks``), the rest
  ternary;
* ``ternary-distill-default-lean`` - (optional) the same through ``ternary-lean``'s pipeline: its batch-1
  latency compares with the stock rows network with network;
* ``ternary-distill-default-fixed`` - (optional) the same with the AVX2 int4 tile widening its int16 sums
  every 2 blocks whatever the activations (``_set_int4_reach_cap(2)``, the kernel before its per-row reach):
  what the reach gains, in one run;
* ``ternary-eager`` - (optional) ours through transformers' own layer-by-layer forward
  (``TERNARY_HF_FAST_FORWARD=0``): the path before ``ternary_hf.integrations.fast_forward``;
* ``bnb-int8`` - (optional) bitsandbytes ``load_in_8bit`` when it imports and runs on this CPU (skipped with
  the reason otherwise). It is several times slower than FP32 here, so it encodes only a fraction of each round.

How it measures: every backend lives in its own worker process (so peak RSS, ``VmHWM`` from
``/proc/self/status``, is its own; ``ru_maxrss`` would be inherited across fork+exec). All workers of
one (model, threads) cell are loaded first, then the main process hands each the same chunk of
sentences round after round, rotating the order, so load from other processes hits all backends alike.
Throughput = sentences / seconds summed over the rounds (tokenisation included, as in ``encode``);
``best`` is the fastest round. Batch-1 latency is the median over ``--latency-n`` single-sentence
``encode`` calls, interleaved in blocks of ``--latency-block`` calls (default 15): every engine runs a
block, then the next block, so a slow spell of the shared machine (its speed drifts by tens of percent
over seconds) falls on all engines alike rather than on whichever had its share then. Each block is
preceded by 10 untimed calls (the engine was idle while the others ran). After every turn the
harness waits until that engine's threads are idle (ONNX Runtime's pool spins on a core for tens of ms after
a call, which the next engine would otherwise share its cores with). Quality: mean cosine of
each backend's embeddings to FP32's.
Peak RSS is reported for the whole process (loading included) and for the encode phase alone (the
peak is reset through ``/proc/self/clear_refs`` once the model is loaded and warmed up).

``--profile`` adds ``profile_forward.py``'s breakdown of one ternary MiniLM forward (every kernel build,
the same threads, batch 32 and 1): embeddings, GEMMs, activation quantization, attention, LayerNorm +
residual, GELU, pooling, Python / dispatch, for transformers' forward and the runtime's.

Usage::

    python benchmarks/bench_encode.py --mpnet /path/to/all-mpnet-base-v2          # full: 2,000 sentences
    python benchmarks/bench_encode.py --quick                                     # MiniLM, 256 sentences
    python benchmarks/bench_encode.py --quick --profile --threads 2
    python benchmarks/bench_encode.py --models minilm --n 1000 --rounds 4 --backends fp32 ternary onnx-int8

Needs ``pip install onnx onnxruntime`` (and optionally ``bitsandbytes``); exported ONNX files are cached in
``$TERNARY_HF_CACHE/bench`` (default ``~/.cache/ternary-hf/bench``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _machine import cpu_model, load_avg

from ternary_hf.evaluation.onnx_baseline import OnnxEncoder
from ternary_hf.utils.io import folder_fingerprint

BACKENDS = ["fp32", "ternary", "ternary-lean", "onnx-int8", "openvino", "openvino-int8", "torch-bf16", "qdyn"]
#: optional: ONNX Runtime with QUInt8 weights (u8 x u8, no vpmaddubsw int16 saturation on AVX2 without VNNI);
#: ternary-avx2: ours with the AVX2 kernel build forced (TERNARY_HF_KERNEL_ISA=avx2), on a VNNI CPU;
#: ternary-eager: ours through transformers' own forward (TERNARY_HF_FAST_FORWARD=0); bnb-int8: bitsandbytes;
#: ternary-int8-last: ours with the last encoder block in int8 (int8_modules); ternary-distill-default: the
#: int8 / int4 blocks `ternary-hf distill` keeps by default (-lean: through ternary-lean's pipeline)
EXTRA_BACKENDS = ["onnx-u8", "ternary-avx2", "ternary-eager", "bnb-int8", "ternary-int8-last",
                  "ternary-distill-default", "ternary-distill-default-lean", "ternary-distill-default-fixed"]
#: The stock engines a CPU user would pick instead (issue 29): ours must beat the fastest of them.
STOCK = ("onnx-int8", "openvino", "openvino-int8", "torch-bf16", "qdyn", "onnx-u8")
OV_CALIBRATION = 300  # NNCF calibration sentences (Amazon reviews: not in the benchmark set)
TARGET_VS_FP32 = 3.0
TARGET_VS_STOCK = 1.25
TARGET_LATENCY = 1.0
#: /proc/cpuinfo flags printed with every run (what the engines can use on this CPU).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


# --------------------------------------------------------------------------------------------------
# machine and data
# --------------------------------------------------------------------------------------------------


def proc_status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``: peak RSS of THIS process, ``VmRSS``: current)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: write 5 to ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def benchmark_sentences(n: int, seed: int = 0) -> tuple[list[str], str]:
    """``n`` distinct real sentences: ``real_sentences`` (917 tweets), topped up with movie-review sentences."""
    import numpy as np

    from ternary_hf.data.corpora import load_dataset, real_sentences

    tweets_available = 917
    tweets = real_sentences(min(n, tweets_available), seed=seed)
    texts = list(tweets)
    if n > len(texts):
        seen = set(texts)
        movies = [t for t in dict.fromkeys(load_dataset("movie-sentences", "test").texts) if t not in seen]
        movies += [t for t in dict.fromkeys(load_dataset("movie-sentences", "train").texts) if t not in seen]
        movies = list(dict.fromkeys(movies))
        if n - len(texts) > len(movies):
            raise SystemExit(f"only {len(texts) + len(movies)} distinct sentences available, asked for {n}")
        rng = np.random.default_rng(seed)
        texts += [movies[i] for i in rng.choice(len(movies), size=n - len(texts), replace=False)]
    rng = np.random.default_rng(seed + 1)
    texts = [texts[i] for i in rng.permutation(len(texts))]  # mix the sources across rounds
    n_movies = len(texts) - len(tweets)
    source = f"{len(tweets)} tweets (real_sentences)" + (f" + {n_movies} movie-review sentences" if n_movies else "")
    return texts, source


def cache_root() -> Path:
    base = os.environ.get("TERNARY_HF_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "ternary-hf") / "bench"


# --------------------------------------------------------------------------------------------------
# worker side: one process per backend
# --------------------------------------------------------------------------------------------------
def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


_NOTES: list[str] = []
#: Single-sentence calls each engine makes, untimed, before its share of the latency calls of a round:
#: the engines take turns on the same cores, so the first calls after another engine's turn would time
#: its caches and sleeping threads rather than the engine itself (a server is warm).
_LATENCY_WARMUP = 10


class _TorchSession:
    """ONNX Runtime's session interface over the ternary torch model (for ``ternary-lean``)."""

    def __init__(self, model_dir: str, config: Any = None) -> None:
        from transformers import AutoModel

        import ternary_hf
        from ternary_hf.kernels import cpu_kernel_available, kernel_status

        if not cpu_kernel_available():
            raise RuntimeError(f"the ternary CPU kernel is not available: {kernel_status()}")
        config = config if config is not None else ternary_hf.TernaryConfig()
        self.model = AutoModel.from_pretrained(model_dir, quantization_config=config).eval()

    def get_inputs(self) -> list[Any]:
        return [type("Input", (), {"name": name})() for name in ("input_ids", "attention_mask")]

    def run(self, _outputs: Any, feeds: dict[str, Any]) -> list[Any]:
        import torch

        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        return [out.last_hidden_state.numpy()]


def cpu_isa_flags() -> list[str]:
    """The ISA_FLAGS this CPU reports in /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        flags = set()
    return [flag for flag in ISA_FLAGS if flag in flags]


def _load_backend(backend: str, model_dir: str, threads: int, onnx_path: str | None, ov_dir: str | None) -> Any:
    """Returns an object with ``encode(texts, batch_size) -> np.ndarray`` (normalised or not)."""
    if backend in ("onnx-int8", "onnx-u8"):
        assert onnx_path is not None
        if backend == "onnx-u8":
            onnx_path = str(Path(onnx_path).with_name("model_uint8.onnx"))
        return OnnxEncoder(onnx_path, model_dir, threads)
    if backend in ("openvino", "openvino-int8"):
        from _openvino import openvino_encoder

        assert ov_dir is not None
        xml = Path(ov_dir) / ("model_int8.xml" if backend == "openvino-int8" else "model.xml")
        enc, precision = openvino_encoder(xml, model_dir, threads)
        _NOTES.append(precision)  # what OpenVINO picked: shown beside the backend's name
        return enc
    import torch
    from sentence_transformers import SentenceTransformer

    _set_threads(threads)
    if backend == "ternary-lean":
        return OnnxEncoder(None, model_dir, threads, session=_TorchSession(model_dir))
    if backend == "ternary-distill-default-lean":
        session = _TorchSession(model_dir, _distill_default_config(model_dir))
        return OnnxEncoder(None, model_dir, threads, session=session)
    if backend == "fp32":
        st = SentenceTransformer(model_dir, device="cpu")
    elif backend == "torch-bf16":
        if not {"avx512_bf16", "amx_bf16"} & set(cpu_isa_flags()):
            raise RuntimeError("this CPU has neither AVX512-BF16 nor AMX-BF16 (bf16 would be emulated)")
        st = SentenceTransformer(model_dir, device="cpu").to(torch.bfloat16)
    elif backend in ("ternary", "ternary-avx2", "ternary-eager", "ternary-int8-last", "ternary-distill-default",
                     "ternary-distill-default-fixed"):
        if backend == "ternary-avx2":
            os.environ["TERNARY_HF_KERNEL_ISA"] = "avx2"  # read when the kernel first loads, below
        if backend == "ternary-eager":
            os.environ["TERNARY_HF_FAST_FORWARD"] = "0"  # read on every forward
        import ternary_hf
        from ternary_hf.kernels import cpu_kernel_available, kernel_status

        if not cpu_kernel_available():
            raise RuntimeError(f"the ternary CPU kernel is not available: {kernel_status()}")
        config = ternary_hf.TernaryConfig()
        if backend == "ternary-int8-last":
            from transformers import AutoConfig

            last = AutoConfig.from_pretrained(model_dir).num_hidden_layers - 1
            config = ternary_hf.TernaryConfig(int8_modules=[f"encoder.layer.{last}"])
        if backend.startswith("ternary-distill-default"):
            config = _distill_default_config(model_dir)
        if backend == "ternary-distill-default-fixed":
            from ternary_hf.kernels import kernel_module

            kernel_module()._set_int4_reach_cap(2)  # the AVX2 int4 tile as before 2026-12-07 evening
        st = SentenceTransformer(model_dir, device="cpu", model_kwargs={"quantization_config": config})
    elif backend == "ternary-saved":
        import ternary_hf  # noqa: F401  (registers the quantizer that loads the 2-bit folder)

        st = SentenceTransformer(_saved_ternary(model_dir), device="cpu")
    elif backend == "qdyn":
        st = SentenceTransformer(model_dir, device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao deprecation notice
            torch.ao.quantization.quantize_dynamic(st[0].auto_model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        if not any(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in st.modules()):
            raise RuntimeError("quantize_dynamic left no quantized Linear in the model")
    elif backend == "bnb-int8":
        import bitsandbytes  # noqa: F401  (ImportError = the reason it is skipped)
        from transformers import BitsAndBytesConfig

        st = SentenceTransformer(
            model_dir, device="cpu", model_kwargs={"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
        )
    else:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    st.eval()

    class _ST:
        def encode(self, texts: Sequence[str], batch_size: int) -> Any:
            with torch.inference_mode():  # as a tensor first: numpy has no bfloat16 (torch-bf16)
                emb = st.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
                return emb.float().numpy()

    return _ST()


def _distill_default_config(model_dir: str):
    """The ``TernaryConfig`` of a model ``ternary-hf distill`` finalizes with its defaults (which blocks are
    int8 / int4), named on a weightless skeleton of the model."""
    import torch
    from transformers import AutoConfig, AutoModel

    import ternary_hf
    from ternary_hf.train.config import DistillConfig
    from ternary_hf.train.student import with_int4_blocks, with_int8_blocks

    with torch.device("meta"):
        skeleton = AutoModel.from_config(AutoConfig.from_pretrained(model_dir))
    defaults = DistillConfig()
    config = with_int8_blocks(ternary_hf.TernaryConfig(), skeleton, defaults.int8_blocks)
    return with_int4_blocks(config, skeleton, defaults.int4_blocks, defaults.int4_last_blocks)


def _saved_ternary(model_dir: str) -> str:
    """The model ternarized once and saved as a 2-bit folder (cached): what a user deploys."""
    out = cache_root() / "ternary" / f"{Path(model_dir).name}-{folder_fingerprint(model_dir)}"
    if not (out / "modules.json").exists():
        from sentence_transformers import SentenceTransformer

        import ternary_hf

        tmp = out.with_name(out.name + f".partial{os.getpid()}")
        SentenceTransformer(model_dir, device="cpu", model_kwargs={"quantization_config": ternary_hf.TernaryConfig()}
                            ).save(str(tmp))
        tmp.replace(out)
    return str(out)


def _emit(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def worker_main(args: argparse.Namespace) -> None:
    """Line protocol on stdin/stdout: load, say ``ready``, then serve ``encode`` / ``latency`` / ``finish``."""
    import logging

    import numpy as np

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    texts: list[str] = json.loads(Path(args.sentences).read_text())
    try:
        enc = _load_backend(args.worker, args.model_dir, args.threads, args.onnx_path, args.ov_dir)
        enc.encode(texts[: args.batch_size], args.batch_size)  # warm-up (lazy inits, kernel build/load)
        enc.encode(texts[:1], 1)
    except Exception as exc:  # reported as "skipped: reason" by the main process
        _emit({"status": "error", "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})
        return
    load_peak = proc_status_kb("VmHWM")
    rss_ready = proc_status_kb("VmRSS")
    reset_ok = reset_peak_rss()
    _emit({"status": "ready", "load_peak_kb": load_peak, "rss_ready_kb": rss_ready, "reset_ok": reset_ok,
           "note": ", ".join(_NOTES)})
    embeddings: dict[int, Any] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "encode":
            idx = cmd["indices"]
            chunk = [texts[i] for i in idx]
            t0 = time.perf_counter()
            emb = enc.encode(chunk, args.batch_size)
            dt = time.perf_counter() - t0
            for i, e in zip(idx, np.asarray(emb, dtype=np.float32), strict=True):
                embeddings[i] = e
            _emit({"status": "ok", "seconds": dt, "count": len(idx)})
        elif cmd["cmd"] == "latency":
            for i in cmd["indices"][:_LATENCY_WARMUP]:  # untimed: the other engines just ran on these cores
                enc.encode([texts[i]], 1)
            times = []
            for i in cmd["indices"]:
                t0 = time.perf_counter()
                enc.encode([texts[i]], 1)
                times.append(time.perf_counter() - t0)
            _emit({"status": "ok", "times": times})
        elif cmd["cmd"] == "finish":
            keys = sorted(embeddings)
            np.save(args.out, np.stack([embeddings[k] for k in keys]))
            Path(args.out + ".idx.json").write_text(json.dumps(keys))
            _emit({"status": "done", "encode_peak_kb": proc_status_kb("VmHWM"), "rss_kb": proc_status_kb("VmRSS")})
            return


def export_main(args: argparse.Namespace) -> None:
    """Export a separate copy of the model to ONNX (fp32), quantize it to int8, check the ONNX pipeline."""
    import numpy as np

    from ternary_hf.evaluation.onnx_baseline import export_onnx

    warnings.simplefilter("ignore")
    out_dir = Path(args.onnx_dir)
    fp32_path = export_onnx(args.model_dir, out_dir)["fp32"]
    # check the whole ONNX pipeline (tokenizer, pooling) against sentence-transformers on a few sentences
    from sentence_transformers import SentenceTransformer

    texts: list[str] = json.loads(Path(args.sentences).read_text())[:16]
    ref = SentenceTransformer(args.model_dir, device="cpu").encode(
        texts, convert_to_numpy=True, normalize_embeddings=True
    )
    got = OnnxEncoder(str(fp32_path), args.model_dir, 1).encode(texts, 8)
    cos = float(np.min((ref * got).sum(axis=1)))
    (out_dir / "check.json").write_text(json.dumps({"min_cos_onnx_fp32_vs_st": cos}))
    print(json.dumps({"min_cos_onnx_fp32_vs_st": cos}))


# --------------------------------------------------------------------------------------------------
# main process
# --------------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, backend: str, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.backend = backend
        self.settle_ms: list[float] = []  # per ask(): how long the worker kept burning CPU after replying
        self.log = open(log, "w")  # noqa: SIM115  (closed in close())
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = Path(self.log.name).read_text().strip().splitlines()[-3:]
            return {"status": "error", "error": f"worker exited ({self.proc.returncode}): {' | '.join(tail)[:300]}"}
        return json.loads(line)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        """Send ``cmd``, read the reply, then wait until the worker's threads are idle (:meth:`settle`)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        self.settle_ms.append(self.settle())
        return reply

    def cpu_ns(self) -> int | None:
        """CPU time of all the worker's threads so far (ns, ``/proc/PID/task/*/schedstat``), None without /proc."""
        total = 0
        try:
            tasks = os.listdir(f"/proc/{self.proc.pid}/task")
        except OSError:
            return None
        for tid in tasks:
            try:
                with open(f"/proc/{self.proc.pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended between listdir and open
        return total

    def settle(self, poll_s: float = 0.005, timeout_s: float = 2.0) -> float:
        """Wait until the worker burns under 10% of a core over ``poll_s``; returns the ms waited.

        Why: ONNX Runtime's pool threads (and OpenVINO's) keep spinning on a core for tens of
        milliseconds after a call returns (benchmarks/README.md). The engine whose turn comes next
        would share its cores with that spin, which no deployment running one engine sees.
        """
        start = time.perf_counter()
        before = self.cpu_ns()
        while before is not None and time.perf_counter() - start < timeout_s:
            time.sleep(poll_s)
            now = self.cpu_ns()
            if now is None or now - before < 0.1 * poll_s * 1e9:
                break
            before = now
        return (time.perf_counter() - start) * 1e3

    def close(self) -> None:
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def run_cell(
    model_name: str, model_dir: str, threads: int, backends: list[str], args: argparse.Namespace,
    workdir: Path, sentences_file: Path, n: int, onnx_path: str | None, ov_dir: str | None = None,
) -> dict[str, dict[str, Any]]:
    import numpy as np

    results: dict[str, dict[str, Any]] = {}
    workers: dict[str, Worker] = {}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    for b in backends:  # loaded one after the other (loading is not timed)
        if b.startswith("onnx") and onnx_path is None:
            results[b] = {"skipped": "ONNX export failed (see above)"}
            continue
        if b.startswith("openvino") and ov_dir is None:
            results[b] = {"skipped": "OpenVINO conversion failed (see above)"}
            continue
        out = workdir / f"{model_name}-t{threads}-{b}"
        cmd = [sys.executable, __file__, "--worker", b, "--model-dir", model_dir, "--threads", str(threads),
               "--batch-size", str(args.batch_size), "--sentences", str(sentences_file), "--out", str(out)]
        if onnx_path:
            cmd += ["--onnx-path", onnx_path]
        if ov_dir:
            cmd += ["--ov-dir", ov_dir]
        w = Worker(b, cmd, workdir / f"{out.name}.log", env)
        if w.info.get("status") != "ready":
            results[b] = {"skipped": w.info.get("error", "unknown error")}
            w.close()
            continue
        workers[b] = w
        results[b] = {"load_peak_kb": w.info["load_peak_kb"], "reset_ok": w.info["reset_ok"], "rounds": [],
                      "note": w.info.get("note", ""),
                      "count": 0, "seconds": 0.0, "lat": []}
    order = list(workers)
    rounds = args.rounds
    chunks = [list(range(n))[r::rounds] for r in range(rounds)]
    lat_idx = list(range(min(args.latency_n, n)))
    lat_chunks = [lat_idx[r::rounds] for r in range(rounds)]
    for r in range(rounds):
        rot = order[r % len(order):] + order[: r % len(order)] if order else []
        for b in rot:
            idx = chunks[r]
            if b == "bnb-int8":
                idx = idx[: max(args.batch_size, int(len(idx) * args.bnb_fraction))]
            reply = workers[b].ask(cmd="encode", indices=idx)
            res = results[b]
            res["rounds"].append(reply["count"] / reply["seconds"])
            res["count"] += reply["count"]
            res["seconds"] += reply["seconds"]
        lat_round = lat_chunks[r]
        for start in range(0, len(lat_round), args.latency_block):
            for b in rot:
                reply = workers[b].ask(cmd="latency", indices=lat_round[start:start + args.latency_block])
                results[b]["lat"] += reply["times"]
        print(f"#   {model_name} threads={threads} round {r + 1}/{rounds}: "
              + ", ".join(f"{b} {results[b]['rounds'][-1]:.1f}/s" for b in rot)
              + f" (load {load_avg()})", flush=True)
    if "ternary" in workers and args.saved_probe:
        # RSS only (not timed): the same model loaded from its saved 2-bit folder, one round of sentences
        out = workdir / f"{model_name}-t{threads}-ternary-saved"
        cmd = [sys.executable, __file__, "--worker", "ternary-saved", "--model-dir", model_dir, "--threads",
               str(threads), "--batch-size", str(args.batch_size), "--sentences", str(sentences_file),
               "--out", str(out)]
        w = Worker("ternary-saved", cmd, workdir / f"{out.name}.log", env)
        if w.info.get("status") == "ready":
            w.ask(cmd="encode", indices=chunks[0])
            reply = w.ask(cmd="finish")
            saved_probe = {"load_peak_kb": w.info["load_peak_kb"], "encode_peak_kb": reply.get("encode_peak_kb"),
                           "reset_ok": w.info["reset_ok"]}
        else:
            saved_probe = {"skipped": w.info.get("error", "unknown error")}
        w.close()
    for b, w in workers.items():
        reply = w.ask(cmd="finish")
        w.close()
        res = results[b]
        res["encode_peak_kb"] = reply.get("encode_peak_kb")
        out = workdir / f"{model_name}-t{threads}-{b}"
        res["emb"] = np.load(str(out) + ".npy")
        res["emb_idx"] = json.loads(Path(str(out) + ".idx.json").read_text())
        res["throughput"] = res["count"] / res["seconds"]
        res["best"] = max(res["rounds"])
        res["latency_ms"] = statistics.median(res["lat"]) * 1e3
        res["settle_ms"] = statistics.median(w.settle_ms[:-1] or [0.0])  # the last one is after "finish"
    if "fp32" in workers:
        ref = results["fp32"]
        ref_map = dict(zip(ref["emb_idx"], ref["emb"], strict=True))
        for b in workers:
            e = results[b]["emb"]
            r_ = np.stack([ref_map[i] for i in results[b]["emb_idx"]])
            e = e / np.linalg.norm(e, axis=1, keepdims=True)
            r_ = r_ / np.linalg.norm(r_, axis=1, keepdims=True)
            results[b]["cos"] = float((e * r_).sum(axis=1).mean())
    if "ternary" in workers and args.saved_probe:
        results["ternary-saved"] = saved_probe
    return results


def fastest_stock(results: dict[str, dict[str, Any]], key: str = "throughput") -> tuple[str, float] | None:
    """(backend, value) of the best stock engine measured: the highest throughput or lowest latency."""
    got = [(b, results[b][key]) for b in STOCK if key in results.get(b, {})]
    if not got:
        return None
    return max(got, key=lambda kv: kv[1]) if key == "throughput" else min(got, key=lambda kv: kv[1])


def print_cell(model_name: str, threads: int, results: dict[str, dict[str, Any]], bnb_fraction: float) -> None:
    print(f"\n#### {model_name}, threads={threads}, batch 32\n")
    best = fastest_stock(results)
    best_lat = fastest_stock(results, "latency_ms")
    print("| backend | sentences/s | best round | x FP32 | x fastest stock | batch-1 ms (median) | latency x FP32 "
          "| latency x fastest stock | peak RSS MB: load / encode | mean cos to FP32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fp = results.get("fp32", {})
    for b, res in results.items():
        if b == "ternary-saved":
            if "skipped" not in res:
                enc = f"{res['encode_peak_kb'] / 1024:.0f}" if res.get("reset_ok") and res["encode_peak_kb"] else "-"
                print(f"| ternary, loaded from its saved 2-bit folder (RSS only) | | | | | | | | "
                      f"{(res['load_peak_kb'] or 0) / 1024:.0f} / {enc} | |")
            continue
        if "skipped" in res:
            print(f"| {b} | skipped: {res['skipped']} | | | | | | | | |")
            continue
        vs_fp = f"{res['throughput'] / fp['throughput']:.2f}" if "throughput" in fp else "-"
        vs_best = f"{res['throughput'] / best[1]:.2f}" if best else "-"
        lat_fp = f"{res['latency_ms'] / fp['latency_ms']:.2f}" if "latency_ms" in fp else "-"
        lat_best = f"{res['latency_ms'] / best_lat[1]:.2f}" if best_lat else "-"
        load_peak = f"{(res['load_peak_kb'] or 0) / 1024:.0f}"
        enc_peak = f"{res['encode_peak_kb'] / 1024:.0f}" if res.get("reset_ok") and res["encode_peak_kb"] else "-"
        name = b + (f" ({bnb_fraction:.0%} of the sentences)" if b == "bnb-int8" else "")
        name += f" ({res['note']})" if res.get("note") else ""
        print(f"| {name} | {res['throughput']:.1f} | {res['best']:.1f} | {vs_fp} | {vs_best} | "
              f"{res['latency_ms']:.2f} | {lat_fp} | {lat_best} | {load_peak} / {enc_peak} | "
              f"{res.get('cos', float('nan')):.4f} |")
    if best:
        print(f"\nfastest stock engine: {best[0]} ({best[1]:.1f} sentences/s); lowest stock batch-1 latency: "
              f"{best_lat[0]} ({best_lat[1]:.2f} ms)")
    settled = [f"{b} {res['settle_ms']:.0f}" for b, res in results.items() if "settle_ms" in res]
    if settled:
        print("wait for each engine's threads to go idle after its turn, before the next engine's "
              f"(median ms): {', '.join(settled)}")


def print_targets(all_results: dict[tuple[str, int], dict[str, dict[str, Any]]]) -> None:
    """Issue 29's targets, per (model, threads): ours vs FP32 and vs the fastest stock engine."""
    print(f"\n### Targets (issue 29): batch 32: >= {TARGET_VS_STOCK}x the fastest stock engine and "
          f">= {TARGET_VS_FP32:.0f}x FP32 torch; batch-1 latency <= the fastest stock engine's (2 threads)\n")
    for (model_name, threads), res in all_results.items():
        f = res.get("fp32", {})
        best, best_lat = fastest_stock(res), fastest_stock(res, "latency_ms")
        for own_name in ("ternary", "ternary-distill-default"):
            t = res.get(own_name, {})
            if "throughput" not in t:
                continue
            parts = []
            if "throughput" in f:
                vs_f = t["throughput"] / f["throughput"]
                parts.append(f"{vs_f:.2f}x FP32 [{'met' if vs_f >= TARGET_VS_FP32 else 'NOT met'}]")
            if best:
                vs_s = t["throughput"] / best[1]
                parts.append(f"{vs_s:.2f}x {best[0]} [{'met' if vs_s >= TARGET_VS_STOCK else 'NOT met'}]")
            if best_lat:
                # Latency like for like: the stock rows run tokenizer + network + mean pooling, as the -lean
                # rows do (SentenceTransformer.encode adds its own bookkeeping per call).
                lean = res.get(f"{own_name}-lean", {})
                name, own = (f"{own_name}-lean", lean) if "latency_ms" in lean else (own_name, t)
                lat = own["latency_ms"] / best_lat[1]
                parts.append(f"batch-1 latency ({name}) {own['latency_ms']:.2f} ms = {lat:.2f}x {best_lat[0]}'s "
                             f"[{'met' if lat <= TARGET_LATENCY else 'NOT met'}]")
            mark = "" if threads == 2 else " (targets are stated for 2 threads)"
            print(f"# {model_name} threads={threads}: {own_name} " + ", ".join(parts) + mark)


def export_onnx(model_name: str, model_dir: str, sentences_file: Path, workdir: Path) -> str | None:
    onnx_dir = cache_root() / "onnx" / f"{model_name}-{folder_fingerprint(model_dir)}"
    int8 = onnx_dir / "model_int8.onnx"
    if not int8.exists() or not int8.with_name("model_uint8.onnx").exists():
        print(f"# exporting {model_name} to ONNX + int8 into {onnx_dir} ...", flush=True)
        t0 = time.time()
        cmd = [sys.executable, __file__, "--worker", "export", "--model-dir", model_dir, "--onnx-dir", str(onnx_dir),
               "--sentences", str(sentences_file)]
        log = workdir / f"export-{model_name}.log"
        with open(log, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0 or not int8.exists():
            print(f"# ONNX export of {model_name} FAILED (rc={rc}): {' | '.join(log.read_text().splitlines()[-3:])}")
            return None
        print(f"#   done in {time.time() - t0:.0f} s", flush=True)
    check = onnx_dir / "check.json"
    if check.exists():
        cos = json.loads(check.read_text())["min_cos_onnx_fp32_vs_st"]
        print(f"# ONNX pipeline check ({model_name}, fp32 graph vs sentence-transformers, 16 sentences): "
              f"min cos {cos:.6f}")
    return str(int8)


def export_openvino(model_name: str, model_dir: str, workdir: Path) -> str | None:
    """Convert (and NNCF-quantize) the model for OpenVINO once, in a subprocess; the folder, or None."""
    ov_dir = cache_root() / "openvino" / f"{model_name}-{folder_fingerprint(model_dir)}"
    if not (ov_dir / "model_int8.xml").exists():
        print(f"# converting {model_name} for OpenVINO (+ NNCF int8, {OV_CALIBRATION} calibration sentences) "
              f"into {ov_dir} ...", flush=True)
        t0 = time.time()
        cmd = [sys.executable, __file__, "--worker", "ov-export", "--model-dir", model_dir, "--ov-dir", str(ov_dir)]
        log = workdir / f"ov-export-{model_name}.log"
        with open(log, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0 or not (ov_dir / "model_int8.xml").exists():
            print(f"# OpenVINO conversion of {model_name} FAILED (rc={rc}): "
                  f"{' | '.join(log.read_text().splitlines()[-3:])}")
            return None
        print(f"#   done in {time.time() - t0:.0f} s", flush=True)
    return str(ov_dir)


def ov_export_main(args: argparse.Namespace) -> None:
    from _openvino import convert_openvino

    from ternary_hf.data.corpora import load_dataset

    warnings.simplefilter("ignore")
    calibration = list(dict.fromkeys(load_dataset("amazon", "train").texts))[:OV_CALIBRATION]
    print(convert_openvino(args.model_dir, Path(args.ov_dir), calibration))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="MiniLM only, 256 sentences, 2 rounds, 20 latency calls")
    parser.add_argument("--models", nargs="+", default=None, choices=["minilm", "mpnet"])
    parser.add_argument("--mpnet", default=None, help="all-mpnet-base-v2 sentence-transformers folder")
    parser.add_argument("--minilm", default=None, help="all-MiniLM-L6-v2 folder (default: the bundled one)")
    parser.add_argument("--n", type=int, default=None, help="sentences per backend (default 2000)")
    parser.add_argument("--mpnet-n", type=int, default=None, help="sentences for MPNet (default: --n)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds the sentences are split into")
    parser.add_argument("--latency-n", type=int, default=None, help="single-sentence encode calls (default 100)")
    parser.add_argument("--latency-block", type=int, default=15,
                        help="latency calls an engine makes before the next engine's turn (default %(default)s)")
    parser.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS + EXTRA_BACKENDS,
                        help="default: %(default)s; onnx-u8 = ONNX Runtime with QUInt8 weights")
    parser.add_argument("--bnb-fraction", type=float, default=0.125, help="share of each round bnb-int8 encodes")
    parser.add_argument("--no-saved-probe", dest="saved_probe", action="store_false",
                        help="skip the RSS probe of the ternary model loaded from its saved 2-bit folder")
    parser.add_argument("--profile", action="store_true", help="also profile one ternary MiniLM forward")
    parser.add_argument("--profile-only", action="store_true", help="only the profile")
    parser.add_argument("--profile-reps", type=int, default=9)
    # worker-side arguments (internal)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sentences", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--onnx-path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--onnx-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ov-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        args.threads = args.threads[0]
    if args.worker == "export":
        return export_main(args)
    if args.worker == "ov-export":
        return ov_export_main(args)
    if args.worker == "save":
        print(_saved_ternary(args.model_dir))
        return None
    if args.worker is not None:
        return worker_main(args)

    if args.latency_block < 1:
        parser.error(f"--latency-block must be at least 1 (got {args.latency_block})")
    n = args.n or (256 if args.quick else 2000)
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.latency_n = args.latency_n if args.latency_n is not None else (20 if args.quick else 100)
    models = args.models or (["minilm"] if args.quick else ["minilm", "mpnet"])
    if args.profile_only:
        models, args.profile = [], True
    from ternary_hf.data.defaults import default_model_path

    model_dirs = {"minilm": args.minilm or default_model_path(), "mpnet": args.mpnet}
    if "mpnet" in models and not args.mpnet:
        print("# all-mpnet-base-v2 skipped: pass its folder with --mpnet DIR")
        models.remove("mpnet")

    import numpy as np  # noqa: F401  (fail early if missing)
    import sentence_transformers
    import torch
    import transformers

    versions = [f"torch {torch.__version__}", f"transformers {transformers.__version__}",
                f"sentence-transformers {sentence_transformers.__version__}"]
    for mod in ("onnxruntime", "onnx", "openvino", "nncf", "bitsandbytes"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception as exc:  # noqa: BLE001
            versions.append(f"{mod} unavailable ({type(exc).__name__})")
    from ternary_hf.kernels import cpu_kernel_available, kernel_status

    cpu_kernel_available()
    print(f"# date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"# machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; load average {load_avg()}")
    print(f"# ISA flags: {' '.join(cpu_isa_flags()) or 'none of ' + ' '.join(ISA_FLAGS)}")
    print(f"# versions: {', '.join(versions)}")
    print(f"# ternary kernel: {kernel_status()}")

    with tempfile.TemporaryDirectory(prefix="bench_encode_") as tmp:
        workdir = Path(tmp)
        texts, source = benchmark_sentences(max([n, args.mpnet_n or 0, args.batch_size]))
        sentences_file = workdir / "sentences.json"
        sentences_file.write_text(json.dumps(texts))
        print(f"# sentences: {source}; mean {statistics.mean(len(t.split()) for t in texts[:n]):.1f} words")
        print(f"# settings: batch {args.batch_size}, threads {args.threads}, {args.rounds} interleaved rounds, "
              f"batch-1 latency over {args.latency_n} sentences; backends {', '.join(args.backends)}")
        print("# throughput = sentences / total encode seconds (tokenisation included); ratios are throughput ratios "
              "(higher is better) except 'latency x FP32' (lower is better)", flush=True)
        all_results: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
        for model_name in models:
            model_dir = model_dirs[model_name]
            m_n = (args.mpnet_n or n) if model_name == "mpnet" else n
            need_onnx = any(b.startswith("onnx") for b in args.backends)
            onnx_path = export_onnx(model_name, model_dir, sentences_file, workdir) if need_onnx else None
            need_ov = any(b.startswith("openvino") for b in args.backends)
            ov_dir = export_openvino(model_name, model_dir, workdir) if need_ov else None
            if "ternary" in args.backends and args.saved_probe:  # prepared here so no probe pays for it
                cmd = [sys.executable, __file__, "--worker", "save", "--model-dir", model_dir]
                subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            for threads in args.threads:
                res = run_cell(model_name, model_dir, threads, list(args.backends), args, workdir, sentences_file,
                               m_n, onnx_path, ov_dir)
                all_results[(model_name, threads)] = res
                print(f"\n# {model_name}: {m_n} sentences, load average now {load_avg()}")
                print_cell(model_name, threads, res, args.bnb_fraction)
                sys.stdout.flush()
        if all_results:
            print_targets(all_results)
        if args.profile:
            sys.stdout.flush()
            cmd = [sys.executable, str(Path(__file__).with_name("profile_forward.py")), "--threads",
                   *map(str, args.threads), "--reps", str(args.profile_reps)]
            subprocess.run(cmd, check=False)
        print(f"\n# load average at the end: {load_avg()}")


if __name__ == "__main__":
    main()
