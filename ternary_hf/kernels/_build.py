"""Build-on-first-use loader for the ternary CPU kernel (``ternary_cpu.cpp``: AMX-INT8, AVX-512 VNNI, AVX2).

Why build on first use: a ternary layer's speed comes from integer SIMD instructions, but wheels
built for one CPU and one torch ABI break on the next; compiling the small sources on the user's
machine the first time a ternary layer runs (once, then cached) works for every torch version
``pip install ternary-hf[kernel]`` can resolve, and needs only a C++ compiler plus ``ninja`` (the
``kernel`` extra).

* Instruction set: the one source builds one module per ISA, picked in the order of
  :data:`PREFERENCE`: ``amx`` (``tdpbsud`` on 16 x 64 int8 tiles; CPUs with the ``amx_tile`` and
  ``amx_int8`` flags: Intel Sapphire Rapids and later; Linux must grant the tile state, requested once
  per process with ``arch_prctl``), ``avx512vnni`` (``vpdpbusd``; avx512f/bw/vl + avx512_vnni: Intel
  Cascade Lake / Ice Lake and later, AMD Zen 4 and later) and ``avx2`` (``vpmaddubsw``; any x86-64 CPU
  with AVX2 + FMA). Each does the same integer work in fewer instructions than the next; all give
  bit-identical results. ``TERNARY_HF_KERNEL_ISA`` forces one (for comparisons) or ``reference``; a
  build that fails (an old compiler) or that the OS refuses is skipped after one warning. The
  test-only ``amx_emulated`` build (:data:`TEST_CFLAGS`) runs the AMX code with emulated tile
  instructions, so its logic is tested on CPUs without AMX; it is never selected at run time.
* Cache: ``$TERNARY_HF_KERNEL_CACHE`` or ``$XDG_CACHE_HOME/ternary_hf/kernels`` (default
  ``~/.cache/ternary_hf/kernels``), one folder per hash of (source, flags, torch version, Python
  version, instruction set), so upgrading torch or the package rebuilds instead of loading a stale binary.
* Concurrency: a ``filelock`` lock per build folder (an OS lock, released when its holder dies, also
  off POSIX), so parallel processes build once and the others wait, saying so on stderr (once; every
  15 s with ``TERNARY_HF_KERNEL_VERBOSE=1``), then load the finished module. torch's own build lock
  (``<build folder>/lock``, which torch waits on forever) found while holding ours was left by a
  builder that was killed: the half-built folder is removed and built again.
* Failure never raises: no compiler, no ninja, a CPU without AVX2/FMA or a failed build give ONE
  warning naming the fix, and the caller falls back to the reference torch path.
* ``TERNARY_HF_DISABLE_KERNEL=1`` skips all of this (checked on every call, not cached);
  ``TERNARY_HF_KERNEL_ISA=reference`` does the same once per process. Every variable is read by
  :mod:`ternary_hf.kernels.env` (one rule; a value it does not take is an error, not a silent default).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import filelock
import torch

from .env import CACHE_ENV, DISABLE_ENV, ISA_ENV, PARALLEL_ENV, VERBOSE_ENV, env_choice, env_flag, env_path

__all__ = [
    "SOURCE", "SOURCES", "HEADERS", "CFLAGS", "ISA_CFLAGS", "kernel_disabled", "cache_root", "kernel_module",
    "load_kernel_module", "load_kernel_variant", "build_variant", "supported_isas", "kernel_isa", "kernel_status",
    "TEST_CFLAGS", "PREFERENCE",
]

SOURCE = Path(__file__).with_name("ternary_cpu.cpp")
#: Everything the build reads (hashed into the cache key): the inference kernel, the trainer's ops,
#: the fast encoder forward's fused ops (ternary_hf.integrations.fast_forward) and the headers they share.
SOURCES = (SOURCE, SOURCE.with_name("ternary_train.cpp"), SOURCE.with_name("encoder_ops.cpp"))
HEADERS = tuple(SOURCE.with_name(h) for h in ("common.h", "epilogue.h", "amx_tiles.h", "amx_gemm.h", "team_gemm.h"))
#: Flags of every build; ISA_CFLAGS adds the instruction set and the define that selects its GEMM code.
CFLAGS = ("-O3", "-ffp-contract=off", "-fopenmp")
ISA_CFLAGS: dict[str, tuple[str, ...]] = {
    "avx2": ("-mavx2", "-mfma"),
    "avx512vnni": ("-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-DTERNARY_HF_VNNI"),
    "amx": ("-mavx2", "-mfma", "-mamx-tile", "-mamx-int8", "-DTERNARY_HF_AMX"),
}
#: Builds for tests only, never selected at run time: the AMX build with its tile instructions replaced
#: by a scalar emulation (amx_tiles.h), so its tiling logic runs on CPUs without AMX.
TEST_CFLAGS: dict[str, tuple[str, ...]] = {
    "amx_emulated": ("-mavx2", "-mfma", "-DTERNARY_HF_AMX", "-DTERNARY_HF_AMX_EMULATE"),
}
_ALL_CFLAGS = {**ISA_CFLAGS, **TEST_CFLAGS}
#: Selection order at run time: the first of these this CPU runs.
PREFERENCE = ("amx", "avx512vnni", "avx2")
#: /proc/cpuinfo flags each build needs beyond what _cpu_problem checks (AVX2 + FMA).
_ISA_CPU_FLAGS = {"avx2": (), "avx512vnni": ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
                  "amx": ("amx_tile", "amx_int8"), "amx_emulated": ()}
_ISA_LABEL = {"avx2": "AVX2", "avx512vnni": "AVX-512 VNNI", "amx": "AMX-INT8",
              "amx_emulated": "AMX-INT8 (emulated tiles, tests only)"}
LDFLAGS = ("-fopenmp",)
#: Values of TERNARY_HF_KERNEL_ISA: the best build this CPU runs, one build, or no build at all.
ISA_CHOICES = ("auto", *ISA_CFLAGS, "reference")
PARALLEL_CHOICES = ("openmp", "helpers")  # TERNARY_HF_KERNEL_PARALLEL, see kernels/__init__.py

_lock = threading.Lock()
_state: dict[str, object] = {}
_variants: dict[str, ModuleType] = {}


def kernel_disabled() -> bool:
    """True when the user forced the reference path with ``TERNARY_HF_DISABLE_KERNEL=1``."""
    return env_flag(DISABLE_ENV)


def cache_root() -> Path:
    """Folder holding compiled kernels (see the module docstring for the lookup order)."""
    configured = env_path(CACHE_ENV)
    if configured is not None:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ternary_hf" / "kernels"


def _build_name(isa: str) -> str:
    h = hashlib.sha256()
    for path in SOURCES + HEADERS:
        h.update(path.read_bytes())
    h.update(" ".join(CFLAGS + _ALL_CFLAGS[isa] + LDFLAGS).encode())
    h.update(torch.__version__.encode())
    h.update(f"{sys.version_info[0]}.{sys.version_info[1]}".encode())
    return f"ternary_hf_cpu_{isa}_{h.hexdigest()[:16]}"


def _cpu_flags() -> set[str]:
    """The CPU feature flags the kernel of Linux reports (empty elsewhere: then only AVX2 is assumed)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def supported_isas() -> list[str]:
    """Builds this CPU can run, best first (``[]`` when it cannot run the kernel at all)."""
    if _cpu_problem() is not None:
        return []
    flags = _cpu_flags()
    return [isa for isa in PREFERENCE if all(flag in flags for flag in _ISA_CPU_FLAGS[isa])]


def _cpu_problem() -> str | None:
    """Why this CPU cannot run the kernel, or None if it can."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the CPU architecture is {platform.machine()} (the kernel needs x86-64 with AVX2)"
    capability = torch.backends.cpu.get_cpu_capability()
    # torch reports "AVX2" only when both AVX2 and FMA are present; AVX512 CPUs also have both.
    if not (capability.startswith("AVX2") or capability.startswith("AVX512")):
        return f"the CPU lacks AVX2/FMA (torch reports capability {capability!r})"
    return None


def _toolchain_problem() -> str | None:
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler found ({cxx!r} is not on PATH); install one, e.g. `apt install g++`"
    if not cpp_extension.is_ninja_available():
        # pip's `ninja` package puts the binary in its own folder, which is not on PATH when a venv's
        # python is run without activating the venv: torch only looks on PATH, so add it there.
        try:
            import ninja  # type: ignore[import-not-found]

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except (ImportError, AttributeError):
            pass
    if not cpp_extension.is_ninja_available():
        return "`ninja` is not installed; run `pip install 'ternary-hf[kernel]'`"
    return None


def _import_built(name: str, so_path: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(name, str(so_path))
    spec = importlib.util.spec_from_file_location(name, str(so_path), loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class _Unavailable(Exception):
    """The kernel cannot be built here; the message says why and what to do."""


#: Seconds between checks while another process holds the build lock (a message after the first).
LOCK_POLL_SECONDS = 1.0
#: With TERNARY_HF_KERNEL_VERBOSE=1, the waiting message repeats this often.
LOCK_REPEAT_SECONDS = 15.0
#: torch's own build lock (torch.utils.file_baton.FileBaton) inside a build folder.
TORCH_BATON = "lock"


def _say(message: str) -> None:
    print(f"ternary_hf: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _build_lock(lock_path: Path, label: str) -> Iterator[None]:
    """Hold the exclusive build lock of one build folder, saying so while another process holds it.

    A ``filelock`` lock is an OS lock (``flock`` on POSIX, ``msvcrt`` on Windows): the OS releases it
    when its holder dies, even by SIGKILL, so a killed builder can never block the next one.
    """
    lock = filelock.FileLock(str(lock_path))
    started = time.monotonic()
    last_said: float | None = None
    while True:
        try:
            lock.acquire(timeout=LOCK_POLL_SECONDS)
            break
        except filelock.Timeout:
            now = time.monotonic()
            if last_said is None or (_verbose() and now - last_said >= LOCK_REPEAT_SECONDS):
                _say(f"waiting for another process that is building the {label} kernel (lock {lock_path}, "
                     f"{now - started:.0f} s so far); this continues as soon as that process finishes or dies")
                last_said = now
    try:
        yield
    finally:
        lock.release()


def _remove_stale_build(build_dir: Path) -> None:
    """Clear what a killed builder left behind: torch's baton and the half-built files.

    Called with the build lock held: every process that builds this folder holds that lock while torch's
    baton exists, so a baton found now belongs to a builder that died (torch would wait on it forever).
    """
    baton = build_dir / TORCH_BATON
    if not baton.exists():
        return
    _say(f"an earlier build in {build_dir} was interrupted (stale lock {baton}); removing its partial "
         f"output and building again")
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True, exist_ok=True)


def _build(name: str, isa: str) -> ModuleType:
    from torch.utils import cpp_extension

    build_dir = cache_root() / name
    so_path = build_dir / f"{name}.so"
    build_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(build_dir.parent / f"{name}.lock", _ISA_LABEL[isa]):
        _remove_stale_build(build_dir)
        if so_path.exists():  # cached: needs neither compiler nor ninja
            try:
                return _import_built(name, so_path)
            except ImportError:
                so_path.unlink()  # a truncated or foreign file: rebuild it below
        problem = _toolchain_problem()
        if problem is not None:
            raise _Unavailable(problem)
        if not _verbose():
            _say(f"compiling the {_ISA_LABEL[isa]} kernel into {build_dir} (once per machine and version, "
                 f"a minute or two)")
        return cpp_extension.load(
            name=name,
            sources=[str(path) for path in SOURCES],
            extra_cflags=list(CFLAGS + _ALL_CFLAGS[isa]),  # copies: torch appends to the lists it is given
            extra_ldflags=list(LDFLAGS),
            build_directory=str(build_dir),
            verbose=_verbose(),
        )


def _verbose() -> bool:
    return env_flag(VERBOSE_ENV)


def kernel_module() -> ModuleType | None:
    """Hot-path accessor: the loaded module, or None when disabled/unavailable (no lock once loaded)."""
    if os.environ.get(DISABLE_ENV) and kernel_disabled():
        return None
    if "module" in _state:
        return _state["module"]  # type: ignore[return-value]
    return load_kernel_module()


def _requested_isas() -> list[str]:
    """The builds to try, in order: the one ``TERNARY_HF_KERNEL_ISA`` names, else the best supported first."""
    supported = supported_isas()
    choice = env_choice(ISA_ENV, ISA_CHOICES, "auto")
    if choice == "auto":
        return supported
    if choice == "reference":
        return []
    if choice not in supported:
        warnings.warn(f"ternary_hf: {ISA_ENV}={choice!r} but this CPU lacks it; using auto", RuntimeWarning,
                      stacklevel=4)
        return supported
    return [choice]


def _try_build(isa: str) -> tuple[ModuleType | None, str | None]:
    """(module, None) or (None, why it could not be built or cannot run)."""
    try:
        module = _build(_build_name(isa), isa)
    except _Unavailable as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - any build failure means "use the fallback"
        return None, (
            f"building the {_ISA_LABEL[isa]} kernel failed ({type(exc).__name__}: {str(exc)[-500:]}); "
            f"set TERNARY_HF_KERNEL_VERBOSE=1 to see the compiler output"
        )
    if isa == "amx":  # Linux grants the tile state on request only (once per process)
        refused = module._amx_permission()
        if refused:
            return None, f"the OS refused the AMX tile state: {refused}"
    return module, None


def build_variant(isa: str) -> ModuleType:
    """Compile (or load from the cache) and import one build WITHOUT checking that this CPU runs it.

    For tests that a build compiles (e.g. the AMX build on a CPU without AMX): importing runs none of
    its instructions, calling its functions on such a CPU would. Use :func:`load_kernel_variant` to run one.

    Raises:
        ValueError: for an unknown name.
        RuntimeError: when it cannot be built (the message says why).
    """
    if isa not in _ALL_CFLAGS:
        raise ValueError(f"unknown kernel build {isa!r}; use one of {', '.join(_ALL_CFLAGS)}")
    try:
        return _build(_build_name(isa), isa)
    except _Unavailable as exc:
        raise RuntimeError(str(exc)) from exc


def load_kernel_variant(isa: str) -> ModuleType:
    """One specific build, for tests and benchmarks that compare them: a name of :data:`ISA_CFLAGS`
    (``"avx2"``, ``"avx512vnni"``, ``"amx"``) or of :data:`TEST_CFLAGS` (``"amx_emulated"``).

    Raises:
        ValueError: for an unknown name.
        RuntimeError: when this CPU cannot run it or it cannot be built (the message says why).
    """
    if isa not in _ALL_CFLAGS:
        raise ValueError(f"unknown kernel instruction set {isa!r}; use one of {', '.join(_ALL_CFLAGS)}")
    with _lock:
        if isa in _variants:
            return _variants[isa]
        runnable = supported_isas() + (list(TEST_CFLAGS) if "avx2" in supported_isas() else [])
        if isa not in runnable:
            why = _cpu_problem() or "it lacks " + ", ".join(_ISA_CPU_FLAGS[isa])
            raise RuntimeError(f"this CPU cannot run the {_ISA_LABEL[isa]} kernel: {why}")
        module, problem = _try_build(isa)
        if module is None:
            raise RuntimeError(problem)
        _variants[isa] = module
        return module


def load_kernel_module() -> ModuleType | None:
    """The compiled kernel module, building it on first call; None (after one warning) if impossible.

    Raises:
        InvalidInputError: when a ``TERNARY_HF_*`` kernel variable holds a value it does not take.
    """
    with _lock:
        if "module" in _state:
            return _state["module"]  # type: ignore[return-value]
        module: ModuleType | None = None
        problem = _cpu_problem()
        forced_reference = env_choice(ISA_ENV, ISA_CHOICES, "auto") == "reference"
        if forced_reference:
            problem = f"{ISA_ENV}=reference forces the reference torch path"
        elif problem is None:
            module, problem = _build_first_that_works(_requested_isas())
        if problem is not None and not forced_reference:
            warnings.warn(
                f"ternary_hf: fast CPU kernel unavailable because {problem}. Ternary layers fall back to "
                f"the slower reference torch path (same results). Set {DISABLE_ENV}=1 to silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
        if module is not None:
            _apply_parallel_setting(module)
        _state["module"] = module
        _state["problem"] = problem
        return module


def _build_first_that_works(isas: list[str]) -> tuple[ModuleType | None, str | None]:
    """(the first of ``isas`` that builds, None), or (None, why the last failed); one warning per failure
    that leaves another build to try."""
    failures: list[str] = []
    for i, isa in enumerate(isas):
        module, why = _try_build(isa)
        if module is not None:
            return module, None
        failures.append(str(why))
        if i + 1 < len(isas):
            warnings.warn(f"ternary_hf: {why}; trying the {_ISA_LABEL[isas[i + 1]]} kernel instead", RuntimeWarning,
                          stacklevel=4)
    return None, failures[-1] if failures else "no kernel build matches this CPU"


def _apply_parallel_setting(module: ModuleType) -> None:
    choice = env_choice(PARALLEL_ENV, PARALLEL_CHOICES, "")
    if not choice:
        return
    module._set_parallel_backend(choice)


def kernel_status() -> str:
    """One line for bug reports and benchmark headers: built/loaded, disabled, or why not."""
    if kernel_disabled():
        return f"disabled by {DISABLE_ENV}"
    module = load_kernel_module()
    if module is None:
        return f"unavailable: {_state.get('problem')}"
    return f"{_ISA_LABEL.get(getattr(module, 'ISA', 'avx2'), 'AVX2')} kernel {module.__name__} from {cache_root()}"


def kernel_isa() -> str | None:
    """``"avx512vnni"`` or ``"avx2"``: the build the hot path uses, or None when no kernel runs here."""
    module = kernel_module()
    return None if module is None else str(getattr(module, "ISA", "avx2"))
