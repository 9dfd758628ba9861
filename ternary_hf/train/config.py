"""What a distillation run is asked to do (:class:`DistillConfig`) and what it did (:class:`DistillResult`).

Each field of :class:`DistillConfig` carries its own documentation (``help`` metadata) and, where a
flag had another name before, its ``aliases``; the ``ternary-hf distill`` flags are generated from the
fields (:class:`transformers.HfArgumentParser`), so the CLI and the Python API cannot drift apart.
Choices are ``Literal`` types, so the allowed values are written once, in the annotation; bounds are
in :data:`MINIMUM`, and :data:`RESUMABLE` names the settings a resumed run may change (every other
field defines the run, see :mod:`ternary_hf.train.run_settings`); :data:`ADDED_LATER` keeps a
resumed run from before a setting existed resumable.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ..errors import InvalidInputError

__all__ = ["ADDED_LATER", "LOSS_WEIGHTS", "MINIMUM", "RESUMABLE", "DistillConfig", "DistillResult", "field_choices"]

#: the weighted losses of :func:`ternary_hf.train.losses.distillation_loss` (0 switches one off)
LOSS_WEIGHTS = ("hidden_mse", "pooled_cosine", "pooled_mse", "layer_mse", "attention_kl", "similarity",
                "bank_similarity")


#: settings a resumed run may change (budgets, reporting, checkpoint cadence, threads); every other
#: field defines the run, and a resume with another value is refused
RESUMABLE = frozenset({"max_steps", "max_minutes", "save_every", "keep_checkpoints", "log_every", "num_threads",
                       "eval_every", "eval_tasks", "eval_limit", "report_to"})
#: settings added after runs were first recorded, at the value that reproduces what a run recorded
#: without them did (long views off, no token budget, the classic corpus, no --data mixing, every
#: block ternary): a resume of such a run compares against these
ADDED_LATER = {"batch_tokens": 0, "long_length": 0, "long_share": 0.1, "mix": "classic", "exclude_sources": "",
               "data_share": 1.0, "ternary_config.int8_modules": None, "int8_blocks": 0,
               "ternary_config.int4_modules": None, "int4_blocks": 0,
               "int4_last_blocks": 0, "int_blocks_qat": False, "ternary_config.embedding_group_size": 32}
#: the smallest allowed value of the numeric settings (``None`` always allowed where the type says so)
MINIMUM = {"max_steps": 1, "batch_size": 1, "gradient_accumulation_steps": 1, "max_length": 1, "bank_size": 1,
           "save_every": 1, "keep_checkpoints": 1, "log_every": 1, "num_threads": 1, "max_texts": 1,
           "eval_limit": 1, "eval_every": 0, "batch_tokens": 0, "long_length": 0, "learning_rate": 0.0,
           "weight_decay": 0.0, "warmup_ratio": 0.0, "int8_blocks": 0, "int4_blocks": 0, "int4_last_blocks": 0,
           "similarity_temperature": 0.0, "teacher_forcing": 0.0, "teacher_cache_gb": 0.0, "max_minutes": 0.0,
           **dict.fromkeys(LOSS_WEIGHTS, 0.0)}


def _field(default: Any, help: str, *, aliases: list[str] | None = None) -> Any:
    """A field whose ``help`` (and historical flag ``aliases``) ``HfArgumentParser`` turns into its flag."""
    metadata: dict[str, Any] = {"help": help}
    if aliases:
        metadata["aliases"] = aliases
    return field(default=default, metadata=metadata)


def _weight(default: float, what: str) -> Any:
    return _field(default, f"loss weight (0: off) of {what}")


@dataclass
class DistillConfig:
    """Hyper-parameters of a distillation run; each field's ``help`` metadata documents it.

    The defaults are the measured recipe for all-MiniLM-L6-v2 (benchmarks/README.md, distillation
    section). The run stops at the first of ``max_steps`` / ``max_minutes`` (training time, periodic
    evaluation not counted, resumed sessions added up), and the learning rate decays along whichever
    runs out first.
    """

    max_steps: int = _field(2000, "optimizer steps (the run stops at the first of this and --minutes)",
                            aliases=["--steps"])
    batch_size: int = _field(32, "texts per step and process")
    learning_rate: float = _field(5e-4, "peak learning rate (linear warm-up, then cosine decay to 0)",
                                  aliases=["--lr"])
    weight_decay: float = _field(0.0, "AdamW weight decay")
    warmup_ratio: float = _field(0.05, "share of the run (steps or time budget) spent warming up")
    gradient_accumulation_steps: int = _field(1, "batches per optimizer step", aliases=["--grad-accum"])
    max_length: int = _field(64, "training texts are truncated to this many tokens: the bundled corpus is mostly "
                             "short sentences, so a shorter length buys more steps per minute")
    batch_tokens: int = _field(0, "token budget of a batch (rows x its longest text, at most --batch-size rows): "
                               "long texts come in batches of fewer rows, so a long --max-length costs about what "
                               "short texts cost per step; 0: always --batch-size rows")
    long_length: int | None = _field(None, "also train on the texts longer than --max-length cut at this many tokens, "
                                     "in --long-share of the steps, so the student learns the positions it will "
                                     "encode beyond --max-length; default: the teacher's max_seq_length; 0: off")
    long_share: float = _field(0.1, "share of the steps that train on long texts (see --long-length); a long batch "
                               "holds at most --batch-tokens (else --batch-size x --max-length) padded tokens, so "
                               "it costs about what a short one does")
    mix: Literal["classic", "broad"] = _field(
        "classic", "the bundled corpus: classic (news, Reuters, tweets, movie reviews, NYT) or broad (classic plus "
        "product reviews, dictionary glosses, quotations, literature, speeches, dialogue)")
    exclude_sources: str = _field("", "bundled sources left out (comma list, e.g. 20ng,r52): measures the student "
                                  "on a domain it never saw")
    data_share: float = _field(1.0, "share of the training texts taken from --data; below 1 mixes them with the "
                               "bundled corpus (--mix) so the student also keeps the rest")
    hidden_mse: float = _weight(1.0, "last-hidden-state MSE (real tokens only, unless --no-mask-padding)")
    pooled_cosine: float = _weight(1.0, "1 - cosine between pooled sentence embeddings")
    pooled_mse: float = _weight(0.0, "pooled-embedding MSE (keeps their norm)")
    layer_mse: float = _weight(0.0, "MSE averaged over every intermediate hidden state")
    attention_kl: float = _weight(0.0, "KL(teacher || student) of the attention distributions")
    similarity: float = _weight(1.0, "in-batch cosine-similarity-matrix matching")
    similarity_mode: Literal["mse", "kl"] = _field(
        "mse", "how --similarity compares the matrices: off-diagonal MSE, or KL of row-wise softmaxes")
    similarity_temperature: float = _field(0.1, "softmax temperature of --similarity-mode kl")
    bank_similarity: float = _weight(0.0, "similarities to a bank of the teacher's embeddings of earlier texts")
    bank_size: int = _field(4096, "teacher embeddings of earlier batches that --bank-similarity compares against")
    teacher_forcing: float = _field(0.0, "fraction of the run that trains each layer on the teacher's input to it "
                                    "(layer-wise reconstruction) before the end-to-end losses; 0: off")
    mask_padding: bool = _field(True, "losses over real tokens only (--no-mask-padding: the paper's unmasked MSE)")
    teacher_cache_gb: float = _field(4.0, "memory for the teacher's outputs, so later epochs skip its forward "
                                     "(0: off)")
    int8_blocks: int = _field(0, "the last N encoder blocks keep int8 weights instead of ternary ones, for "
                              "4x those blocks' ternary bytes; 0: none")
    int4_blocks: int | None = _field(None, "the first N encoder blocks keep int4 weights instead of ternary ones, "
                                     "for 2x those blocks' ternary bytes: ternary lower blocks cost the rest of the "
                                     "network the most quality on unseen domains; None (the default): the lower half "
                                     "(with --int4-last-blocks 1, all-MiniLM-L6-v2 keeps blocks 0-2 and 5 in int4, "
                                     "0.121x the teacher instead of 0.102x all ternary); 0: none")
    int4_last_blocks: int = _field(1, "the last N encoder blocks keep int4 weights (as --int4-blocks; "
                                   "--int8-blocks takes precedence where both name a block)")
    int_blocks_qat: bool = _field(True, "the int8 / int4 layers (--int8-blocks, --int4-blocks, --int8, --int4) train "
                                  "through their rounding (quantization-aware: int weights and int8 activations in "
                                  "the forward, a straight-through gradient) instead of in float and rounded only "
                                  "when finalized (--float-int-blocks)")
    int8_grad_input: bool = _field(True, "each ternary layer's input gradient on the int8 kernel "
                                   "(--float-grad-input: float32)")
    seed: int = _field(0, "seed of the batch order, initialisation and sampling")
    save_every: int = _field(100, "checkpoint every N steps (a killed run resumes from the newest)")
    keep_checkpoints: int = _field(2, "checkpoints kept in the work dir")
    log_every: int = _field(10, "write a metrics row every N steps")
    mixed_precision: Literal["no", "fp16", "bf16"] = _field("no", "Accelerate mixed precision")
    optimizer: Literal["adamw", "adamw8bit"] = _field("adamw", "optimizer (adamw8bit needs bitsandbytes)")
    num_threads: int | None = _field(None, "torch threads (default: torch's choice)")
    max_texts: int | None = _field(None, "at most this many texts: a prefix of the bundled corpus's round robin (every "
                                    "source keeps its share), or a sample of --data (when mixing: of the bundled part)")
    max_minutes: float | None = _field(None, "time budget: stop (learning rate annealed) and finalize after this "
                                       "many minutes of training", aliases=["--minutes"])
    eval_every: int = _field(0, "evaluate the student against the teacher every N steps (0: off); see --eval-tasks")
    eval_tasks: str = _field("teacher-agreement", "evaluation tasks for --eval-every (comma list)")
    eval_limit: int | None = _field(200, "texts per split for --eval-every")
    report_to: Literal["csv", "tensorboard"] = _field(
        "csv", "metrics.csv always; tensorboard adds event files in the work dir")

    def long_views_length(self, teacher_max_length: int | None) -> int:
        """The length long views are cut at for a teacher encoding up to ``teacher_max_length`` tokens
        (``long_length``, or the teacher's limit when it is None); 0 when there are none to train."""
        length = self.long_length if self.long_length is not None else (teacher_max_length or 0)
        return length if length > self.max_length else 0

    @property
    def excluded_sources(self) -> list[str]:
        """``exclude_sources`` as a list of names."""
        return [name for name in self.exclude_sources.replace(",", " ").split() if name]

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            choices = field_choices(f.name)
            if choices is not None and value not in choices:
                raise InvalidInputError(f"DistillConfig: {f.name}={value!r}; choose one of {list(choices)}")
            minimum = MINIMUM.get(f.name)
            if minimum is not None and value is not None and not value >= minimum:
                raise InvalidInputError(f"DistillConfig: {f.name}={value!r} must be >= {minimum}")
        if sum(getattr(self, name) for name in LOSS_WEIGHTS) == 0:
            raise InvalidInputError("DistillConfig: every loss weight is 0; switch at least one loss on")
        if not 0 < self.data_share <= 1:
            raise InvalidInputError(f"DistillConfig: data_share={self.data_share!r} is the share of the training "
                                    "texts taken from --data; choose 0 < data_share <= 1 (1: --data only)")
        if self.long_length and self.long_length <= self.max_length:
            raise InvalidInputError(f"DistillConfig: long_length={self.long_length!r} must exceed max_length="
                                    f"{self.max_length!r} (the long texts are cut there), or be 0 (off) or None "
                                    "(the teacher's max_seq_length)")
        if not 0 < self.long_share < 1:
            raise InvalidInputError(f"DistillConfig: long_share={self.long_share!r} is the share of the steps that "
                                    "train on long texts; choose 0 < long_share < 1")
        if not self.teacher_forcing < 1.0:
            raise InvalidInputError(f"DistillConfig: teacher_forcing={self.teacher_forcing!r} is the fraction of "
                                    "the run trained layer by layer; choose 0 <= teacher_forcing < 1 (0: off)")


def field_choices(name: str) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal``-typed :class:`DistillConfig` field, else ``None``."""
    return _choices().get(name)


@functools.cache
def _choices() -> dict[str, tuple[Any, ...]]:
    hints = typing.get_type_hints(DistillConfig)
    return {name: typing.get_args(hint) for name, hint in hints.items() if typing.get_origin(hint) is Literal}


@dataclass
class DistillResult:
    """Where the run ended up and what it cost.

    ``seconds`` is training time summed over every session of a resumed run (the time a
    ``max_minutes`` budget counts; evaluation excluded); ``session_seconds`` the part of it this call
    trained. ``already_finished`` is set when the call found the run finished and its output in place,
    and left both untouched.
    """

    output_dir: str
    steps: int
    seconds: float
    final_loss: float
    losses: list[dict[str, float]] = field(default_factory=list)
    session_seconds: float = 0.0
    already_finished: bool = False
