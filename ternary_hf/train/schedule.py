"""How far a run is and how fast it learns: the training clock, the learning-rate schedule, the optimizer.

A run ends at the first of its step cap and its time budget, so "how far along" is the further of the
two (:func:`run_progress`), and the learning rate follows the same rule (:func:`warmup_cosine`): a run
cut by its budget still ends annealed. The clock counts training time only (periodic evaluation and a
resumed run's cache refill are paused out) and carries over across resumed sessions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator

import torch

from .config import DistillConfig

__all__ = ["TrainingClock", "format_minutes", "make_optimizer", "run_progress", "warmup_cosine"]

logger = logging.getLogger(__name__)


class TrainingClock:
    """Training seconds of this run: the earlier sessions' (``before``) plus this session's running time."""

    def __init__(self, budget_minutes: float | None = None):
        self.before = 0.0
        self.started = time.time()
        self.budget_s = budget_minutes * 60 if budget_minutes is not None else None

    def restart(self, before: float = 0.0) -> None:
        """Start this session's clock now, after ``before`` seconds of earlier sessions."""
        self.before, self.started = before, time.time()

    def elapsed(self) -> float:
        return self.before + time.time() - self.started

    def session(self) -> float:
        return time.time() - self.started

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside the block is not training time (evaluation, for example)."""
        paused_at = time.time()
        try:
            yield
        finally:
            self.started += time.time() - paused_at

    def budget_fraction(self) -> float:
        """The used share of the time budget (callers check :attr:`budget_s` first)."""
        return self.elapsed() / self.budget_s

    def out_of_time(self) -> bool:
        return self.budget_s is not None and self.elapsed() > self.budget_s

    def time_fraction(self) -> Callable[[], float] | None:
        """:meth:`budget_fraction` when there is a budget, for :func:`warmup_cosine`."""
        return self.budget_fraction if self.budget_s else None


def format_minutes(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def warmup_cosine(warmup: int, total: int, time_fraction: Callable[[], float] | None = None,
                  warmup_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``.

    ``time_fraction`` (a callable giving the used share of a time budget, 0..1) makes the schedule
    follow whichever runs out first, steps or time: the warm-up ends after ``warmup`` steps or
    ``warmup_ratio`` of the budget, and the decay reaches 0 at ``total`` steps or at the end of the
    budget. So a run cut by its budget still ends annealed instead of stopping at a high learning
    rate, and a generous step cap (``--steps 100000 --minutes 30``) does not stretch the warm-up past
    the budget. (A time-bound run depends on the machine's speed: not reproducible bit for bit, unlike
    a step-bounded one.)"""

    def schedule(step: int) -> float:
        frac = time_fraction() if time_fraction is not None else None
        warm = (step + 1) / max(warmup, 1) if step < warmup else 1.0
        if frac is not None:
            warm = max(warm, frac / warmup_ratio if warmup_ratio > 0 else 1.0)
        if warm < 1.0:
            return warm
        done = (step - warmup) / max(total - warmup, 1) if step >= warmup else 0.0
        if frac is not None:
            done = max(done, (frac - warmup_ratio) / max(1.0 - warmup_ratio, 1e-9))
        return 0.5 * (1 + math.cos(math.pi * min(max(done, 0.0), 1.0)))

    return schedule


def run_progress(step: int, total: int, time_fraction: Callable[[], float] | None = None) -> float:
    """How far along the run is: the further of steps done and time budget used (0..1)."""
    done = step / max(total, 1)
    return max(done, time_fraction()) if time_fraction is not None else done


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: DistillConfig) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW for ``optimizer="adamw8bit"`` when it can run here."""
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        except Exception as exc:  # not installed, or no supported device
            logger.warning("8-bit AdamW unavailable (%s); using torch AdamW", exc)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: DistillConfig,
                   clock: TrainingClock) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's :func:`warmup_cosine` schedule, following the clock when there is a time budget."""
    warmup = int(cfg.warmup_ratio * cfg.max_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(warmup, cfg.max_steps, clock.time_fraction(), cfg.warmup_ratio))
