"""Build-on-first-use loader for the ternary CPU kernel (``ternary_cpu.cpp``: AVX2, or AVX-512 VNNI).

Why build on first use: a ternary layer's speed comes from AVX2 integer instructions, but wheels
built for one CPU and one torch ABI break on the next; compiling the single small source file on the
user's machine the first time a ternary layer runs (about a minute, then cached) works for every
torch version ``pip install ternary-hf[kernel]`` can resolve, and needs only a C++ compiler plus
``ninja`` (the ``kernel`` extra).

* Instruction set: the one source builds two modules. ``avx2`` (``vpmaddubsw``; any x86-64 CPU with
  AVX2 + FMA) and ``avx512vnni`` (``vpdpbusd``; CPUs whose flags include avx512f/bw/vl and avx512_vnni:
  Intel Cascade Lake / Ice Lake and later, AMD Zen 4 and later), which is picked when the CPU has it
  because it does the same integer work in fewer instructions. ``TERNARY_HF_KERNEL_ISA=avx2`` forces
  the AVX2 build (for comparisons); if the VNNI build fails (an old compiler), the AVX2 build is used
  after one warning. Both give bit-identical results.
* Cache: ``$TERNARY_HF_KERNEL_CACHE`` or ``$XDG_CACHE_HOME/ternary_hf/kernels`` (default
  ``~/.cache/ternary_hf/kernels``), one folder per hash of (source, flags, torch version, Python
  version, instruction set), so upgrading torch or the package rebuilds instead of loading a stale binary.
* Concurrency: a file lock around the build, so parallel test processes build once and the others
  wait, then load the finished module.
* Failure never raises: no compiler, no ninja, a CPU without AVX2/FMA or a failed build give ONE
  warning naming the fix, and the caller falls back to the reference torch path.
* ``TERNARY_HF_DISABLE_KERNEL=1`` skips all of this (checked on every call, not cached).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = [
    "SOURCE", "SOURCES", "HEADERS", "CFLAGS", "ISA_CFLAGS", "kernel_disabled", "cache_root", "kernel_module",
    "load_kernel_module", "load_kernel_variant", "supported_isas", "kernel_isa", "kernel_status",
]

SOURCE = Path(__file__).with_name("ternary_cpu.cpp")
#: Everything the build reads (hashed into the cache key): the inference kernel, the trainer's ops,
#: the fast encoder forward's fused ops (ternary_hf.runtime) and the header they share.
SOURCES = (SOURCE, SOURCE.with_name("ternary_train.cpp"), SOURCE.with_name("encoder_ops.cpp"))
HEADERS = (SOURCE.with_name("common.h"),)
#: Flags of every build; ISA_CFLAGS adds the instruction set (the VNNI build also defines TERNARY_HF_VNNI).
CFLAGS = ("-O3", "-ffp-contract=off", "-fopenmp")
ISA_CFLAGS: dict[str, tuple[str, ...]] = {
    "avx2": ("-mavx2", "-mfma"),
    "avx512vnni": ("-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-DTERNARY_HF_VNNI"),
}
#: /proc/cpuinfo flags each build needs beyond what _cpu_problem checks (AVX2 + FMA).
_ISA_CPU_FLAGS = {"avx2": (), "avx512vnni": ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")}
_ISA_LABEL = {"avx2": "AVX2", "avx512vnni": "AVX-512 VNNI"}
LDFLAGS = ("-fopenmp",)
DISABLE_ENV = "TERNARY_HF_DISABLE_KERNEL"
PARALLEL_ENV = "TERNARY_HF_KERNEL_PARALLEL"  # "openmp" (default) or "helpers", see kernels/__init__.py
CACHE_ENV = "TERNARY_HF_KERNEL_CACHE"
ISA_ENV = "TERNARY_HF_KERNEL_ISA"  # "avx2" or "avx512vnni"; unset/"auto": the best this CPU runs

_lock = threading.Lock()
_state: dict[str, object] = {}
_variants: dict[str, ModuleType] = {}


def kernel_disabled() -> bool:
    """True when the user forced the reference path with ``TERNARY_HF_DISABLE_KERNEL=1``."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def cache_root() -> Path:
    """Folder holding compiled kernels (see the module docstring for the lookup order)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ternary_hf" / "kernels"


def _build_name(isa: str) -> str:
    h = hashlib.sha256()
    for path in SOURCES + HEADERS:
        h.update(path.read_bytes())
    h.update(" ".join(CFLAGS + ISA_CFLAGS[isa] + LDFLAGS).encode())
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
    return [isa for isa in ("avx512vnni", "avx2") if all(flag in flags for flag in _ISA_CPU_FLAGS[isa])]


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


def _build(name: str, isa: str) -> ModuleType:
    from torch.utils import cpp_extension

    build_dir = cache_root() / name
    so_path = build_dir / f"{name}.so"
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f"{name}.lock", "w") as lock_file:
        try:
            import fcntl

            fcntl.flock(lock_file, fcntl.LOCK_EX)  # another process may be building: wait for it
        except ImportError:  # not POSIX: torch's own FileBaton in build_dir still serialises builds
            pass
        if so_path.exists():  # cached: needs neither compiler nor ninja
            try:
                return _import_built(name, so_path)
            except ImportError:
                so_path.unlink()  # a truncated or foreign file: rebuild it below
        problem = _toolchain_problem()
        if problem is not None:
            raise _Unavailable(problem)
        return cpp_extension.load(
            name=name,
            sources=[str(path) for path in SOURCES],
            extra_cflags=list(CFLAGS + ISA_CFLAGS[isa]),  # copies: torch appends to the lists it is given
            extra_ldflags=list(LDFLAGS),
            build_directory=str(build_dir),
            verbose=os.environ.get("TERNARY_HF_KERNEL_VERBOSE", "") not in ("", "0"),
        )


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
    choice = os.environ.get(ISA_ENV, "").strip().lower()
    if choice in ("", "auto"):
        return supported
    if choice not in ISA_CFLAGS:
        warnings.warn(f"ternary_hf: {ISA_ENV}={choice!r} is not one of auto, {', '.join(ISA_CFLAGS)}; using auto",
                      RuntimeWarning, stacklevel=4)
        return supported
    if choice not in supported:
        warnings.warn(f"ternary_hf: {ISA_ENV}={choice!r} but this CPU lacks it; using auto", RuntimeWarning,
                      stacklevel=4)
        return supported
    return [choice]


def _try_build(isa: str) -> tuple[ModuleType | None, str | None]:
    """(module, None) or (None, why it could not be built)."""
    try:
        return _build(_build_name(isa), isa), None
    except _Unavailable as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - any build failure means "use the fallback"
        return None, (
            f"building the {_ISA_LABEL[isa]} kernel failed ({type(exc).__name__}: {str(exc)[-500:]}); "
            f"set TERNARY_HF_KERNEL_VERBOSE=1 to see the compiler output"
        )


def load_kernel_variant(isa: str) -> ModuleType:
    """One specific build (``"avx2"`` or ``"avx512vnni"``), for tests and benchmarks that compare them.

    Raises:
        ValueError: for an unknown name.
        RuntimeError: when this CPU cannot run it or it cannot be built (the message says why).
    """
    if isa not in ISA_CFLAGS:
        raise ValueError(f"unknown kernel instruction set {isa!r}; use one of {', '.join(ISA_CFLAGS)}")
    with _lock:
        if isa in _variants:
            return _variants[isa]
        if isa not in supported_isas():
            why = _cpu_problem() or "it lacks " + ", ".join(_ISA_CPU_FLAGS[isa])
            raise RuntimeError(f"this CPU cannot run the {_ISA_LABEL[isa]} kernel: {why}")
        module, problem = _try_build(isa)
        if module is None:
            raise RuntimeError(problem)
        _variants[isa] = module
        return module


def load_kernel_module() -> ModuleType | None:
    """The compiled kernel module, building it on first call; None (after one warning) if impossible."""
    with _lock:
        if "module" in _state:
            return _state["module"]  # type: ignore[return-value]
        module: ModuleType | None = None
        problem = _cpu_problem()
        if problem is None:
            failures: list[str] = []
            for isa in _requested_isas():
                module, why = _try_build(isa)
                if module is not None:
                    break
                failures.append(str(why))
                if isa != "avx2":
                    warnings.warn(f"ternary_hf: {why}; trying the AVX2 kernel instead", RuntimeWarning, stacklevel=3)
            if module is None:
                problem = failures[-1] if failures else "no kernel build matches this CPU"
        if problem is not None:
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


def _apply_parallel_setting(module: ModuleType) -> None:
    choice = os.environ.get(PARALLEL_ENV, "").strip().lower()
    if not choice:
        return
    if choice not in ("openmp", "helpers"):
        warnings.warn(f"ternary_hf: {PARALLEL_ENV}={choice!r} is not 'openmp' or 'helpers'; using 'openmp'",
                      RuntimeWarning, stacklevel=4)
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
