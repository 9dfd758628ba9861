"""``ternary-hf serve`` under concurrent load, beside in-process ``encode`` and Infinity serving FP32.

Why this script: dynamic batching is the speed lever of an embedding server, and its failure modes
(throughput lost to HTTP and padding, stragglers waiting for a full queue, responses routed to the
wrong request under load) only show with many clients at once. It measures, on loopback:

1. ``ternary-hf serve`` with the ternary model (``--model``, else the plain ternary all-MiniLM-L6-v2:
   the bundled teacher loaded with ``quantization_config=TernaryConfig()``), driven by N closed-loop
   clients (``--clients``, default 1, 8, 32, 128) for ``--duration`` seconds each after ``--warmup``
   seconds. Every request carries 1-16 real sentences (random, seeded) and asks for base64 floats, as
   the official ``openai`` client does. Reported: texts/s, requests/s, p50/p99 latency, errors, and
   mismatches: a response row is a mismatch unless its cosine to the in-process embedding of its own
   sentence is >= ``--min-cos`` and no other sentence of the pool is closer (nothing lost or swapped).
2. In-process ``SentenceTransformer.encode(pool, batch_size=32)`` of the same model, timed between the
   load points (the servers idle), median of all runs: the throughput a server must keep.
3. Infinity (``infinity-emb``, ``--infinity`` = its ``infinity_emb`` executable in its own virtual
   environment) serving the FP32 teacher with its torch engine, under the same load, interleaved with
   (1) point by point so both see the same machine noise. ``--no-infinity`` skips it.

Prints the machine (CPU, ISA, load) and one row per server and client count; ``--out`` also saves the
printed text. Usage::

    python benchmarks/bench_serve.py --out benchmarks/results/serve_$(date +%F).txt
    python benchmarks/bench_serve.py --clients 32 --duration 20 --no-infinity
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from _machine import cpu_model, load_avg

ROOT = Path(__file__).resolve().parents[1]


def real_sentence_pool(n: int) -> list[str]:
    from ternary_hf.data import real_sentences

    return real_sentences(n)


def teacher_path() -> str:
    from ternary_hf.data import default_model_path

    return default_model_path()


def isa_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        return "?"
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")
    return " ".join(f for f in wanted if f in flags)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- servers
@dataclass
class Server:
    name: str
    url: str
    model_field: str
    proc: subprocess.Popen
    log: Path
    ref: np.ndarray  # in-process embeddings of the pool by the same model, normalised
    metrics: bool = False

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def wait_ready(server: Server, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.name} exited with {server.proc.returncode}; see {server.log}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return time.monotonic() - start
        time.sleep(0.3)
    raise SystemExit(f"{server.name} not ready after {timeout:.0f} s; see {server.log}")


def start_ternary_server(model: str, ref: np.ndarray, threads: int | None, logdir: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "ternary_hf.cli", "serve", model, "--port", str(port),
           "--served-model-name", "ternary", "--log-level", "warning"]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    log = logdir / "ternary_hf_serve.log"
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return Server("ternary-hf serve", f"http://127.0.0.1:{port}", "ternary", proc, log, ref, metrics=True)


def start_infinity(exe: str, teacher: str, ref: np.ndarray, logdir: Path) -> Server:
    port = free_port()
    cmd = [exe, "v2", "--model-id", teacher, "--served-model-name", "teacher", "--port", str(port),
           "--host", "127.0.0.1", "--engine", "torch", "--device", "cpu", "--dtype", "float32",
           "--batch-size", "32", "--no-vector-disk-cache"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0")
    env.pop("PYTHONPATH", None)
    log = logdir / "infinity.log"
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return Server("infinity-emb FP32", f"http://127.0.0.1:{port}", "teacher", proc, log, ref)


# ---------------------------------------------------------------------- load
@dataclass
class Point:
    texts: int = 0
    requests: int = 0
    errors: int = 0
    mismatched: int = 0
    latencies: list[float] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)
    max_abs_diff: float = 0.0
    min_cos: float = 1.0
    all_texts: int = 0  # answered during the whole point, warm-up and tail included
    server_cpu: float = 0.0  # CPU seconds of the server process over the whole point
    client_cpu: float = 0.0  # CPU seconds of this (client) process over the whole point
    done: dict[int, list[tuple[float, int]]] = field(default_factory=dict)  # client -> (time, texts)
    answers: list[tuple[bytes, np.ndarray]] = field(default_factory=list)  # (body, sentence indices)

    def check(self, ref: np.ndarray, min_cos: float) -> None:
        for body, idx in self.answers:
            data = sorted(json.loads(body)["data"], key=lambda d: d["index"])
            emb = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
            self.mismatched += check_rows(emb, idx, ref, min_cos, self)
        self.answers.clear()

    def rate(self, duration: float) -> float:
        """Texts/s: per client, texts answered between its first and last answer in the window, over
        that span (whole request cycles, so no edge effect when latencies are long); summed."""
        total = 0.0
        for answers in self.done.values():
            if len(answers) < 2:
                return self.texts / duration
            total += sum(n for _, n in answers[1:]) / (answers[-1][0] - answers[0][0])
        return total


def check_rows(emb: np.ndarray, idx: np.ndarray, ref: np.ndarray, min_cos: float, point: Point) -> int:
    """Rows whose own sentence is not the closest pool sentence, or is closer than ``min_cos``."""
    if emb.shape != (len(idx), ref.shape[1]):
        return len(idx)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sims = emb @ ref.T
    own = sims[np.arange(len(idx)), idx]
    point.max_abs_diff = max(point.max_abs_diff, float(np.abs(emb - ref[idx]).max()))
    point.min_cos = min(point.min_cos, float(own.min()))
    return int(((own < min_cos) | (sims.max(axis=1) > own + 1e-6)).sum())


async def client_loop(
    client: httpx.AsyncClient, server: Server, pool: list[str], seed: int, t_start: float, t_end: float,
    point: Point, min_cos: float,
) -> None:
    rng = np.random.default_rng(seed)
    answers = point.done.setdefault(seed, [])
    while time.monotonic() < t_end:
        idx = rng.choice(len(pool), size=int(rng.integers(1, 17)), replace=False)
        body = {"input": [pool[i] for i in idx], "model": server.model_field, "encoding_format": "base64"}
        sent = time.monotonic()
        try:
            resp = await client.post("/v1/embeddings" if server.metrics else "/embeddings", json=body)
        except httpx.HTTPError as exc:
            kind = type(exc).__name__
        else:
            kind = None if resp.status_code == 200 else f"HTTP {resp.status_code}"
        done = time.monotonic()
        if kind is None:
            point.all_texts += len(idx)
        if done < t_start or done > t_end:
            continue  # warm-up, or past the window: not counted
        if kind is not None:
            point.errors += 1
            point.error_kinds[kind] = point.error_kinds.get(kind, 0) + 1
            continue
        point.answers.append((resp.content, idx))  # checked after the point: keep the client light
        point.requests += 1
        point.texts += len(idx)
        point.latencies.append(done - sent)
        answers.append((done, len(idx)))


async def run_point(server: Server, pool: list[str], clients: int, warmup: float, duration: float,
                    seed: int, min_cos: float) -> Point:
    point = Point()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    server_proc = psutil.Process(server.proc.pid)
    cpu0, own0 = sum(server_proc.cpu_times()[:2]), time.process_time()
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
        t_start = time.monotonic() + warmup
        t_end = t_start + duration
        await asyncio.gather(*[
            client_loop(client, server, pool, seed * 1000 + c, t_start, t_end, point, min_cos)
            for c in range(clients)
        ])
    point.server_cpu = sum(server_proc.cpu_times()[:2]) - cpu0
    point.client_cpu = time.process_time() - own0
    point.check(server.ref, min_cos)
    return point


def batch_stats(server: Server) -> tuple[float, float]:
    """(texts, batches) summed so far by the server's batch-size histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "ternary_hf_batch_size":
            values = {s.name: s.value for s in family.samples}
            return values["ternary_hf_batch_size_sum"], values["ternary_hf_batch_size_count"]
    return 0.0, 0.0


# ---------------------------------------------------------------------- in-process
def encode_rate(model: object, pool: list[str]) -> tuple[float, float]:
    """(texts per wall second, CPU milliseconds per text) of ``encode(pool, batch_size=32)``."""
    start, cpu = time.perf_counter(), time.process_time()
    model.encode(pool, batch_size=32)
    return len(pool) / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / len(pool)


def make_plain_ternary(teacher: str, out: Path) -> str:
    from sentence_transformers import SentenceTransformer

    from ternary_hf import TernaryConfig

    model = SentenceTransformer(teacher, device="cpu", model_kwargs={"quantization_config": TernaryConfig()})
    model.save(str(out))
    return str(out)


def fmt_row(name: str, clients: int, p: Point, duration: float, mean_batch: float | None) -> str:
    lat = np.array(p.latencies) * 1000 if p.latencies else np.array([np.nan])
    p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    errors = f"{p.errors}" + (f" {p.error_kinds}" if p.error_kinds else "")
    batch = f"{mean_batch:6.1f}" if mean_batch is not None else "     -"
    return (f"{name:<18} {clients:>7} {p.rate(duration):>8.0f} {p.requests / duration:>7.1f} {p50:>8.0f} "
            f"{p99:>8.0f} {p99 / p50:>6.2f} {batch} {errors:>6} {p.mismatched:>9} {p.max_abs_diff:>9.4f} "
            f"{p.min_cos:>8.5f} {cpu_ms(p.server_cpu, p.all_texts):>8.2f} {cpu_ms(p.client_cpu, p.all_texts):>8.2f}")


def cpu_ms(seconds: float, texts: int) -> float:
    return seconds * 1000 / max(texts, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="ternary model folder (default: plain ternary MiniLM-L6)")
    ap.add_argument("--teacher", default=None, help="FP32 folder for Infinity (default: bundled MiniLM-L6)")
    ap.add_argument("--clients", default="1,8,32,128", help="comma-separated client counts")
    ap.add_argument("--duration", type=float, default=15.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each point")
    ap.add_argument("--pool", type=int, default=900, help="real sentences to draw requests from")
    ap.add_argument("--encode-texts", type=int, default=320, help="pool sentences timed in-process per run")
    ap.add_argument("--threads", type=int, default=None, help="--threads of the ternary server")
    ap.add_argument("--min-cos", type=float, default=0.99, help="smallest cosine to the own sentence's reference")
    ap.add_argument("--infinity", default="/work/venvs/infinity/bin/infinity_emb", help="infinity_emb executable")
    ap.add_argument("--no-infinity", action="store_true", help="skip the Infinity comparison")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the printed report to this file")
    args = ap.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    import ternary_hf

    out = io.StringIO()

    def say(line: str = "") -> None:
        print(line, flush=True)
        out.write(line + "\n")

    clients = [int(c) for c in args.clients.split(",")]
    teacher = args.teacher or teacher_path()
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    model_dir = args.model or make_plain_ternary(teacher, tmp / "ternary-minilm")
    described = args.model or "plain ternary all-MiniLM-L6-v2 (TernaryConfig() defaults, not distilled)"
    pool = real_sentence_pool(args.pool)
    student = SentenceTransformer(model_dir, device="cpu")
    ref = student.encode(pool, batch_size=32, normalize_embeddings=True)
    fp32 = SentenceTransformer(teacher, device="cpu")
    fp32_ref = fp32.encode(pool, batch_size=32, normalize_embeddings=True)

    say(f"bench_serve {time.strftime('%Y-%m-%d %H:%M %Z')}: {cpu_model()} ({isa_flags()}), {os.cpu_count()} cores, "
        f"load avg {load_avg()}")
    say(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"ternary-hf {ternary_hf.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} "
        "(inherited by both servers)")
    say(f"model: {described}; Infinity: FP32 {teacher}")
    say(f"load: closed-loop clients, 1-16 real sentences per request (pool {len(pool)} tweets, mean "
        f"{np.mean([len(s) for s in pool]):.0f} chars), base64 floats, {args.warmup:.0f} s warm-up + "
        f"{args.duration:.0f} s measured per point; mismatch = cosine to own reference < {args.min_cos} "
        "or another pool sentence closer")
    say(f"command: python benchmarks/bench_serve.py {' '.join(argv if argv is not None else sys.argv[1:])}")

    servers = [start_ternary_server(model_dir, ref, args.threads, tmp)]
    if not args.no_infinity:
        if Path(args.infinity).exists():
            servers.append(start_infinity(args.infinity, teacher, fp32_ref, tmp))
        else:
            say(f"Infinity skipped: {args.infinity} not found (create /work/venvs/infinity, see docs/serving.md)")
    try:
        measure(args, say, servers, clients, pool, student, fp32)
    finally:
        for server in servers:
            code = server.stop()
            say(f"{server.name} stopped (exit {code})")
        shutil.rmtree(tmp / "ternary-minilm", ignore_errors=True)  # keep the server logs
    say(f"load avg at the end: {load_avg()}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(out.getvalue())
    return 0


def measure(args: argparse.Namespace, say, servers: list[Server], clients: list[int], pool: list[str],
            student: object, fp32: object) -> None:
    """Every client count against every server, in-process encode between points, then the summary."""
    for server in servers:
        say(f"{server.name}: ready after {wait_ready(server, 600):.1f} s")
    sample = pool[: args.encode_texts]
    rates = {"ternary": [encode_rate(student, sample)], "fp32": [encode_rate(fp32, sample)]}
    say("srv CPU / cli CPU: CPU milliseconds per text of the server process / of the load-generating "
        "client process (robust to other load on the machine, unlike texts/s)")
    say()
    say(f"{'server':<18} {'clients':>7} {'texts/s':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99/50':>6} {'batch':>6} {'errors':>6} {'mismatch':>9} {'max|diff|':>9} {'min cos':>8} "
        f"{'srv CPU':>8} {'cli CPU':>8}")
    results: dict[tuple[str, int], Point] = {}
    for n in clients:
        for server in servers:
            before = batch_stats(server) if server.metrics else None
            point = asyncio.run(run_point(server, pool, n, args.warmup, args.duration, args.seed + n, args.min_cos))
            mean_batch = None
            if before is not None:
                after = batch_stats(server)
                mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
            results[(server.name, n)] = point
            say(fmt_row(server.name, n, point, args.duration, mean_batch))
        rates["ternary"].append(encode_rate(student, sample))
        rates["fp32"].append(encode_rate(fp32, sample))
    say()
    enc_t, enc_f = (np.median(np.array(rates[k]), axis=0) for k in ("ternary", "fp32"))
    say(f"in-process encode({len(sample)} texts, batch_size=32), median of {len(rates['ternary'])} runs "
        f"between points: ternary {enc_t[0]:.0f} texts/s ({enc_t[1]:.2f} CPU ms/text), FP32 {enc_f[0]:.0f} "
        f"texts/s ({enc_f[1]:.2f} CPU ms/text)")
    summarize(say, results, servers, clients, args.duration, enc_t)


def summarize(say, results, servers, clients, duration, enc) -> None:
    if 32 not in clients:
        return
    ours = results[(servers[0].name, 32)]
    rate = ours.rate(duration)
    ours_cpu = cpu_ms(ours.server_cpu, ours.all_texts)
    with_clients = ours_cpu + cpu_ms(ours.client_cpu, ours.all_texts)
    lat = np.array(ours.latencies) if ours.latencies else np.array([np.nan])
    ratio = np.percentile(lat, 99) / np.percentile(lat, 50)
    say(f"targets at 32 clients: throughput {rate / enc[0]:.2f}x in-process encode (target >= 0.9), per CPU "
        f"second {enc[1] / ours_cpu:.2f}x (server only) / {enc[1] / with_clients:.2f}x "
        f"(server + clients); p99/p50 {ratio:.2f} (target <= 2); errors {ours.errors}, mismatched "
        f"{ours.mismatched} (target 0)")
    if len(servers) > 1:
        inf = results[(servers[1].name, 32)]
        inf_rate = inf.rate(duration)
        say(f"vs Infinity FP32 at 32 clients: {rate / max(inf_rate, 1e-9):.2f}x its throughput, "
            f"{cpu_ms(inf.server_cpu, inf.all_texts) / ours_cpu:.2f}x per server CPU second (target >= 2); "
            f"Infinity errors {inf.errors}, mismatched {inf.mismatched}")


if __name__ == "__main__":
    sys.exit(main())
