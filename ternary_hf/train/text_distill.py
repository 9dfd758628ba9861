"""Text distillation: the float sentence-transformers model teaches its own ternary copy (arXiv 2411.15438).

The student is the teacher with latent float weights behind a ternary forward
(:mod:`ternary_hf.train.student`): the same ternarization and activation rule as inference, gradients
passed straight through. :func:`distill` is the generic loop (:mod:`ternary_hf.train.loop`) plus what
is particular to text: the corpus and its tokenized batches (:mod:`.data`), the losses
(:mod:`.losses`), the teacher-output cache (:mod:`.teacher_cache`: later epochs skip the teacher's
forward, rebuilt exactly on resume), layer-wise teacher forcing (:mod:`.teacher_forcing`), periodic
evaluation against the teacher, and finalizing through the quantizer (:mod:`.finalize`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError, MissingInputError
from ..integrations.config import TernaryConfig
from ..utils.io import check_output_folder
from ..utils.progress import bar_switch
from ..utils.threads import torch_threads
from .config import DistillConfig, DistillResult
from .data import (
    IndexedTexts,
    TextCollate,
    batch_order,
    corpus_fingerprint,
    interleave_batches,
    load_texts,
    long_views,
    token_lengths,
)
from .finalize import DISTILLATION_INFO, finalize
from .loop import is_finished, make_accelerator, open_run, train
from .losses import TeacherBank, distillation_loss, mean_pool, teacher_forced_loss
from .run_settings import run_settings
from .student import build_student, disable_dropout, set_int8_grad_input, with_int4_blocks, with_int8_blocks
from .teacher_cache import TeacherCache, cache_supported
from .teacher_forcing import LayerwiseTeacherForcing

logger = logging.getLogger(__name__)

__all__ = ["distill", "evaluate_student", "load_teacher", "replay_teacher_cache", "student_pipeline"]

#: the teacher cache's journal in the work dir (:meth:`TeacherCache.flush`), read back on a resume
TEACHER_CACHE_JOURNAL = "teacher_cache"
_FRESH_HINT = "pass --fresh (fresh=True in Python) to discard them and start over"


def _names_a_missing_folder(name: str | os.PathLike) -> bool:
    """True for a path the user clearly meant as a folder (absolute, ``./``, ``../``, ``~``) that does not exist."""
    text = os.fspath(name)
    path = Path(text).expanduser()
    return not path.exists() and (isinstance(name, os.PathLike) or path.is_absolute() or text.startswith((".", "~")))


def load_teacher(teacher: str | os.PathLike) -> tuple[Any, nn.Module, Any]:
    """``(sentence_transformer, hf_model, tokenizer)`` for a float teacher folder or repo id."""
    from sentence_transformers import SentenceTransformer

    hint = ("Give a float sentence-transformers or transformers model folder "
            "(ternary-hf fetch-model gets the bundled one)")
    if _names_a_missing_folder(teacher):  # else sentence-transformers reads it as a repo id and says so
        raise MissingInputError(f"cannot load the teacher {teacher}: no such folder. {hint}")
    try:
        st = SentenceTransformer(str(teacher), device="cpu")
    except (OSError, ValueError) as exc:  # not a model, or a repo id while offline
        why = " ".join(str(exc).split()).rstrip(".")
        raise MissingInputError(f"cannot load the teacher {teacher}: {why}. {hint}") from None
    transformer = st[0]
    model = transformer.auto_model
    if getattr(model, "is_quantized", False):
        raise InvalidInputError(f"{teacher} is already quantized; distill from the full-precision model")
    return st, model, transformer.tokenizer


def replay_teacher_cache(cache: TeacherCache, loader, teacher_model: nn.Module, n_batches: int, accelerator,
                         show: bool, journal: Path | None = None, step: int = 0) -> None:
    """Refill the teacher cache after a resume at ``step``: from its journal in ``journal`` (see
    :meth:`TeacherCache.restore`), and where that is incomplete by re-running the teacher on this
    process's first ``n_batches`` batches (read from the loader's batch sampler, so neither the RNG
    nor Accelerate's dataloader state moves)."""
    import itertools

    from tqdm.auto import tqdm

    if journal is not None:
        read, complete = cache.restore(journal, step, accelerator.process_index)
        if complete:
            accelerator.print(f"teacher cache restored: {read} texts from its journal")
            return

    def batches():
        for indices in itertools.islice(iter(loader.batch_sampler), n_batches):
            batch = loader.collate_fn([loader.dataset[i] for i in indices])
            yield {k: v.to(accelerator.device) for k, v in batch.items()}

    def progress(it):
        return tqdm(it, total=n_batches, desc="rebuilding teacher cache", unit="batch",
                    **bar_switch(show and accelerator.is_local_main_process))

    forwards = cache.replay(batches(), teacher_model, progress)
    accelerator.print(f"teacher cache rebuilt: {len(cache)} texts from {forwards} teacher forwards")


class TextLoss:
    """The loss of one text batch: teacher (or its cache), student, the configured losses, the bank."""

    def __init__(self, cfg: DistillConfig, teacher_model: nn.Module, accelerator, cache: TeacherCache | None,
                 bank: TeacherBank | None, forcing: LayerwiseTeacherForcing | None):
        self.cfg, self.teacher, self.accelerator = cfg, teacher_model, accelerator
        self.cache, self.bank, self.forcing = cache, bank, forcing

    def teacher_output(self, batch: dict[str, torch.Tensor], index: torch.Tensor, forced: bool):
        mask = batch["attention_mask"]
        if self.cache is not None and (hidden := self.cache.lookup(index, mask)) is not None:
            from transformers.modeling_outputs import BaseModelOutput

            return BaseModelOutput(last_hidden_state=hidden)
        with torch.no_grad():
            out = self.teacher(**batch, output_hidden_states=bool(self.cfg.layer_mse) and not forced,
                               output_attentions=bool(self.cfg.attention_kl) and not forced)
        if self.cache is not None:
            self.cache.add(index, mask, out.last_hidden_state)
        return out

    def __call__(self, student: nn.Module, batch: dict[str, torch.Tensor], progress: float):
        cfg = self.cfg
        forced = self.forcing is not None and progress < cfg.teacher_forcing
        if self.forcing is not None:
            self.forcing.enabled = forced
        index = batch.pop("index")
        teacher_out = self.teacher_output(batch, index, forced)
        student_out = student(**batch, output_hidden_states=bool(cfg.layer_mse) and not forced,
                              output_attentions=bool(cfg.attention_kl) and not forced)
        if forced:
            mask = batch["attention_mask"] if cfg.mask_padding else None
            loss, parts = teacher_forced_loss(self.forcing.pairs(), mask)
        else:
            loss, parts = distillation_loss(student_out, teacher_out, batch["attention_mask"], cfg, self.bank)
        if self.bank is not None:
            pooled = mean_pool(teacher_out.last_hidden_state, batch["attention_mask"])
            self.bank.push(self.accelerator.gather(F.normalize(pooled, dim=-1)))
        return loss, parts


def student_pipeline(teacher_st: Any, student: nn.Module) -> Any:
    """A sentence-transformers pipeline that runs ``student`` with the teacher's tokenizer, pooling
    and normalisation. Built once per run: a copy of the teacher's modules around the student."""
    import copy

    first = teacher_st[0]
    held = first.model
    first.model = nn.Identity()  # do not copy the teacher's weights: the student replaces them
    try:
        pipeline = copy.deepcopy(teacher_st)
    finally:
        first.model = held
    pipeline[0].model = student
    return pipeline


def evaluate_student(pipeline: Any, teacher_st: Any, cfg: DistillConfig, step: int) -> dict[str, float]:
    """Evaluate the training-form student inside ``pipeline`` (see :func:`student_pipeline`) against
    the teacher. The student's forward equals the packed model's, so these are the numbers
    :func:`ternary_hf.evaluation.evaluate` gives the finalized model, up to float rounding."""
    from ..evaluation.tasks import evaluate

    student = pipeline[0].model
    was_training = student.training
    student.eval()
    try:
        result = evaluate(pipeline, teacher=teacher_st, tasks=cfg.eval_tasks, limit=cfg.eval_limit,
                          show_progress_bar=False, label=f"step {step}")
    finally:
        student.train(was_training)
    row: dict[str, float] = {"step": step}
    for m in result.metrics:
        row[f"{m.task}/{m.metric}"] = m.student if m.student is not None else float("nan")
        if m.retention is not None:
            row[f"{m.task}/{m.metric}/retention_pct"] = m.retention
    return row


def _periodic_evaluation(teacher_st: Any, cfg: DistillConfig):
    pipelines: dict[int, Any] = {}

    def evaluate(student: nn.Module, step: int) -> dict[str, float]:
        pipeline = pipelines.setdefault(id(student), student_pipeline(teacher_st, student))
        return evaluate_student(pipeline, teacher_st, cfg, step)

    return evaluate


def _teacher_cache(cfg: DistillConfig, accelerator) -> TeacherCache | None:
    if not cfg.teacher_cache_gb:
        return None
    why_not = cache_supported(cfg)
    if why_not is not None:
        accelerator.print(f"teacher cache off: {why_not}")
        return None
    return TeacherCache(int(cfg.teacher_cache_gb * 2**30))


def _texts_source(texts: Any) -> str:
    if texts is None:
        return "bundled corpora"
    if isinstance(texts, (str, os.PathLike)):
        return os.path.abspath(texts)
    return "datasets.Dataset" if hasattr(texts, "column_names") else "a list of texts"


def _teacher_id(teacher: str | os.PathLike) -> str:
    return os.path.abspath(teacher) if os.path.exists(teacher) else str(teacher)


def _check_data_settings(texts: Any, cfg: DistillConfig) -> None:
    if texts is None and cfg.data_share < 1:
        raise InvalidInputError(f"data_share={cfg.data_share} is the share of your own texts (--data), but none were "
                                "given: pass --data FILE, or leave --data-share at 1")
    if texts is not None and cfg.data_share == 1 and cfg.excluded_sources:
        raise InvalidInputError("exclude_sources leaves sources of the bundled corpus out, which --data replaces "
                                "entirely: set --data-share below 1 to mix the two, or drop --exclude-sources")


def _check_eval_tasks(cfg: DistillConfig) -> None:
    if cfg.eval_every:  # a typo fails now, not after an hour of training
        from ..evaluation import resolve_tasks

        resolve_tasks(cfg.eval_tasks, has_teacher=True)


def _prepare_student(teacher_model: nn.Module, cfg: DistillConfig, tcfg: TernaryConfig) -> nn.Module:
    student = build_student(teacher_model, tcfg, quantized_int_layers=cfg.int_blocks_qat)
    set_int8_grad_input(student, cfg.int8_grad_input)
    teacher_model.eval().requires_grad_(False)
    if cfg.attention_kl:  # attention probabilities are only returned by the eager implementation
        for model in (teacher_model, student):
            model.set_attn_implementation("eager")
    student.train()
    return student


def _already_finished(output_dir: Path, info: dict[str, Any], accelerator) -> DistillResult:
    loss = info.get("final_loss")
    accelerator.print(f"{output_dir} is this run's finished model ({info['steps']} steps); left as it is "
                      f"(raise --steps / --minutes to train on, or {_FRESH_HINT})")
    return DistillResult(str(output_dir), int(info["steps"]), float(info.get("seconds") or 0.0),
                         float("nan") if loss is None else float(loss), [], 0.0, already_finished=True)


def distill(
    teacher: str | os.PathLike,
    output_dir: str | os.PathLike,
    texts: Sequence[str] | str | os.PathLike | Any | None = None,
    ternary_config: TernaryConfig | None = None,
    config: DistillConfig | None = None,
    work_dir: str | os.PathLike | None = None,
    resume: bool = True,
    show_progress_bar: bool = True,
    stop_after: int | None = None,
    overwrite: bool = False,
    text_field: str = "text",
    fresh: bool = False,
) -> DistillResult:
    """Distill ``teacher`` (a float sentence-transformers / transformers folder) into a packed ternary model.

    Args:
        teacher: the full-precision model (folder or repo id).
        output_dir: where the finalized ternary sentence-transformers folder goes.
        texts: training text (see :func:`~ternary_hf.train.data.load_texts`); ``None``: the bundled corpora.
        ternary_config: the quantization the student trains for and is finalized with.
        config: the run's :class:`DistillConfig`.
        work_dir: checkpoints, ``run.json`` and ``metrics.csv`` (default: ``<output_dir>.work``); kept
            after the run so a finished run can be inspected, and so a killed run resumes.
        resume: continue from the newest checkpoint in ``work_dir``; ``False`` is ``fresh=True``.
        stop_after: stop (after checkpointing) once this many steps are done, without finalizing;
            for tests and for splitting a long run into sessions.
        overwrite: replace ``output_dir`` even if it is not an earlier output of ``distill`` (one
            with a ``distillation.json``); checked before training starts, so a wrong path costs nothing.
        text_field: the field of a JSON Lines ``texts`` file that holds the text.
        fresh: discard the checkpoints, metrics and record in ``work_dir`` and start over.

    A run finished earlier (its step cap or time budget reached, its model in ``output_dir``) is
    reported with ``already_finished=True`` and left untouched. ``config.num_threads`` holds for this
    call only: torch's thread count is restored when it returns or raises.

    Raises:
        SettingsChangedError: ``work_dir`` holds checkpoints of a run with other settings (named).
        OutputExistsError / MissingInputError / InvalidInputError / MissingDependencyError: before training.
    """
    cfg, tcfg = config or DistillConfig(), ternary_config or TernaryConfig()
    with torch_threads(cfg.num_threads):
        return _distill(teacher, output_dir, texts, tcfg, cfg, work_dir, resume, show_progress_bar, stop_after,
                        overwrite, text_field, fresh)


def _distill(teacher: str | os.PathLike, output_dir: str | os.PathLike, texts: Any, tcfg: TernaryConfig,
             cfg: DistillConfig, work_dir: str | os.PathLike | None, resume: bool, show_progress_bar: bool,
             stop_after: int | None, overwrite: bool, text_field: str, fresh: bool) -> DistillResult:
    """:func:`distill` with its configs resolved, inside its thread count."""
    from accelerate.utils import set_seed

    output_dir = check_output_folder(output_dir, marker=DISTILLATION_INFO, overwrite=overwrite,
                                     hint="pass overwrite=True (CLI: --overwrite) to replace it")
    work_dir = Path(work_dir) if work_dir is not None else output_dir.with_name(output_dir.name + ".work")
    _check_eval_tasks(cfg)
    _check_data_settings(texts, cfg)
    corpus = load_texts(texts, limit=cfg.max_texts, seed=cfg.seed, text_field=text_field, mix=cfg.mix,
                        exclude=cfg.excluded_sources, share=cfg.data_share)
    accelerator = make_accelerator(cfg, work_dir)
    settings = run_settings(cfg, teacher=_teacher_id(teacher), ternary_config=tcfg.to_dict(),
                            data={"count": len(corpus), "sha256": corpus_fingerprint(corpus)},
                            processes=accelerator.num_processes)
    run = open_run(accelerator, work_dir, settings, fresh=fresh or not resume, hint=_FRESH_HINT)
    if (info := run.finished_output(cfg, output_dir)) is not None:
        return _already_finished(output_dir, info, accelerator)
    set_seed(cfg.seed)
    teacher_st, teacher_model, tokenizer = load_teacher(teacher)
    tcfg = with_int8_blocks(tcfg, teacher_model, cfg.int8_blocks)
    tcfg = with_int4_blocks(tcfg, teacher_model, cfg.int4_blocks, cfg.int4_last_blocks)
    run.begin(accelerator, settings, cfg, data=_texts_source(texts))
    student = _prepare_student(teacher_model, cfg, tcfg)
    forcing = LayerwiseTeacherForcing(student, teacher_model) if cfg.teacher_forcing else None
    disable_dropout(student)
    long_length = cfg.long_views_length(teacher_st.max_seq_length)
    loader = _text_batches(corpus, tokenizer, cfg, accelerator.num_processes, long_length)
    teacher_model.to(accelerator.device)
    bank = TeacherBank(cfg.bank_size) if cfg.bank_similarity else None
    cache = _teacher_cache(cfg, accelerator)
    journal = work_dir / TEACHER_CACHE_JOURNAL
    if run.latest is None:  # a fresh start: an earlier run's journal does not hold this run's targets
        _discard_journal(journal, accelerator)
    refill = save_journal = None
    if cache is not None and not is_finished(cfg, run.latest):
        refill, save_journal = _cache_hooks(cache, journal, teacher_model, accelerator, cfg, show_progress_bar)
    result = train(accelerator, cfg, student, loader, TextLoss(cfg, teacher_model, accelerator, cache, bank, forcing),
                   work_dir=work_dir, resume_from=run.latest, checkpoint_objects=[bank] if bank is not None else [],
                   on_resume=refill, on_save=save_journal, evaluate=_periodic_evaluation(teacher_st, cfg),
                   stop_after=stop_after, show_progress_bar=show_progress_bar)
    if forcing is not None:
        forcing.remove()
    if result.finished and accelerator.is_main_process:
        info = {"teacher": str(teacher), "steps": result.steps, "stopped_by_time_budget": result.out_of_time,
                "seconds": result.seconds, "session_seconds": result.session_seconds,
                "final_loss": result.final_loss, "config": asdict(cfg), "ternary_config": tcfg.to_dict(),
                "num_texts": len(corpus), "long_views_length": long_length,
                "teacher_cache": _cache_record(cache), "run_id": run.record.run_id,
                "sessions": run.sessions}
        finalize(result.model, teacher_st, output_dir, tcfg, info=info, overwrite=overwrite)
    if result.finished:  # its rows are only needed to resume; free the disk
        _discard_journal(journal, accelerator)
    accelerator.wait_for_everyone()
    return DistillResult(str(output_dir if result.finished else work_dir), result.steps, result.seconds,
                         result.final_loss, result.losses, result.session_seconds)


def _text_batches(corpus: list[str], tokenizer: Any, cfg: DistillConfig, processes: int, long_length: int = 0):
    """The DataLoader of the run: every process gets its own share of the batches (Accelerate shards
    the batch sampler), ``max_steps`` optimizer steps' worth; with ``long_length``, ``long_share`` of
    them are long views of the texts longer than ``max_length`` (:func:`~.data.long_views`)."""
    total_batches = cfg.max_steps * cfg.gradient_accumulation_steps * processes
    lengths = token_lengths(corpus, tokenizer, cfg.max_length) if cfg.batch_tokens else [len(t) for t in corpus]
    order = batch_order(lengths, cfg.batch_size, total_batches, cfg.seed, max_tokens=cfg.batch_tokens)
    items, collate = list(corpus), TextCollate(tokenizer, cfg.max_length)
    if long_length:
        long_texts, long_lengths = long_views(corpus, tokenizer, cfg.max_length, long_length)
        if long_texts:
            budget = cfg.batch_tokens or cfg.batch_size * cfg.max_length
            long_order = batch_order(long_lengths, cfg.batch_size, total_batches, cfg.seed + 1, max_tokens=budget)
            order = interleave_batches(order, [[len(corpus) + i for i in b] for b in long_order], cfg.long_share,
                                       cfg.seed)
            items, collate = items + long_texts, TextCollate(tokenizer, cfg.max_length, long_length, len(corpus))
        else:
            logger.warning("long views (--long-length %d): no training text is longer than --max-length %d tokens, "
                           "so every batch is a short one", long_length, cfg.max_length)
    return torch.utils.data.DataLoader(IndexedTexts(items), batch_sampler=order, collate_fn=collate)


def _cache_hooks(cache: TeacherCache, journal: Path, teacher_model: nn.Module, accelerator, cfg: DistillConfig,
                 show: bool):
    """``(on_resume, on_save)`` for :func:`~.loop.train`: refill the cache on a resume, journal it at each save."""

    def refill(prepared_loader, n_batches: int) -> None:
        replay_teacher_cache(cache, prepared_loader, teacher_model, n_batches, accelerator, show, journal,
                             n_batches // cfg.gradient_accumulation_steps)

    def save_journal(step: int) -> None:
        cache.flush(journal, step, accelerator.process_index)

    return refill, save_journal


def _discard_journal(journal: Path, accelerator) -> None:
    if accelerator.is_main_process:
        shutil.rmtree(journal, ignore_errors=True)
    accelerator.wait_for_everyone()


def _cache_record(cache: TeacherCache | None) -> dict[str, Any] | None:
    if cache is None:
        return None
    return {"texts": len(cache), "megabytes": round(cache.nbytes / 2**20, 1), "batches_served": cache.hits,
            "teacher_forwards": cache.misses}
