"""Image distillation: a float ViT teaches its own ternary copy, on unlabeled images.

The same machinery as for text (:mod:`ternary_hf.train`): the student is
:func:`~ternary_hf.train.student.build_student` of the teacher, the loss is
:func:`~ternary_hf.train.losses.distillation_loss`, the one training loop
(:func:`ternary_hf.train.loop.train`) runs it with checkpoints and exact resume, and the result is
packed through the quantizer into a ``save_pretrained`` folder with its ``distillation.json``.
What is particular to images: the batches are ``pixel_values``, every token is real (no padding),
and the pooled terms read the CLS token (``pooling="cls"``) or every token (``"mean"``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError, MissingInputError
from ..integrations.config import TernaryConfig
from ..train.config import DistillConfig
from ..train.data import batch_order
from ..train.finalize import DISTILLATION_INFO, write_packed_folder
from ..train.loop import make_accelerator, open_run, train
from ..train.losses import distillation_loss
from ..train.run_settings import run_settings
from ..train.student import build_student, disable_dropout, to_float_model
from ..utils.io import check_output_folder
from ..utils.threads import torch_threads
from .data import to_pixel_values
from .embed import check_pooling

__all__ = ["VisionDistillResult", "distill_vision", "finalize_vision"]

_WEIGHTS = ("hidden_mse", "pooled_cosine", "pooled_mse", "layer_mse", "similarity")


@dataclass
class VisionDistillResult:
    """Where the run ended up: ``output_dir`` once finalized (else the work dir), steps, training seconds."""

    output_dir: str
    steps: int
    seconds: float
    final_loss: float
    losses: list[dict[str, float]] = field(default_factory=list)
    #: the trained student (latent weights behind the ternary forward); ``None`` if another process
    #: finalized, or if the run had finished before this call
    student: nn.Module | None = field(default=None, repr=False)
    already_finished: bool = False


def finalize_vision(student: nn.Module, teacher_dir: str | os.PathLike, output_dir: str | os.PathLike,
                    config: TernaryConfig, info: dict[str, Any] | None = None, overwrite: bool = True) -> str:
    """Pack a trained student into a ternary ``save_pretrained`` folder at ``output_dir``.

    As :func:`ternary_hf.train.finalize.finalize` does for text: the latent weights become a float
    checkpoint of the teacher's architecture, loaded back through the quantizer
    (``from_pretrained(..., quantization_config=config)``); built aside and swapped in whole.
    """
    from transformers import AutoModel

    float_model = AutoModel.from_pretrained(str(teacher_dir))
    float_model.load_state_dict(to_float_model(student).state_dict())

    def pack(float_dir: Path, out: Path) -> None:
        AutoModel.from_pretrained(str(float_dir), quantization_config=config).save_pretrained(out)

    return write_packed_folder(output_dir, float_model.save_pretrained, pack, info, overwrite=overwrite)


class _Pixels(torch.utils.data.Dataset):
    def __init__(self, pixels: torch.Tensor):
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[i]}


class ImageLoss:
    """The loss of one image batch: all tokens in the hidden-state terms, the pooled tokens in the rest."""

    def __init__(self, cfg: DistillConfig, teacher: nn.Module, pooling: str):
        self.cfg, self.teacher, self.pooling = cfg, teacher, pooling

    def __call__(self, student: nn.Module, batch: dict[str, torch.Tensor], progress: float):
        pixels = batch["pixel_values"]
        hidden = bool(self.cfg.layer_mse)
        with torch.no_grad():
            teacher_out = self.teacher(pixel_values=pixels, output_hidden_states=hidden)
        student_out = student(pixel_values=pixels, output_hidden_states=hidden)
        mask = torch.ones(pixels.shape[0], teacher_out.last_hidden_state.shape[1], dtype=torch.long,
                          device=pixels.device)
        if self.pooling == "cls":
            mask[:, 1:] = 0  # pooled terms on the CLS token; hidden_mse (mask_padding=False) covers every token
        return distillation_loss(student_out, teacher_out, mask, self.cfg)


def _fingerprint(pixels: torch.Tensor) -> str:
    return hashlib.sha256(pixels.contiguous().numpy().tobytes()).hexdigest()[:16]


def _teacher_and_pixels(teacher_dir: str | os.PathLike, images: Any) -> tuple[nn.Module, torch.Tensor]:
    """The frozen float teacher, and the training images as its ``pixel_values``."""
    from transformers import AutoModel

    try:
        teacher = AutoModel.from_pretrained(str(teacher_dir))
    except (OSError, ValueError) as exc:  # no such folder, or not a model
        why = " ".join(str(exc).split()).rstrip(".")
        raise MissingInputError(f"cannot load the teacher {teacher_dir}: {why}. Give a float ViT folder "
                                "(train_vit_teacher makes one)") from None
    if getattr(teacher, "is_quantized", False) or hasattr(teacher.config, "quantization_config"):
        raise InvalidInputError(f"{teacher_dir} is already quantized; distill from the full-precision model")
    pixels = to_pixel_values(images, teacher.config)
    if len(pixels) < 2:
        raise InvalidInputError(f"distillation needs at least 2 images, got {len(pixels)}")
    return teacher.eval().requires_grad_(False), pixels


def _config(steps: int, batch_size: int, lr: float, loss_weights: dict[str, float] | None, **kwargs: Any
            ) -> DistillConfig:
    unknown = set(loss_weights or {}) - set(_WEIGHTS)
    if unknown:
        raise InvalidInputError(f"loss_weights: unknown {sorted(unknown)}; choose from {list(_WEIGHTS)}")
    weights = {"hidden_mse": 1.0, "pooled_cosine": 1.0, "similarity": 1.0, **(loss_weights or {})}
    # every image token is real: no padding mask, and no teacher cache (it keeps real tokens only)
    return DistillConfig(max_steps=steps, batch_size=batch_size, learning_rate=lr, mask_padding=False,
                         teacher_cache_gb=0.0, log_every=1, **weights, **kwargs)


def distill_vision(
    teacher_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    images: Any,
    ternary_config: TernaryConfig | None = None,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 5e-4,
    *,
    pooling: str = "cls",
    loss_weights: dict[str, float] | None = None,
    warmup_ratio: float = 0.05,
    seed: int = 0,
    save_every: int = 100,
    work_dir: str | os.PathLike | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    num_threads: int | None = None,
    show_progress_bar: bool = True,
    overwrite: bool = False,
    fresh: bool = False,
) -> VisionDistillResult:
    """Distill a float ViT folder into a packed ternary one, on unlabeled ``images``.

    Args:
        teacher_dir: a float ViT folder (:func:`~ternary_hf.vision.teacher.train_vit_teacher` output or
            any pretrained ViT).
        output_dir: where the packed ternary folder goes.
        images: unlabeled training images (see :mod:`ternary_hf.vision.data`).
        batch_size: images per step and process.
        loss_weights: overrides of the :class:`~ternary_hf.train.config.DistillConfig` loss weights
            (``hidden_mse``, ``pooled_cosine``, ``pooled_mse``, ``layer_mse``, ``similarity``).
        save_every: checkpoint every so many steps into ``work_dir`` (default ``<output_dir>.work``); a
            rerun resumes from the newest one with the same batches, and refuses checkpoints of a run
            with other settings unless ``fresh``.
        stop_after: stop after this many steps (checkpointed, not finalized): for tests and split runs.
        overwrite: replace ``output_dir`` even if it is not an earlier output of this function (checked
            before training).

    Returns:
        :class:`VisionDistillResult` with the trained student.
    """
    from accelerate.utils import set_seed

    check_pooling(pooling)
    cfg = _config(steps, batch_size, lr, loss_weights, warmup_ratio=warmup_ratio, seed=seed, save_every=save_every,
                  num_threads=num_threads)
    tcfg = ternary_config or TernaryConfig()
    output_dir = check_output_folder(output_dir, marker=DISTILLATION_INFO, overwrite=overwrite)
    work_dir = Path(work_dir) if work_dir is not None else output_dir.with_name(output_dir.name + ".work")
    with torch_threads(num_threads):
        set_seed(seed)
        teacher, pixels = _teacher_and_pixels(teacher_dir, images)
        accelerator = make_accelerator(cfg, work_dir)
        settings = run_settings(cfg, teacher=os.path.abspath(teacher_dir), ternary_config=tcfg.to_dict(),
                                data={"count": len(pixels), "sha256": _fingerprint(pixels)},
                                processes=accelerator.num_processes, pooling=pooling)
        run = open_run(accelerator, work_dir, settings, fresh=fresh or not resume, hint="pass fresh=True to start over")
        if (info := run.finished_output(cfg, output_dir)) is not None:
            loss = info.get("final_loss")
            return VisionDistillResult(str(output_dir), info["steps"], float(info.get("seconds") or 0.0),
                                       float("nan") if loss is None else float(loss), already_finished=True)
        run.begin(accelerator, settings, cfg)
        student = disable_dropout(build_student(teacher, tcfg).train())
        # The batches of every step are fixed by the seed alone, so a resumed run sees the same batches.
        order = batch_order([0] * len(pixels), batch_size, steps * accelerator.num_processes, seed)
        loader = torch.utils.data.DataLoader(_Pixels(pixels), batch_sampler=order)
        teacher.to(accelerator.device)
        result = train(accelerator, cfg, student, loader, ImageLoss(cfg, teacher, pooling), work_dir=work_dir,
                       resume_from=run.latest, stop_after=stop_after, show_progress_bar=show_progress_bar,
                       desc="distilling ViT")
        if result.finished and accelerator.is_main_process:
            info = {"teacher": str(teacher_dir), "steps": result.steps, "seconds": result.seconds,
                    "final_loss": result.final_loss, "pooling": pooling, "batch_size": batch_size, "learning_rate": lr,
                    "loss_weights": {k: getattr(cfg, k) for k in _WEIGHTS}, "num_images": len(pixels),
                    "ternary_config": tcfg.to_dict(), "run_id": run.record.run_id, "sessions": run.sessions}
            finalize_vision(result.model, teacher_dir, output_dir, tcfg, info=info, overwrite=overwrite)
        accelerator.wait_for_everyone()
        return VisionDistillResult(str(output_dir if result.finished else work_dir), result.steps, result.seconds,
                                   result.final_loss, result.losses, result.model)
