"""The float ViT teacher: no pretrained image model ships in any package here, so one is trained.

A small ``ViTForImageClassification`` is trained on CPU with :class:`transformers.Trainer` (no hub, no
reporting), and its ``ViTModel`` backbone is saved with ``save_pretrained``: then
``AutoModel.from_pretrained(dir, quantization_config=TernaryConfig())`` ternarizes it exactly like a
text encoder (and a real pretrained ViT folder works the same way). The classification head is not
kept: an embedding model needs none.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError
from ..utils.io import atomic_write_json, staged_folder
from ..utils.threads import torch_threads
from .data import ImageSplit, as_split, to_pixel_values

__all__ = ["TEACHER_INFO", "TeacherResult", "train_vit_teacher"]

#: written into the teacher folder; also what marks a folder a re-run may replace
TEACHER_INFO = "teacher_training.json"


@dataclass
class TeacherResult:
    """The saved backbone's folder and how its classifier did (accuracy on train and test images)."""

    output_dir: str
    train_accuracy: float
    test_accuracy: float | None
    seconds: float
    epochs: int
    config: dict[str, Any] = field(default_factory=dict)


class _LabeledPixels(torch.utils.data.Dataset):
    def __init__(self, pixels: torch.Tensor, labels: np.ndarray):
        self.pixels, self.labels = pixels, torch.as_tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


class _RandomFlips:
    """Batches with half of the training images mirrored left-right: light augmentation."""

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([item["pixel_values"] for item in items])
        flip = torch.rand(len(items)) < 0.5
        pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
        return {"pixel_values": pixels, "labels": torch.stack([item["labels"] for item in items])}


def _vit_config(train: ImageSplit, hidden_size: int, num_layers: int, num_heads: int,
                intermediate_size: int | None, patch_size: int | None):
    from transformers import ViTConfig

    if train.images.ndim not in (3, 4):
        raise InvalidInputError(f"training images must be (N, H, W) or (N, H, W, C), got {train.images.shape}")
    image_size = int(train.images.shape[1])
    patch = patch_size or max(image_size // 4, 1)
    if image_size % patch:
        raise InvalidInputError(f"patch_size={patch} does not divide image_size={image_size}")
    channels = 1 if train.images.ndim == 3 else int(train.images.shape[-1])
    return ViTConfig(image_size=image_size, patch_size=patch, num_channels=channels, hidden_size=hidden_size,
                     num_hidden_layers=num_layers, num_attention_heads=num_heads,
                     intermediate_size=intermediate_size or 2 * hidden_size, pooler_output_size=hidden_size,
                     num_labels=int(train.labels.max()) + 1, encoder_stride=patch)


def _fit(model, train: tuple[torch.Tensor, np.ndarray], test: tuple[torch.Tensor, np.ndarray] | None, *,
         epochs: int, batch_size: int, learning_rate: float, weight_decay: float, seed: int,
         show_progress_bar: bool) -> tuple[float, float, float | None]:
    """Train ``model`` with :class:`transformers.Trainer` on CPU; ``(seconds, train accuracy, test accuracy)``
    (train accuracy on the first 5,000 training images)."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as scratch:  # the Trainer wants an output_dir; nothing is saved there
        args = TrainingArguments(
            output_dir=scratch, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=512, learning_rate=learning_rate, weight_decay=weight_decay,
            warmup_steps=0.05, lr_scheduler_type="cosine", max_grad_norm=1.0, optim="adamw_torch", seed=seed,
            data_seed=seed, use_cpu=True, report_to="none", push_to_hub=False, save_strategy="no",
            logging_strategy="no", disable_tqdm=not show_progress_bar, remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=_LabeledPixels(*train), data_collator=_RandomFlips())
        started = time.time()
        trainer.train()
        seconds = time.time() - started
        train_acc = _accuracy(trainer, train[0][:5000], train[1][:5000])
        return seconds, train_acc, _accuracy(trainer, *test) if test is not None else None


def _accuracy(trainer, pixels: torch.Tensor, labels: np.ndarray) -> float:
    logits = trainer.predict(_LabeledPixels(pixels, labels)).predictions
    return float((np.asarray(logits).argmax(-1) == labels).mean()) if len(labels) else 0.0


def _save_backbone(model, config, output_dir: Path, seed: int) -> None:
    """The embedding model is the backbone. A ``ViTModel`` with its (unused, seeded) pooler is saved whole
    so ``AutoModel.from_pretrained`` finds every weight and never initialises anything at random on load."""
    from transformers import ViTModel

    torch.manual_seed(seed)
    backbone = ViTModel(config)
    missing, unexpected = backbone.load_state_dict(model.vit.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"backbone transfer failed: missing {missing}, unexpected {unexpected}")
    backbone.config.architectures = ["ViTModel"]
    backbone.save_pretrained(output_dir)


def train_vit_teacher(
    dataset: str | ImageSplit | tuple = "fashion-mnist",
    output_dir: str | os.PathLike = "vit-teacher",
    *,
    epochs: int = 5,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.05,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    patch_size: int | None = None,
    limit: int | None = None,
    eval_dataset: str | ImageSplit | tuple | None = None,
    seed: int = 0,
    num_threads: int | None = None,
    show_progress_bar: bool = True,
    overwrite: bool = False,
) -> TeacherResult:
    """Train a small ``ViTForImageClassification`` on CPU and save its ``ViTModel`` backbone.

    Args:
        dataset: a name for :func:`~ternary_hf.vision.data.load_image_dataset` (its train split is used)
            or ``(images, labels)``.
        output_dir: where the backbone goes (``save_pretrained``: ``AutoModel.from_pretrained(output_dir)``
            loads it), written whole; an existing folder is replaced only if it is an earlier teacher
            (it has a ``teacher_training.json``) or with ``overwrite``.
        patch_size: default ``image_size // 4`` (7 for 28x28, 2 for 8x8: 16 patches + CLS).
        intermediate_size: default ``2 * hidden_size``.
        limit: train on a seeded subset of this many images.
        eval_dataset: images to report the classifier's test accuracy on (default: the test split of a
            named ``dataset``; none for arrays).

    Returns:
        :class:`TeacherResult` (train and test accuracy of the classifier, wall time); also written to
        ``output_dir/teacher_training.json``.
    """
    from transformers import ViTForImageClassification

    with torch_threads(num_threads):
        train = as_split(dataset, "train", limit, seed)
        if eval_dataset is None and isinstance(dataset, (str, os.PathLike)):
            eval_dataset = dataset
        test = as_split(eval_dataset, "test", None, seed) if eval_dataset is not None else None
        config = _vit_config(train, hidden_size, num_layers, num_heads, intermediate_size, patch_size)
        with staged_folder(output_dir, marker=TEACHER_INFO, overwrite=overwrite,
                           hint="pass overwrite=True to replace it") as staging:
            torch.manual_seed(seed)
            model = ViTForImageClassification(config)
            seconds, train_acc, test_acc = _fit(
                model, (to_pixel_values(train.images, config), train.labels),
                (to_pixel_values(test.images, config), test.labels) if test is not None else None,
                epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
                seed=seed, show_progress_bar=show_progress_bar)
            _save_backbone(model, config, staging, seed)
            result = TeacherResult(str(output_dir), train_acc, test_acc, seconds, epochs,
                                   {"hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads,
                                    "patch_size": config.patch_size, "image_size": config.image_size,
                                    "train_images": len(train.labels), "batch_size": batch_size,
                                    "learning_rate": learning_rate})
            atomic_write_json(staging / TEACHER_INFO, asdict(result))
        return result
