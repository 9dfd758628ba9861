"""The one training loop, for text and images: Accelerate, checkpoints, exact resume, time budget, metrics.

A caller (:func:`ternary_hf.train.text_distill.distill`, :func:`ternary_hf.vision.distill_vision`) brings
the student, a DataLoader whose ``batch_sampler`` is the seeded batch order, and a loss function; the
loop does the rest the same way for both:

* :func:`make_accelerator` -- CPU, one GPU or ``accelerate launch`` for many; metrics trackers and
  checkpoint naming from the run's :class:`DistillConfig`;
* :func:`open_run` -- a fresh start or the newest checkpoint, refusing another run's checkpoints;
* :func:`train` -- optimizer and schedule, ``prepare``, resume (same batches, same RNG: a resumed run
  ends with the same weights as an uninterrupted one), gradient accumulation, the time budget, the
  progress bar, metrics rows, a periodic callback (evaluation, not counted as training time) and
  checkpoints every ``save_every`` steps.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.progress import bar_switch
from .checkpoints import Checkpoint, discard_checkpoints, latest_checkpoint, project_configuration, save_checkpoint
from .config import DistillConfig
from .finalize import finished_output
from .run_settings import RunRecord, resumable_settings
from .schedule import TrainingClock, format_minutes, make_optimizer, make_scheduler, run_progress
from .tracking import RUN_NAME, discard_logs, make_trackers

__all__ = ["LossFn", "LoopResult", "RunState", "is_finished", "make_accelerator", "open_run", "train"]

#: ``loss_fn(model, batch, progress) -> (loss, {name: value})``; ``progress`` is the share of the run done
LossFn = Callable[[nn.Module, Any, float], "tuple[torch.Tensor, dict[str, float]]"]


def make_accelerator(cfg: DistillConfig, work_dir: Path):
    """The run's :class:`accelerate.Accelerator`: trackers for ``cfg.report_to``, checkpoints in ``work_dir``."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    trackers = make_trackers(cfg.report_to, work_dir)
    # cpu=True on a machine without an accelerator lets accelerate see a torchrun/mpirun launch as
    # multi-process CPU training (gloo); with a GPU, accelerate picks it as usual.
    no_accelerator = not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())
    return Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                       mixed_precision=cfg.mixed_precision, cpu=no_accelerator,
                       # the pooler (and any head) gets no gradient from an embedding loss
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
                       log_with=trackers, project_config=project_configuration(work_dir, cfg.keep_checkpoints))


@dataclass
class RunState:
    """A run's work dir as found: its record and newest checkpoint (``None``: a fresh start).

    Nothing on disk changes until :meth:`begin`, so a failure before training (a teacher that does
    not load) leaves the work dir as it was."""

    work_dir: Path
    record: RunRecord
    latest: Checkpoint | None
    fresh: bool = False

    def finished_output(self, cfg: DistillConfig, output_dir: Path) -> dict[str, Any] | None:
        """The record of ``output_dir`` if the run is finished and that is its model, else ``None``."""
        if not is_finished(cfg, self.latest):
            return None
        return finished_output(output_dir, self.record.run_id, self.latest.step)

    def begin(self, accelerator, settings: dict[str, Any], cfg: DistillConfig, **session: Any) -> None:
        """Record the session that is about to train (a new run id on a fresh start, after discarding
        the earlier run's checkpoints, metrics and record)."""
        if accelerator.is_main_process:
            if self.fresh:
                discard_checkpoints(self.work_dir)
                discard_logs(self.work_dir)
                self.record.discard()
            started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            session = {"started": started, "from_step": self.latest.step if self.latest else 0, **session,
                       **resumable_settings(cfg)}
            self.record.start_session(settings, session, fresh=self.fresh or self.latest is None)
            self.record.write()
        accelerator.wait_for_everyone()

    @property
    def sessions(self) -> list[dict[str, Any]]:
        return self.record.data.get("sessions", [])


def open_run(accelerator, work_dir: Path, settings: dict[str, Any], *, fresh: bool, hint: str) -> RunState:
    """Find where the run in ``work_dir`` stands; with ``fresh`` it starts over (see :meth:`RunState.begin`).

    Raises:
        SettingsChangedError: the checkpoints belong to a run with other ``settings``.
    """
    work_dir = Path(work_dir)
    if fresh:
        return RunState(work_dir, RunRecord(work_dir), None, fresh=True)
    if accelerator.is_main_process:
        latest_checkpoint(work_dir)  # moves a legacy layout into place before the others look
    accelerator.wait_for_everyone()
    state = RunState(work_dir, RunRecord(work_dir), latest_checkpoint(work_dir))
    if state.latest is not None:
        state.record.check(settings, hint)
    return state


def is_finished(cfg: DistillConfig, checkpoint: Checkpoint | None) -> bool:
    """Whether ``checkpoint`` ends a run of ``cfg``: its step cap reached or its time budget used up."""
    if checkpoint is None:
        return False
    out_of_time = cfg.max_minutes is not None and checkpoint.elapsed_s > cfg.max_minutes * 60
    return checkpoint.step >= cfg.max_steps or out_of_time


@dataclass
class LoopResult:
    """What :func:`train` did: ``finished`` when the run reached its step cap or time budget."""

    steps: int
    seconds: float
    session_seconds: float
    final_loss: float
    losses: list[dict[str, float]] = field(default_factory=list)
    out_of_time: bool = False
    finished: bool = False
    model: nn.Module | None = None


class _Loop:
    """One session of a run (state shared by the step, logging, evaluation and checkpoint methods)."""

    def __init__(self, accelerator, cfg: DistillConfig, work_dir: Path, loss_fn: LossFn,
                 evaluate: Callable[[nn.Module, int], dict[str, float]] | None, stop_after: int | None,
                 on_save: Callable[[int], None] | None = None):
        self.accelerator, self.cfg, self.work_dir = accelerator, cfg, work_dir
        self.loss_fn, self.evaluate, self.stop_after, self.on_save = loss_fn, evaluate, stop_after, on_save
        self.clock = TrainingClock(cfg.max_minutes)
        self.step = self.first_step = self.micro = 0
        self.last_loss, self.running = float("nan"), None
        self.history: list[dict[str, float]] = []
        self.out_of_time = False

    def prepare(self, model: nn.Module, loader, checkpoint_objects: Sequence[Any], resume_from: Checkpoint | None):
        acc, cfg = self.accelerator, self.cfg
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
        scheduler = make_scheduler(optimizer, cfg, self.clock)
        self.model, self.optimizer, self.loader, self.scheduler = acc.prepare(model, optimizer, loader, scheduler)
        for obj in checkpoint_objects:
            acc.register_for_checkpointing(obj)
        if resume_from is not None:
            acc.load_state(str(resume_from.path))
            self.step = self.first_step = resume_from.step
            self.clock.before = resume_from.elapsed_s
            loss = resume_from.state.get("loss")
            self.last_loss = float(loss) if loss is not None else float("nan")
            acc.print(f"resuming from {resume_from.path} (step {self.step}/{cfg.max_steps})")
        acc.init_trackers(RUN_NAME)
        if acc.is_main_process:  # rows a killed session logged after its last checkpoint are redone
            acc.get_tracker("csv", unwrap=True).drop_after(self.step)

    def batches(self):
        accum = self.cfg.gradient_accumulation_steps
        return self.accelerator.skip_first_batches(self.loader, self.step * accum) if self.step else self.loader

    def should_stop(self) -> bool:
        cfg = self.cfg
        if self.step >= cfg.max_steps or (self.stop_after is not None and self.step >= self.stop_after):
            return True
        if self.micro == 0 and self.clock.out_of_time():
            self.out_of_time = True  # a time budget ends the run at an optimizer-step boundary
            self.accelerator.print(f"time budget of {cfg.max_minutes} min reached at step {self.step}/{cfg.max_steps}")
            return True
        return False

    def train_batch(self, batch) -> tuple[torch.Tensor, dict[str, float]] | None:
        """Forward, backward and (at the end of an accumulation) an optimizer step; the loss once a step is done."""
        acc = self.accelerator
        progress = run_progress(self.step, self.cfg.max_steps, self.clock.time_fraction())
        with acc.accumulate(self.model):
            loss, parts = self.loss_fn(self.model, batch, progress)
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        self.micro = (self.micro + 1) % self.cfg.gradient_accumulation_steps
        return None if self.micro else (loss, parts)

    def after_step(self, loss: torch.Tensor, parts: dict[str, float], bar) -> None:
        cfg = self.cfg
        self.step += 1
        self.last_loss = float(loss.detach())
        self.running = self.last_loss if self.running is None else 0.9 * self.running + 0.1 * self.last_loss
        bar.update(1)
        rate = (self.step - self.first_step) / max(self.clock.session(), 1e-9)
        left = (cfg.max_steps - self.step) / rate
        if self.clock.budget_s is not None:
            left = min(left, max(self.clock.budget_s - self.clock.elapsed(), 0.0))
        bar.set_postfix(loss=f"{self.running:.4f}", steps_per_s=f"{rate:.2f}", eta=format_minutes(left))
        last = self.step == cfg.max_steps
        if self.step % cfg.log_every == 0 or last:
            row = {"loss": self.last_loss, **parts, "lr": self.scheduler.get_last_lr()[0],
                   "elapsed_s": self.clock.elapsed()}
            self.history.append({"step": self.step, **row})
            self.accelerator.log(row, step=self.step)
        if self.evaluate is not None and cfg.eval_every and (self.step % cfg.eval_every == 0 or last):
            self.run_evaluation(bar)
        stopping = self.stop_after is not None and self.step >= self.stop_after
        if self.step % cfg.save_every == 0 or last or stopping:
            self.save()

    def run_evaluation(self, bar) -> None:
        acc = self.accelerator
        with self.clock.paused():  # evaluation is not training time
            if acc.is_main_process:
                row = self.evaluate(acc.unwrap_model(self.model), self.step)
                acc.log({k: v for k, v in row.items() if k != "step"}, step=self.step,
                        log_kwargs={"csv": {"file": "evals.csv"}})
                bar.write(f"eval at step {self.step}: " + ", ".join(
                    f"{k}={v:.4f}" for k, v in row.items() if k != "step" and not k.endswith("_pct")))
            acc.wait_for_everyone()

    def save(self) -> None:
        if self.on_save is not None:
            self.on_save(self.step)
        save_checkpoint(self.accelerator, self.work_dir, self.step,
                        {"elapsed_s": self.clock.elapsed(), "loss": self.last_loss,
                         "stopped_by_time_budget": self.out_of_time})


def train(accelerator, cfg: DistillConfig, model: nn.Module, loader, loss_fn: LossFn, *, work_dir: Path,
          resume_from: Checkpoint | None = None, checkpoint_objects: Sequence[Any] = (),
          on_resume: Callable[[Any, int], None] | None = None, on_save: Callable[[int], None] | None = None,
          evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
          stop_after: int | None = None, show_progress_bar: bool = True, desc: str = "distilling") -> LoopResult:
    """Train ``model`` on ``loader``'s batches with ``loss_fn`` until the step cap, the time budget or
    ``stop_after`` (checkpointed, not finished: for tests and for splitting a run into sessions).

    Args:
        resume_from: the checkpoint to continue (see :func:`open_run`).
        checkpoint_objects: stateful objects saved with each checkpoint (``state_dict`` / ``load_state_dict``).
        on_resume: ``on_resume(prepared_loader, batches_done)`` after a resume, before the clock starts
            (rebuilding in-memory state such as a teacher cache is not training time).
        on_save: ``on_save(step)`` on every process before each checkpoint is written (state kept
            beside the checkpoints, such as the teacher cache's journal).
        evaluate: ``evaluate(unwrapped_model, step) -> {metric: value}`` every ``cfg.eval_every`` steps,
            on the main process, logged to ``evals.csv``.
    """
    from tqdm.auto import tqdm

    loop = _Loop(accelerator, cfg, Path(work_dir), loss_fn, evaluate, stop_after, on_save)
    loop.prepare(model, loader, checkpoint_objects, resume_from)
    batches = loop.batches()
    # with a time budget tqdm's own step-based "remaining" would be wrong; the postfix has the real ETA
    bar = tqdm(total=cfg.max_steps, initial=loop.step, desc=desc, unit="step",
               **bar_switch(show_progress_bar and accelerator.is_local_main_process),
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]" if cfg.max_minutes else None)
    if on_resume is not None and loop.step:
        on_resume(loop.loader, loop.step * cfg.gradient_accumulation_steps)
    loop.clock.restart(loop.clock.before)  # after the refill: an uninterrupted run never spends it
    for batch in batches:
        if loop.should_stop():
            break
        done = loop.train_batch(batch)
        if done is not None:
            loop.after_step(*done, bar)
    bar.close()
    for tracker in accelerator.trackers:  # not end_training(): that also ends the process group
        tracker.finish()
    accelerator.wait_for_everyone()
    if loop.out_of_time:
        loop.save()  # the clock at the stop, for the next session's budget
    seconds = loop.clock.elapsed()
    finished = loop.step >= cfg.max_steps or loop.out_of_time
    return LoopResult(loop.step, seconds, seconds - loop.clock.before, loop.last_loss, loop.history,
                      loop.out_of_time, finished, accelerator.unwrap_model(loop.model))
