"""The kernel build lock (issue 27 item 3): a builder killed mid-compile never blocks the next load,
and a process waiting for another builder says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import filelock
import pytest

from ternary_hf.kernels import _build

LOAD_SCRIPT = "from ternary_hf.kernels import _build\nm = _build.kernel_module()\nprint(m.ISA if m else 'none')\n"


def _hold_lock(path: Path, seconds: float) -> threading.Thread:
    """Another builder: holds the lock at ``path`` for ``seconds`` from a thread."""
    acquired = threading.Event()

    def hold() -> None:
        with filelock.FileLock(str(path)):
            acquired.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert acquired.wait(10)
    return thread


@pytest.mark.parametrize(("verbose", "at_least", "at_most"), [("0", 1, 1), ("1", 3, 100)])
def test_waiting_for_another_builder_is_announced(monkeypatch, capsys, tmp_path, verbose, at_least, at_most) -> None:
    monkeypatch.setattr(_build, "LOCK_POLL_SECONDS", 0.05)
    monkeypatch.setattr(_build, "LOCK_REPEAT_SECONDS", 0.1)
    monkeypatch.setenv(_build.VERBOSE_ENV, verbose)
    lock_path = tmp_path / "x.lock"
    holder = _hold_lock(lock_path, 0.6)
    with _build._build_lock(lock_path, "AVX2"):
        assert not holder.is_alive()  # entered only once the other builder let go
    said = [line for line in capsys.readouterr().err.splitlines() if "waiting for another process" in line]
    assert at_least <= len(said) <= at_most, said


def test_an_uncontended_lock_says_nothing(capsys, tmp_path) -> None:
    with _build._build_lock(tmp_path / "x.lock", "AVX2"):
        pass
    assert "waiting" not in capsys.readouterr().err


def _wait_for(condition, seconds: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended (code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


def test_a_build_killed_mid_compile_does_not_block_the_next_load(tmp_path: Path) -> None:
    """SIGKILL a first-use build (empty cache), then load again: it must rebuild, not hang on the stale lock.

    One full compile (the killed build stops within seconds): the slowest test of the kernel suite.
    """
    if "avx2" not in _build.supported_isas() or _build._toolchain_problem() is not None:
        pytest.skip("no AVX2 CPU or no C++ toolchain: nothing to build")
    env = {k: v for k, v in os.environ.items() if k != _build.DISABLE_ENV}
    env.update({_build.CACHE_ENV: str(tmp_path), _build.ISA_ENV: "avx2", _build.VERBOSE_ENV: "0"})
    name = _build._build_name("avx2")
    build_dir, baton = tmp_path / name, tmp_path / name / _build.TORCH_BATON

    first = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (build_dir / "build.ninja").exists(), 300, "the build to start", first)
        time.sleep(2.0)  # the compiler is running now
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the builder and its ninja / compiler children
        first.wait(30)
    assert baton.exists() and not (build_dir / f"{name}.so").exists()  # the state that used to hang loads

    # The next load starts while another process holds the build lock: it must say that it waits.
    holder = filelock.FileLock(str(tmp_path / f"{name}.lock"))
    holder.acquire()
    second = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(second.stderr), daemon=True)
    reader.start()
    try:
        _wait_for(lambda: any("waiting for another process" in line for line in lines), 120,
                  "the waiting message", second)
    finally:
        holder.release()
    try:
        # Not communicate(): it would read stderr too, racing the reader thread for the lines checked below.
        second.wait(timeout=1200)
    except subprocess.TimeoutExpired:
        second.kill()
        pytest.fail("the load after a killed build did not finish: " + "".join(lines)[-2000:])
    reader.join(10)
    out = second.stdout.read()  # one short line: it fits the pipe, so waiting first cannot deadlock
    err = "".join(lines)
    assert second.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == "avx2", err[-2000:]
    assert "was interrupted (stale lock" in err
    assert not baton.exists() and (build_dir / f"{name}.so").exists()
