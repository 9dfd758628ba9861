"""Self-taught distillation: the float model teaches its own ternary copy (arXiv 2411.15438, extended).

The student is the teacher with latent float weights behind a ternary forward (see
:mod:`ternary_hf.training`): the same ternarization rule and activation rule as inference, gradients
passed straight through. Losses (each weighted, 0 switches it off):

* ``hidden_mse`` -- the paper's loss: MSE between last hidden states, here masked to real tokens
  (padding carries nothing the user sees, and the paper's unmasked MSE spends capacity on it);
* ``pooled_cosine`` -- ``1 - cos`` between the pooled sentence embeddings (what users search with);
* ``pooled_mse`` -- MSE between pooled embeddings (keeps their norm, which cosine ignores);
* ``layer_mse`` -- masked MSE averaged over every intermediate hidden state (TernaryBERT's recipe);
* ``similarity`` -- matching the in-batch cosine-similarity matrices (ranking is what retrieval
  needs). ``similarity_mode="mse"`` compares off-diagonal entries; ``"kl"`` compares row-wise
  softmaxes at ``similarity_temperature`` with the diagonal masked (left in, it dominates every row);
* ``bank_similarity`` -- MSE between the student's and the teacher's cosine similarities of this
  batch to a bank of the teacher's embeddings of up to ``bank_size`` earlier texts. For a pair of
  texts the error of the student's similarity is, to first order, ``(s_a - t_a) . t_b + ...``: this
  loss averages exactly that term over thousands of real ``t_b`` per step instead of the 31 other
  texts of the batch, so the student's error is pushed out of the directions real texts differ in.
  The bank costs no student forward (teacher embeddings only) and is saved with each checkpoint.

``teacher_forcing`` (a fraction of the run, 0 = off) trains every transformer layer on the teacher's
input to it for that first part of the run, loss ``teacher_forced_mse`` (see
:mod:`ternary_hf.teacher_forcing`); the losses above take over after it.

Speed (CPU): the teacher's last hidden state of every text is kept in memory after its first epoch
(``teacher_cache_gb``, :mod:`ternary_hf.teacher_cache`), and each ternary layer's input gradient runs
on the int8 kernel (``int8_grad_input``, :mod:`ternary_hf.training`); both measured in the README.

The loop runs on :class:`accelerate.Accelerator` (CPU, one GPU, or ``accelerate launch`` for many),
checkpoints every ``save_every`` steps with ``save_state`` and resumes exactly where it stopped
(same batches, same RNG): a resumed run ends with the same weights as an uninterrupted one.
After training the latent weights are loaded through the quantizer into packed ternary form
(:func:`finalize`), the same path as ``from_pretrained(..., quantization_config=...)``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..integrations.config import TernaryConfig
from ..utils.io import check_output_folder, replace_folder
from ..utils.progress import bar_switch
from .student import build_student, set_int8_grad_input, to_float_model
from .teacher_cache import TeacherCache, cache_supported
from .teacher_forcing import LayerwiseTeacherForcing

__all__ = ["DistillConfig", "DistillResult", "TeacherBank", "distill", "distillation_loss", "finalize", "load_texts"]

logger = logging.getLogger(__name__)
_CHECKPOINT_PREFIX = "checkpoint-"
#: written into every finalized folder; also what marks a folder a re-run may replace
DISTILLATION_INFO = "distillation.json"


@dataclass
class DistillConfig:
    """Hyper-parameters of a distillation run (defaults measured on all-MiniLM-L6-v2, see README).

    The loss weights are described in the module docstring. ``max_minutes`` is a training-time
    budget (periodic evaluation not counted, resumed sessions added up): the run stops at the first
    of ``max_steps`` / ``max_minutes`` and the learning rate decays along whichever runs out first.
    ``eval_every`` evaluates the student against the teacher every N steps with
    :func:`ternary_hf.evaluation.evaluate` (``eval_tasks``, ``eval_limit`` texts per split) and
    appends the numbers to ``evals.csv`` in the work dir. ``report_to="tensorboard"`` also writes
    the metrics as TensorBoard events there (``pip install tensorboard``).

    ``max_length=64`` truncates training texts to 64 tokens: the bundled corpus is mostly short
    sentences, and the long 20NG posts then cost half as much per step, so a time budget buys about
    twice the steps (2,365 in 30 minutes on 2 cores vs about 830 at 128), which the student's quality
    tracks closely (README, "Quality on real data and distillation"). ``max_steps=2000`` is about 25
    minutes of that on a 2-core AVX-512 VNNI CPU; add ``max_minutes`` to cap the time instead.

    ``teacher_cache_gb`` caps the memory of the teacher-output cache (0 switches it off; it is off
    anyway for losses that need more than the teacher's last hidden state, see
    :func:`ternary_hf.teacher_cache.cache_supported`). ``int8_grad_input`` runs each ternary layer's
    input gradient on the int8 kernel (CPU kernel path only; the weight gradient stays float32).
    """

    max_steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    gradient_accumulation_steps: int = 1
    max_length: int = 64
    hidden_mse: float = 1.0
    pooled_cosine: float = 1.0
    pooled_mse: float = 0.0
    layer_mse: float = 0.0
    attention_kl: float = 0.0
    similarity: float = 1.0
    similarity_mode: str = "mse"
    similarity_temperature: float = 0.1
    bank_similarity: float = 0.0
    bank_size: int = 4096
    teacher_forcing: float = 0.0
    mask_padding: bool = True
    teacher_cache_gb: float = 4.0
    int8_grad_input: bool = True
    seed: int = 0
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    mixed_precision: str = "no"
    optimizer: str = "adamw"
    num_threads: int | None = None
    max_texts: int | None = None
    max_minutes: float | None = None
    eval_every: int = 0
    eval_tasks: str = "teacher-agreement"
    eval_limit: int | None = 200
    report_to: str = "csv"

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "max_length", "save_every",
                     "log_every", "bank_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DistillConfig: {name}={getattr(self, name)!r} must be >= 1")
        for name in ("hidden_mse", "pooled_cosine", "pooled_mse", "layer_mse", "attention_kl", "similarity",
                     "bank_similarity", "learning_rate", "teacher_cache_gb"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"DistillConfig: {name}={getattr(self, name)!r} must be >= 0")
        if (self.hidden_mse + self.pooled_cosine + self.pooled_mse + self.layer_mse + self.attention_kl
                + self.similarity + self.bank_similarity == 0):
            raise ValueError("DistillConfig: every loss weight is 0; switch at least one loss on")
        if not 0.0 <= self.teacher_forcing < 1.0:
            raise ValueError(f"DistillConfig: teacher_forcing={self.teacher_forcing!r} is the fraction of the run "
                             "trained layer by layer; choose 0 <= teacher_forcing < 1 (0: off)")
        if self.similarity_mode not in ("mse", "kl"):
            raise ValueError(f"DistillConfig: similarity_mode={self.similarity_mode!r}; choose 'mse' or 'kl'")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise ValueError(f"DistillConfig: optimizer={self.optimizer!r}; choose 'adamw' or 'adamw8bit'")
        if self.eval_every < 0:
            raise ValueError(f"DistillConfig: eval_every={self.eval_every!r} must be >= 0 (0: no periodic evaluation)")
        if self.report_to not in ("csv", "tensorboard"):
            raise ValueError(f"DistillConfig: report_to={self.report_to!r}; choose 'csv' or 'tensorboard'")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"DistillConfig: mixed_precision={self.mixed_precision!r}; choose no, fp16 or bf16")


@dataclass
class DistillResult:
    """Where the run ended up and what it cost. ``seconds`` is training time summed over every
    session of a resumed run (the time a ``max_minutes`` budget counts; evaluation excluded);
    ``session_seconds`` the part of it this call trained."""

    output_dir: str
    steps: int
    seconds: float
    final_loss: float
    losses: list[dict[str, float]] = field(default_factory=list)
    session_seconds: float = 0.0


# ----------------------------------------------------------------------------------------------- data
def load_texts(source: str | Sequence[str] | Any | None = None, limit: int | None = None, seed: int = 0,
               text_field: str = "text") -> list[str]:
    """Distillation texts from a file (one per line; ``.jsonl`` with ``text_field``), a list, a
    ``datasets.Dataset``, or ``None`` for the bundled real corpora (training splits only)."""
    if source is None:
        from ..data.corpora import default_distillation_texts

        texts = list(default_distillation_texts(limit=limit, seed=seed))
    elif isinstance(source, (str, os.PathLike)):
        from ..data.texts import read_corpus

        texts = [text for _, text in read_corpus(source, text_field)]
    elif hasattr(source, "column_names"):  # a datasets.Dataset
        if text_field not in source.column_names:
            raise ValueError(f"dataset has no column {text_field!r}; columns: {source.column_names}")
        texts = [str(t) for t in source[text_field]]
    else:
        texts = [str(t) for t in source]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no distillation text: the source is empty")
    if limit is not None and len(texts) > limit:
        texts = random.Random(seed).sample(texts, limit)
    return texts


def _batch_order(lengths: list[int], batch_size: int, n_batches: int, seed: int) -> list[list[int]]:
    """Seeded batches of similar length (less padding), in shuffled order, repeated as needed."""
    rng = random.Random(seed)
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < n_batches:
        idx = list(range(len(lengths)))
        rng.shuffle(idx)
        pool = batch_size * 32
        epoch_batches = []
        for start in range(0, len(idx), pool):
            chunk = sorted(idx[start:start + pool], key=lambda i: lengths[i])
            epoch_batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(epoch_batches)
        batches += [b for b in epoch_batches if len(b) == batch_size] or epoch_batches
        epoch += 1
    return batches[:n_batches]


class _IndexedTexts(torch.utils.data.Dataset):
    """The corpus as ``(index, text)`` items: the index keys the teacher cache."""

    def __init__(self, texts: Sequence[str]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[int, str]:
        return i, self.texts[i]


class _Collate:
    """Tokenized batch plus ``index`` (the texts' corpus positions), which the loop pops before the models."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items: list[tuple[int, str]]) -> dict[str, torch.Tensor]:
        batch = dict(self.tokenizer([text for _, text in items], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt"))
        batch["index"] = torch.tensor([i for i, _ in items], dtype=torch.int64)
        return batch


# ----------------------------------------------------------------------------------------------- losses
def _masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return F.mse_loss(a, b)
    m = mask.unsqueeze(-1).to(a.dtype)
    return ((a - b) ** 2 * m).sum() / (m.sum() * a.shape[-1]).clamp(min=1)


def _attention_kl(student_attn, teacher_attn, mask: torch.Tensor | None) -> torch.Tensor:
    """KL(teacher || student) of the attention distributions, averaged over layers, heads and real query tokens.

    TernaryBERT's / MiniLM's attention transfer: which tokens each token reads from is what the
    ternary weights perturb first, and the teacher's rows are a dense target per token pair."""
    total = student_attn[0].new_zeros(())
    for s, t in zip(student_attn, teacher_attn, strict=True):
        kl = (torch.xlogy(t, t) - t * torch.log(s.clamp_min(1e-12))).sum(-1)  # (batch, heads, queries)
        if mask is None:
            total = total + kl.mean()
        else:
            m = mask[:, None, :].to(kl.dtype)
            total = total + (kl * m).sum() / (m.sum() * kl.shape[1]).clamp(min=1)
    return total / max(len(student_attn), 1)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class TeacherBank:
    """FIFO of the teacher's L2-normalised pooled embeddings of earlier batches (``bank_similarity``).

    Every process pushes the gathered embeddings of all processes, so the banks stay identical and
    the one saved with a checkpoint (``state_dict``, via ``accelerator.register_for_checkpointing``)
    is every process's bank.
    """

    def __init__(self, size: int):
        self.size = size
        self.embeddings = torch.empty(0)

    def push(self, normalized: torch.Tensor) -> None:
        self.embeddings = torch.cat([normalized.detach().to(torch.float32).cpu(), self.embeddings])[: self.size]

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"embeddings": self.embeddings}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.embeddings = state["embeddings"]


def distillation_loss(student_out, teacher_out, attention_mask: torch.Tensor, cfg: DistillConfig,
                      bank: TeacherBank | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the switched-on losses; returns ``(loss, {name: value})``.

    ``bank`` holds the reference embeddings of ``bank_similarity`` (the term is left out while it is
    empty or ``None``)."""
    mask = attention_mask if cfg.mask_padding else None
    s_last, t_last = student_out.last_hidden_state, teacher_out.last_hidden_state
    parts: dict[str, torch.Tensor] = {}
    if cfg.hidden_mse:
        parts["hidden_mse"] = _masked_mse(s_last, t_last, mask)
    if cfg.layer_mse:
        pairs = list(zip(student_out.hidden_states[1:-1], teacher_out.hidden_states[1:-1], strict=True))
        parts["layer_mse"] = sum(_masked_mse(s, t, mask) for s, t in pairs) / max(len(pairs), 1)
    if cfg.attention_kl:
        parts["attention_kl"] = _attention_kl(student_out.attentions, teacher_out.attentions, mask)
    if cfg.pooled_cosine or cfg.pooled_mse or cfg.similarity or cfg.bank_similarity:
        s_pool, t_pool = mean_pool(s_last, attention_mask), mean_pool(t_last, attention_mask)
        if cfg.pooled_cosine:
            parts["pooled_cosine"] = (1 - F.cosine_similarity(s_pool, t_pool, dim=-1)).mean()
        if cfg.pooled_mse:
            parts["pooled_mse"] = F.mse_loss(s_pool, t_pool)
        if cfg.similarity and s_pool.shape[0] > 1:
            s_sim = F.normalize(s_pool, dim=-1) @ F.normalize(s_pool, dim=-1).t()
            t_sim = F.normalize(t_pool, dim=-1) @ F.normalize(t_pool, dim=-1).t()
            off = ~torch.eye(s_sim.shape[0], dtype=torch.bool, device=s_sim.device)
            if cfg.similarity_mode == "mse":
                parts["similarity"] = F.mse_loss(s_sim[off], t_sim[off])
            else:
                neg = torch.finfo(s_sim.dtype).min
                s_log = F.log_softmax((s_sim / cfg.similarity_temperature).masked_fill(~off, neg), dim=-1)
                t_prob = F.softmax((t_sim / cfg.similarity_temperature).masked_fill(~off, neg), dim=-1)
                parts["similarity"] = F.kl_div(s_log, t_prob, reduction="batchmean")
        if cfg.bank_similarity and bank is not None and len(bank):
            reference = bank.embeddings.to(s_pool.device, s_pool.dtype)
            parts["bank_similarity"] = F.mse_loss(F.normalize(s_pool, dim=-1) @ reference.t(),
                                                  F.normalize(t_pool, dim=-1) @ reference.t())
    # Starts from a graph-connected zero: with bank_similarity alone, the first step (empty bank) has
    # no term yet and must still backpropagate.
    loss = sum((getattr(cfg, name) * value for name, value in parts.items()), s_last.sum() * 0.0)
    return loss, {name: float(value.detach()) for name, value in parts.items()}


# ----------------------------------------------------------------------------------------------- model io
def _load_teacher(teacher: str):
    """``(sentence_transformer, hf_model, tokenizer)`` for a float teacher folder or repo id."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(teacher, device="cpu")
    transformer = st[0]
    model = transformer.auto_model
    if getattr(model, "is_quantized", False):
        raise ValueError(f"{teacher} is already quantized; distill from the full-precision model")
    return st, model, transformer.tokenizer


def finalize(student: nn.Module, teacher_st, output_dir: str | os.PathLike, config: TernaryConfig) -> str:
    """Pack the trained student into a ternary sentence-transformers folder at ``output_dir``.

    The latent weights are written as a float checkpoint of the teacher's architecture and loaded
    back through the quantizer, so the packed model is what ``from_pretrained(...,
    quantization_config=config)`` makes of them. Written to a temporary folder, renamed at the end.
    """
    import copy

    from sentence_transformers import SentenceTransformer

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    float_st = copy.deepcopy(teacher_st)
    float_st[0].auto_model.load_state_dict(to_float_model(student).state_dict())
    with tempfile.TemporaryDirectory(dir=output_dir.parent) as tmp:
        float_st.save(os.path.join(tmp, "float"))
        packed = SentenceTransformer(os.path.join(tmp, "float"), device="cpu",
                                     model_kwargs={"quantization_config": config})
        staging = os.path.join(tmp, "packed")
        packed.save(staging)
        replace_folder(staging, output_dir)
    return str(output_dir)


# ----------------------------------------------------------------------------------------------- loop
def _checkpoints(work_dir: Path) -> list[Path]:
    found = [p for p in work_dir.glob(f"{_CHECKPOINT_PREFIX}*") if p.name[len(_CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_CHECKPOINT_PREFIX):]))


def warmup_cosine(warmup: int, total: int, time_fraction=None, warmup_ratio: float = 0.0):
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


_TRAINER_STATE = "trainer_state.json"


def _progress(step: int, total: int, time_fraction=None) -> float:
    """How far along the run is: the further of steps done and time budget used (0..1)."""
    done = step / max(total, 1)
    return max(done, time_fraction()) if time_fraction is not None else done


def resume_latest(accelerator, work_dir: Path, resume: bool, total: int) -> tuple[int, float]:
    """Load the newest ``checkpoint-N`` in ``work_dir`` (if ``resume``); return N and the training
    seconds spent before it (a time budget counts across resumes), else ``(0, 0.0)``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    existing = _checkpoints(work_dir)
    if not (resume and existing):
        return 0, 0.0
    accelerator.load_state(str(existing[-1]))
    step = int(existing[-1].name[len(_CHECKPOINT_PREFIX):])
    state_file = existing[-1] / _TRAINER_STATE
    elapsed = float(json.loads(state_file.read_text())["elapsed_s"]) if state_file.is_file() else 0.0
    accelerator.print(f"resuming from {existing[-1]} (step {step}/{total})")
    return step, elapsed


def save_checkpoint(accelerator, work_dir: Path, step: int, keep: int, elapsed_s: float | None = None) -> None:
    """``save_state`` to ``checkpoint-<step>`` and keep only the newest ``keep`` checkpoints.

    The state is written to a hidden ``.checkpoint-<step>.partial`` folder and renamed when complete:
    a run killed while saving leaves its previous checkpoint as the newest one, never a torn one."""
    final = work_dir / f"{_CHECKPOINT_PREFIX}{step}"
    partial = work_dir / f".{_CHECKPOINT_PREFIX}{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if elapsed_s is not None:
            (partial / _TRAINER_STATE).write_text(json.dumps({"step": step, "elapsed_s": elapsed_s}))
        replace_folder(partial, final)
        for old in _checkpoints(work_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class _MetricsLog:
    """Training metrics to ``metrics.csv`` (always) and TensorBoard (``report_to="tensorboard"``).

    Evaluation rows carry other columns than loss rows, so they go to their own ``evals.csv``."""

    def __init__(self, accelerator, work_dir: Path, report_to: str):
        self.accelerator, self.work_dir = accelerator, work_dir
        self.tensorboard = report_to == "tensorboard"
        self._fields: dict[str, list[str] | None] = {}  # each CSV's header, read from disk once per run
        if self.tensorboard:
            accelerator.init_trackers("distill")

    def drop_after(self, step: int) -> None:
        """Forget rows logged after ``step``, the checkpoint a run resumes from: a killed session
        logged steps it never checkpointed, and the resumed run redoes them, so without this the CSVs
        would hold two versions of those steps."""
        if not self.accelerator.is_main_process:
            return
        for file in ("metrics.csv", "evals.csv"):
            path = self.work_dir / file
            if not path.is_file():
                continue
            fields, rows = _read_csv(path)
            kept = [row for row in rows if int(float(row["step"])) <= step]
            if fields and len(kept) < len(rows):
                _write_csv(path, fields, kept)

    def write(self, row: dict[str, float], file: str = "metrics.csv") -> None:
        if self.tensorboard:
            self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
        if not self.accelerator.is_main_process:
            return
        path = self.work_dir / file
        if file not in self._fields:
            self._fields[file] = _read_csv(path)[0] if path.is_file() else None
        fields = self._fields[file]
        if fields is not None and not set(row) <= set(fields):
            # a loss term that appears later (the bank's, once it has entries) gets its own column;
            # earlier rows are rewritten with it empty so every value stays under its header
            fields = fields + [name for name in row if name not in fields]
            _write_csv(path, fields, _read_csv(path)[1])
        new_file = fields is None
        fields = self._fields[file] = fields or list(row)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            if new_file:
                writer.writeheader()
            writer.writerow(row)

    def close(self) -> None:
        if self.tensorboard:
            self.accelerator.end_training()


def _read_csv(path: Path) -> tuple[list[str] | None, list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return (list(reader.fieldnames) if reader.fieldnames else None), rows


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Rewrite a metrics CSV whole, through a temporary file, so a kill mid-write loses nothing."""
    partial = path.with_suffix(".csv.partial")
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            return False
    return True


def student_pipeline(teacher_st, student: nn.Module):
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


def evaluate_student(pipeline, teacher_st, cfg: DistillConfig, step: int) -> dict[str, float]:
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


def _teacher_cache(cfg: DistillConfig, accelerator) -> TeacherCache | None:
    if not cfg.teacher_cache_gb:
        return None
    why_not = cache_supported(cfg)
    if why_not is not None:
        accelerator.print(f"teacher cache off: {why_not}")
        return None
    return TeacherCache(int(cfg.teacher_cache_gb * 2**30))


def _cached_teacher_output(cache: TeacherCache | None, index: torch.Tensor, attention_mask: torch.Tensor):
    """The teacher's output for a batch from the cache (only ``last_hidden_state``), or ``None``."""
    if cache is None:
        return None
    hidden = cache.lookup(index, attention_mask)
    if hidden is None:
        return None
    from transformers.modeling_outputs import BaseModelOutput

    return BaseModelOutput(last_hidden_state=hidden)


def _replay_cache(cache: TeacherCache, loader, teacher_model, n_batches: int, accelerator, show: bool) -> None:
    """Refill the teacher cache after a resume from this process's first ``n_batches`` batches (read
    from the loader's batch sampler, so neither the RNG nor accelerate's dataloader state moves)."""
    import itertools

    from tqdm.auto import tqdm

    def batches():
        for indices in itertools.islice(iter(loader.batch_sampler), n_batches):
            batch = loader.collate_fn([loader.dataset[i] for i in indices])
            yield {k: v.to(accelerator.device) for k, v in batch.items()}

    def progress(it):
        return tqdm(it, total=n_batches, desc="rebuilding teacher cache", unit="batch",
                    **bar_switch(show and accelerator.is_local_main_process))

    forwards = cache.replay(batches(), teacher_model, progress)
    accelerator.print(f"teacher cache rebuilt: {len(cache)} texts from {forwards} teacher forwards")


def _minutes(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _make_optimizer(params, cfg: DistillConfig):
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        except Exception as exc:  # not installed, or no supported device
            logger.warning("8-bit AdamW unavailable (%s); using torch AdamW", exc)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def distill(
    teacher: str,
    output_dir: str | os.PathLike,
    texts: Sequence[str] | str | Any | None = None,
    ternary_config: TernaryConfig | None = None,
    config: DistillConfig | None = None,
    work_dir: str | os.PathLike | None = None,
    resume: bool = True,
    show_progress_bar: bool = True,
    stop_after: int | None = None,
    overwrite: bool = False,
) -> DistillResult:
    """Distill ``teacher`` (a float sentence-transformers / transformers folder) into a packed ternary model.

    Args:
        teacher: the full-precision model (folder or repo id).
        output_dir: where the finalized ternary sentence-transformers folder goes.
        texts: training text (see :func:`load_texts`); ``None`` uses the bundled corpora.
        ternary_config: the quantization the student trains for and is finalized with.
        config: the run's :class:`DistillConfig`.
        work_dir: checkpoints and ``metrics.csv`` (default: ``<output_dir>.work``); kept after the
            run so a finished run can be inspected, and so a killed run resumes.
        resume: continue from the newest checkpoint in ``work_dir`` if there is one.
        stop_after: stop (after checkpointing) once this many steps are done, without finalizing;
            for tests and for splitting a long run into sessions.
        overwrite: replace ``output_dir`` even if it is not an earlier output of ``distill`` (one
            with a ``distillation.json``); checked before training starts, so a wrong path costs
            nothing.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from tqdm.auto import tqdm

    cfg = config or DistillConfig()
    tcfg = ternary_config or TernaryConfig()
    output_dir = check_output_folder(output_dir, marker=DISTILLATION_INFO, overwrite=overwrite,
                                     hint="pass overwrite=True (CLI: --overwrite) to replace it")
    work_dir = Path(work_dir) if work_dir is not None else output_dir.with_name(output_dir.name + ".work")
    if cfg.eval_every:
        from ..evaluation.tasks import _resolve_tasks

        _resolve_tasks(cfg.eval_tasks, has_teacher=True)  # a typo fails now, not after an hour of training
    if cfg.report_to == "tensorboard" and not _tensorboard_available():
        raise ImportError("report_to='tensorboard' needs the tensorboard package: pip install tensorboard "
                          "(or use report_to='csv', which writes metrics.csv)")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # cpu=True on a machine without an accelerator lets accelerate see a torchrun/mpirun launch as
    # multi-process CPU training (gloo); with a GPU, accelerate picks it as usual.
    no_accelerator = not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              mixed_precision=cfg.mixed_precision, cpu=no_accelerator,
                              # the pooler (and any head) gets no gradient from an embedding loss
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
                              log_with="tensorboard" if cfg.report_to == "tensorboard" else None,
                              project_dir=str(work_dir))
    set_seed(cfg.seed)

    teacher_st, teacher_model, tokenizer = _load_teacher(teacher)
    corpus = load_texts(texts, limit=cfg.max_texts, seed=cfg.seed)
    student = build_student(teacher_model, tcfg)
    set_int8_grad_input(student, cfg.int8_grad_input)
    teacher_model.eval().requires_grad_(False)
    if cfg.attention_kl:  # attention probabilities are only returned by the eager implementation
        for model in (teacher_model, student):
            model.set_attn_implementation("eager")
    student.train()
    forcing = LayerwiseTeacherForcing(student, teacher_model) if cfg.teacher_forcing else None
    for module in student.modules():  # dropout off: we match a deterministic teacher
        if isinstance(module, nn.Dropout):
            module.p = 0.0

    # Every process gets its own share of the batches (accelerate shards the batch sampler).
    total_batches = cfg.max_steps * cfg.gradient_accumulation_steps * accelerator.num_processes
    order = _batch_order([len(t) for t in corpus], cfg.batch_size, total_batches, cfg.seed)
    loader = torch.utils.data.DataLoader(_IndexedTexts(corpus), batch_sampler=order,
                                         collate_fn=_Collate(tokenizer, cfg.max_length))
    optimizer = _make_optimizer([p for p in student.parameters() if p.requires_grad], cfg)
    warmup = int(cfg.warmup_ratio * cfg.max_steps)

    clock = {"before": 0.0, "started": time.time()}  # training seconds of earlier sessions + this one's start

    def elapsed() -> float:
        return clock["before"] + time.time() - clock["started"]

    budget_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
    time_fraction = (lambda: elapsed() / budget_s) if budget_s else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, cfg.max_steps, time_fraction,
                                                                                cfg.warmup_ratio))
    student, optimizer, loader, scheduler = accelerator.prepare(student, optimizer, loader, scheduler)
    teacher_model.to(accelerator.device)
    bank = TeacherBank(cfg.bank_size) if cfg.bank_similarity else None
    if bank is not None:
        accelerator.register_for_checkpointing(bank)

    step, clock["before"] = resume_latest(accelerator, work_dir, resume, cfg.max_steps)
    batches = accelerator.skip_first_batches(loader, step * cfg.gradient_accumulation_steps) if step else loader
    first_step = step
    cache = _teacher_cache(cfg, accelerator)

    log = _MetricsLog(accelerator, work_dir, cfg.report_to)
    log.drop_after(step)
    eval_pipeline = None
    history: list[dict[str, float]] = []
    # with a time budget tqdm's own step-based "remaining" would be wrong; the postfix has the real ETA
    bar = tqdm(total=cfg.max_steps, initial=step, desc="distilling", unit="step",
               **bar_switch(show_progress_bar and accelerator.is_local_main_process),
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]" if budget_s else None)
    if cache is not None and step:  # the resumed run's targets must be the uninterrupted run's, bit for bit
        _replay_cache(cache, loader, teacher_model, step * cfg.gradient_accumulation_steps, accelerator,
                      show_progress_bar)
    # started after the refill: an uninterrupted run never spends it, so neither the time budget nor a
    # time-based learning-rate schedule may count it
    clock["started"] = time.time()
    running, last_loss = None, float("nan")
    micro = 0
    out_of_time = False
    for batch in batches:
        if step >= cfg.max_steps or (stop_after is not None and step >= stop_after):
            break
        if budget_s is not None and elapsed() > budget_s and micro == 0:
            out_of_time = True  # a time budget ends the run at an optimizer-step boundary; finalize what we have
            accelerator.print(f"time budget of {cfg.max_minutes} min reached at step {step}/{cfg.max_steps}")
            break
        forced = forcing is not None and _progress(step, cfg.max_steps, time_fraction) < cfg.teacher_forcing
        if forcing is not None:
            forcing.enabled = forced
        index = batch.pop("index")
        with accelerator.accumulate(student):
            teacher_out = _cached_teacher_output(cache, index, batch["attention_mask"])
            if teacher_out is None:
                with torch.no_grad():
                    teacher_out = teacher_model(**batch, output_hidden_states=bool(cfg.layer_mse) and not forced,
                                                output_attentions=bool(cfg.attention_kl) and not forced)
                if cache is not None:
                    cache.add(index, batch["attention_mask"], teacher_out.last_hidden_state)
            student_out = student(**batch, output_hidden_states=bool(cfg.layer_mse) and not forced,
                                  output_attentions=bool(cfg.attention_kl) and not forced)
            if forced:
                mask = batch["attention_mask"] if cfg.mask_padding else None
                pairs = forcing.pairs()
                loss = sum(_masked_mse(s, t, mask) for s, t in pairs) / len(pairs)
                parts = {"teacher_forced_mse": float(loss.detach())}
            else:
                loss, parts = distillation_loss(student_out, teacher_out, batch["attention_mask"], cfg, bank)
            if bank is not None:
                pooled = mean_pool(teacher_out.last_hidden_state, batch["attention_mask"])
                bank.push(accelerator.gather(F.normalize(pooled, dim=-1)))
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        micro = (micro + 1) % cfg.gradient_accumulation_steps
        if micro:
            continue
        step += 1
        last_loss = float(loss.detach())
        running = last_loss if running is None else 0.9 * running + 0.1 * last_loss
        bar.update(1)
        rate = (step - first_step) / max(time.time() - clock["started"], 1e-9)
        left = (cfg.max_steps - step) / rate
        if budget_s is not None:
            left = min(left, max(budget_s - elapsed(), 0.0))
        bar.set_postfix(loss=f"{running:.4f}", steps_per_s=f"{rate:.2f}", eta=_minutes(left))
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            row = {"step": step, "loss": last_loss, **parts, "lr": scheduler.get_last_lr()[0],
                   "elapsed_s": elapsed()}
            history.append(row)
            log.write(row)
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            eval_started = time.time()
            if accelerator.is_main_process:
                if eval_pipeline is None:
                    eval_pipeline = student_pipeline(teacher_st, accelerator.unwrap_model(student))
                evaluated = evaluate_student(eval_pipeline, teacher_st, cfg, step)
                log.write(evaluated, "evals.csv")
                bar.write(f"eval at step {step}: " + ", ".join(
                    f"{k}={v:.4f}" for k, v in evaluated.items() if k != "step" and not k.endswith("_pct")))
            accelerator.wait_for_everyone()
            clock["started"] += time.time() - eval_started  # evaluation is not training time
        if step % cfg.save_every == 0 or step == cfg.max_steps or (stop_after is not None and step >= stop_after):
            save_checkpoint(accelerator, work_dir, step, cfg.keep_checkpoints, elapsed())
    bar.close()
    log.close()
    if forcing is not None:
        forcing.remove()
    accelerator.wait_for_everyone()
    seconds = elapsed()
    session_seconds = seconds - clock["before"]  # same clock as seconds: evaluation excluded in both
    if step < cfg.max_steps and not out_of_time:
        return DistillResult(str(work_dir), step, seconds, last_loss, history, session_seconds)
    if out_of_time:
        save_checkpoint(accelerator, work_dir, step, cfg.keep_checkpoints, elapsed())
    if accelerator.is_main_process:
        finalize(accelerator.unwrap_model(student), teacher_st, output_dir, tcfg)
        with open(Path(output_dir) / DISTILLATION_INFO, "w", encoding="utf-8") as f:
            json.dump({"teacher": str(teacher), "steps": step, "stopped_by_time_budget": out_of_time,
                       "seconds": seconds, "session_seconds": session_seconds, "final_loss": last_loss,
                       "config": asdict(cfg), "ternary_config": tcfg.to_dict(), "num_texts": len(corpus),
                       "teacher_cache": None if cache is None else {
                           "texts": len(cache), "megabytes": round(cache.nbytes / 2**20, 1),
                           "batches_served": cache.hits, "teacher_forwards": cache.misses}}, f, indent=2)
    accelerator.wait_for_everyone()
    return DistillResult(str(output_dir), step, seconds, last_loss, history, session_seconds)
