"""What machine a benchmark ran on, printed by every script beside its ratios."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_avg() -> str:
    """The 1/5/15-minute load averages: the machines here are shared, so every result quotes them."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
