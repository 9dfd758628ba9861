"""Image embeddings: a ternary ViT, distilled from a float ViT and evaluated on real images.

Why this exists: the founding paper (arXiv 2411.15438) ternarizes vision embedding models too, but no
pretrained image model ships in any package this project can install. So the float teacher is trained
here (a small ``ViTForImageClassification`` on Fashion-MNIST, or on scikit-learn's 8x8 digits for fast
tests), and the rest is the same machinery as for text:

* :func:`load_image_dataset` -- real image data from installed packages, never from a hub;
* :func:`train_vit_teacher` -- the float teacher; its ``ViTModel`` backbone is saved with
  ``save_pretrained``, so ``AutoModel.from_pretrained(dir, quantization_config=TernaryConfig())``
  ternarizes it exactly like a text encoder (and a real pretrained ViT folder works the same way);
* :func:`embed_images` -- L2-normalised CLS or mean-pooled embeddings from any ViT-like model, float,
  ternary on the fly, or a saved ternary folder;
* :func:`distill_vision` -- the self-taught distillation of :mod:`ternary_hf.distill` for pixel inputs:
  the student is :func:`ternary_hf.training.build_student` of the teacher, the loss is
  :func:`ternary_hf.distill.distillation_loss`, the loop runs on Accelerate and resumes from
  ``save_state`` checkpoints, and the result is packed through the quantizer;
* :func:`evaluate_vision` -- a linear probe (logistic regression, train -> test split) and
  image-to-image retrieval P@10 with FAISS inner product, with retention against a teacher.

Images are given as arrays: ``uint8`` ``(N, H, W)`` / ``(N, H, W, C)`` (scaled to [0, 1]), float
``(N, H, W)`` / ``(N, H, W, C)`` already in [0, 1], or float ``(N, C, H, W)`` taken as ready
``pixel_values``. The first two are normalised with mean 0.5 / std 0.5 (the ViT image processor's
default), repeated or averaged to the model's channel count and resized to its ``image_size``.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..integrations.config import TernaryConfig
from ..train.loop import (
    DISTILLATION_INFO,
    DistillConfig,
    distillation_loss,
    resume_latest,
    save_checkpoint,
    warmup_cosine,
)
from ..train.student import build_student, to_float_model
from ..utils.io import check_output_folder, replace_folder
from ..utils.progress import bar_switch

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "ImageSplit",
    "TeacherResult",
    "VisionDistillResult",
    "load_image_dataset",
    "to_pixel_values",
    "train_vit_teacher",
    "embed_images",
    "distill_vision",
    "evaluate_vision",
    "finalize_vision",
    "model_bytes",
    "time_embedding",
]

#: Image data sets :func:`load_image_dataset` knows by name.
DATASETS = ("digits", "fashion-mnist")
#: Where the Debian package ``dataset-fashion-mnist`` installs the IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_DIGITS_TEST_FRACTION = 0.25
_DIGITS_SPLIT_SEED = 0  # the digits split is fixed: the same test images in every run
_PIXEL_MEAN, _PIXEL_STD = 0.5, 0.5


# ----------------------------------------------------------------------------------------------- data
class ImageSplit(NamedTuple):
    """One split of an image data set: ``images`` uint8 ``(N, H, W)`` and ``labels`` int64 ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic, dims as big-endian uint32, then uint8 data), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an uint8 IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(bytearray(data), dtype=np.uint8, offset=4 + 4 * ndim)  # writable, for torch
    if array.size != math.prod(dims):
        raise ValueError(f"{path} is truncated: expected {math.prod(dims)} values, found {array.size}")
    return array.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _load_fashion_mnist(split: str, data_dir: str | os.PathLike | None) -> ImageSplit:
    directory = Path(data_dir) if data_dir is not None else Path(FASHION_MNIST_DIR)
    images_stem, labels_stem = _FASHION_FILES[split]
    images_path, labels_path = _find_idx(directory, images_stem), _find_idx(directory, labels_stem)
    if images_path is None or labels_path is None:
        hint = ("install the Debian package with `apt-get update && apt-get install -y dataset-fashion-mnist` "
                f"(it puts the files under {FASHION_MNIST_DIR})")
        if data_dir is not None:
            hint = "pass the folder holding the four Fashion-MNIST IDX files (.gz or not), or " + hint
        raise FileNotFoundError(f"Fashion-MNIST {split} files {images_stem}[.gz] / {labels_stem}[.gz] not found "
                                f"in {directory}: {hint}")
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST files in {directory} do not match: images {images.shape}, "
                         f"labels {labels.shape}")
    return ImageSplit(np.ascontiguousarray(images), labels.astype(np.int64))


def _load_digits(split: str) -> ImageSplit:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    labels = digits.target.astype(np.int64)
    # a fixed stratified split: every class has the same share of test images in every run
    rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[rng.choice(idx, size=round(len(idx) * _DIGITS_TEST_FRACTION), replace=False)] = True
    keep = test if split == "test" else ~test
    return ImageSplit(np.ascontiguousarray(images[keep]), labels[keep])


def load_image_dataset(name: str, split: str = "train", limit: int | None = None, seed: int = 0,
                       data_dir: str | os.PathLike | None = None) -> ImageSplit:
    """Load a real image data set from installed packages.

    Args:
        name: ``"digits"`` (scikit-learn's 1,797 8x8 digits; a fixed stratified 75/25 split, for fast
            tests) or ``"fashion-mnist"`` (70,000 28x28 images in 10 classes, from the Debian package
            ``dataset-fashion-mnist``). An existing directory is read as Fashion-MNIST-format IDX files.
        split: ``"train"`` or ``"test"``.
        limit: keep at most this many images, a seeded random subset (in the original order).
        seed: the seed of that subset.
        data_dir: the folder holding the Fashion-MNIST IDX files (default :data:`FASHION_MNIST_DIR`).

    Returns:
        :class:`ImageSplit` ``(images, labels)``: uint8 ``(N, H, W)`` and int64 ``(N,)``.

    Raises:
        ValueError: unknown name or split (naming the allowed ones).
        FileNotFoundError: Fashion-MNIST files missing (saying which package to install).
    """
    if split not in _FASHION_FILES:
        raise ValueError(f"split={split!r} is not allowed; choose one of {list(_FASHION_FILES)}")
    if name == "digits":
        data = _load_digits(split)
    elif name == "fashion-mnist":
        data = _load_fashion_mnist(split, data_dir)
    elif isinstance(name, (str, os.PathLike)) and Path(name).is_dir():
        data = _load_fashion_mnist(split, name)
    else:
        raise ValueError(f"unknown image dataset {name!r}; choose one of {list(DATASETS)} "
                         "or a folder of Fashion-MNIST-format IDX files")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        if limit < len(data.labels):
            keep = np.sort(np.random.default_rng(seed).choice(len(data.labels), size=limit, replace=False))
            data = ImageSplit(data.images[keep], data.labels[keep])
    return data


def _as_split(dataset: str | ImageSplit | tuple, split: str, limit: int | None, seed: int) -> ImageSplit:
    if isinstance(dataset, (str, os.PathLike)):
        return load_image_dataset(str(dataset), split, limit=limit, seed=seed)
    images, labels = dataset
    return ImageSplit(np.asarray(images), np.asarray(labels, dtype=np.int64))


# ----------------------------------------------------------------------------------------------- pixels
def to_pixel_values(images: Any, config: Any) -> torch.Tensor:
    """Images (see the module docstring for the accepted forms) -> float32 ``pixel_values`` ``(N, C, S, S)``.

    ``config`` is the model's config (``num_channels``, ``image_size``).
    """
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    channels = int(getattr(config, "num_channels", 3))
    size = getattr(config, "image_size", None)
    size = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size)) if size else None
    if x.ndim == 4 and x.is_floating_point() and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        pixels = x.to(torch.float32)  # ready pixel_values (N, C, H, W)
    else:
        if x.ndim == 3:
            x = x.unsqueeze(-1)
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"images of shape {tuple(x.shape)} not understood: give (N, H, W) or (N, H, W, C) "
                             "arrays (uint8 0-255 or float 0-1), or float pixel_values (N, C, H, W)")
        scale = 255.0 if not x.is_floating_point() else 1.0
        pixels = x.to(torch.float32).div(scale).permute(0, 3, 1, 2)
        pixels = (pixels - _PIXEL_MEAN) / _PIXEL_STD
    if pixels.shape[1] != channels:
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, channels, -1, -1)
        elif channels == 1:
            pixels = pixels.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"images have {pixels.shape[1]} channels but the model expects {channels}")
    if size is not None and tuple(pixels.shape[-2:]) != size:
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
    return pixels.contiguous()


# ----------------------------------------------------------------------------------------------- teacher
@dataclass
class TeacherResult:
    output_dir: str
    train_accuracy: float
    test_accuracy: float | None
    seconds: float
    epochs: int
    config: dict[str, Any] = field(default_factory=dict)


def _classifier_accuracy(model: nn.Module, pixels: torch.Tensor, labels: np.ndarray, batch_size: int) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            logits = model(pixel_values=pixels[start:start + batch_size]).logits
            correct += int((logits.argmax(-1).numpy() == labels[start:start + batch_size]).sum())
    return correct / max(len(labels), 1)


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
) -> TeacherResult:
    """Train a small ``ViTForImageClassification`` on CPU and save its ``ViTModel`` backbone.

    Args:
        dataset: a name for :func:`load_image_dataset` (its train split is used) or ``(images, labels)``.
        output_dir: where the backbone goes (``save_pretrained``: ``AutoModel.from_pretrained(output_dir)``
            loads it; the classification head is not kept, an embedding model needs none).
        patch_size: default ``image_size // 4`` (7 for 28x28, 2 for 8x8: 16 patches + CLS).
        intermediate_size: default ``2 * hidden_size``.
        limit: train on a seeded subset of this many images.
        eval_dataset: images to report the classifier's test accuracy on (default: the test split of a
            named ``dataset``; none for arrays).

    Returns:
        :class:`TeacherResult` (train and test accuracy of the classifier, wall time); also written to
        ``output_dir/teacher_training.json``.
    """
    from tqdm.auto import tqdm
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    if num_threads:
        torch.set_num_threads(num_threads)
    train = _as_split(dataset, "train", limit, seed)
    if eval_dataset is None and isinstance(dataset, (str, os.PathLike)):
        eval_dataset = dataset
    test = _as_split(eval_dataset, "test", None, seed) if eval_dataset is not None else None
    if train.images.ndim not in (3, 4):
        raise ValueError(f"training images must be (N, H, W) or (N, H, W, C), got {train.images.shape}")
    image_size = int(train.images.shape[1])
    patch = patch_size or max(image_size // 4, 1)
    if image_size % patch:
        raise ValueError(f"patch_size={patch} does not divide image_size={image_size}")
    num_labels = int(train.labels.max()) + 1
    channels = 1 if train.images.ndim == 3 else int(train.images.shape[-1])
    config = ViTConfig(image_size=image_size, patch_size=patch, num_channels=channels, hidden_size=hidden_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads,
                       intermediate_size=intermediate_size or 2 * hidden_size, pooler_output_size=hidden_size,
                       num_labels=num_labels, encoder_stride=patch)
    torch.manual_seed(seed)
    model = ViTForImageClassification(config)
    pixels = to_pixel_values(train.images, config)
    labels = torch.as_tensor(train.labels)
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total))
    generator = torch.Generator().manual_seed(seed)
    started = time.time()
    bar = tqdm(total=total, desc="training ViT teacher", unit="step", **bar_switch(show_progress_bar))
    running = None
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch_size):
            idx = order[start:start + batch_size]
            batch = pixels[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5  # light augmentation: horizontal flips
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            loss = model(pixel_values=batch, labels=labels[idx]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            value = float(loss.detach())
            running = value if running is None else 0.95 * running + 0.05 * value
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}")
    bar.close()
    seconds = time.time() - started
    train_acc = _classifier_accuracy(model, pixels[:5000], train.labels[:5000], 512)
    test_acc = (_classifier_accuracy(model, to_pixel_values(test.images, config), test.labels, 512)
                if test is not None else None)

    # The embedding model is the backbone. A ViTModel with its (unused, seeded) pooler is saved whole so
    # AutoModel.from_pretrained finds every weight and never initialises anything at random on load.
    torch.manual_seed(seed)
    backbone = ViTModel(config)
    missing, unexpected = backbone.load_state_dict(model.vit.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"backbone transfer failed: missing {missing}, unexpected {unexpected}")
    output_dir = Path(output_dir)
    backbone.config.architectures = ["ViTModel"]
    backbone.save_pretrained(output_dir)
    result = TeacherResult(str(output_dir), train_acc, test_acc, seconds, epochs,
                           {"hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads,
                            "patch_size": patch, "image_size": image_size, "train_images": len(labels),
                            "batch_size": batch_size, "learning_rate": learning_rate})
    with open(output_dir / "teacher_training.json", "w", encoding="utf-8") as f:
        json.dump(asdict(result), f, indent=2)
    return result


# ----------------------------------------------------------------------------------------------- embeddings
def _load_model(model: Any) -> nn.Module:
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoModel

        return AutoModel.from_pretrained(str(model)).eval()
    return model


def _last_hidden(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values=pixels)
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:  # e.g. a *ForImageClassification model: use its last hidden state
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
    return hidden


def _pool(hidden: torch.Tensor, pooling: str) -> torch.Tensor:
    return hidden[:, 0] if pooling == "cls" else hidden.mean(dim=1)


def embed_images(model: Any, images: Any, batch_size: int = 256, pooling: str = "cls",
                 show_progress_bar: bool | None = None) -> np.ndarray:
    """L2-normalised image embeddings, float32 ``(N, hidden_size)``.

    Args:
        model: a ViT-like model (float, ternary on the fly, a student being trained) or a folder to load
            with ``AutoModel.from_pretrained`` (a saved ternary folder loads as ternary).
        images: see the module docstring (uint8 / float images, or ready ``pixel_values``).
        pooling: ``"cls"`` (the CLS token, what the ViT classifier reads) or ``"mean"`` (all tokens).
        show_progress_bar: default: shown for more than 20 batches.
    """
    from tqdm.auto import tqdm

    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling={pooling!r} is not allowed; choose 'cls' or 'mean'")
    model = _load_model(model)
    was_training = model.training
    model.eval()
    pixels = to_pixel_values(images, model.config)
    n_batches = math.ceil(len(pixels) / batch_size)
    show = n_batches > 20 if show_progress_bar is None else show_progress_bar
    chunks = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(pixels), batch_size), total=n_batches, desc="embedding images",
                          **bar_switch(show)):
            pooled = _pool(_last_hidden(model, pixels[start:start + batch_size]), pooling)
            chunks.append(F.normalize(pooled.float(), dim=-1))
    model.train(was_training)
    if not chunks:
        return np.zeros((0, int(model.config.hidden_size)), dtype=np.float32)
    return np.ascontiguousarray(torch.cat(chunks).numpy(), dtype=np.float32)


# ----------------------------------------------------------------------------------------------- distillation
@dataclass
class VisionDistillResult:
    output_dir: str
    steps: int
    seconds: float
    final_loss: float
    losses: list[dict[str, float]] = field(default_factory=list)
    #: the trained student (latent weights behind the ternary forward); ``None`` if another process finalized
    student: nn.Module | None = field(default=None, repr=False)


def finalize_vision(student: nn.Module, teacher_dir: str | os.PathLike, output_dir: str | os.PathLike,
                    config: TernaryConfig) -> str:
    """Pack a trained student into a ternary ``save_pretrained`` folder at ``output_dir``.

    As :func:`ternary_hf.distill.finalize` does for text: the latent weights become a float checkpoint of
    the teacher's architecture, which is loaded back through the quantizer (``from_pretrained(...,
    quantization_config=config)``), saved to a temporary folder and renamed into place.
    """
    from transformers import AutoModel

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    float_model = AutoModel.from_pretrained(str(teacher_dir))
    float_model.load_state_dict(to_float_model(student).state_dict())
    with tempfile.TemporaryDirectory(dir=output_dir.parent) as tmp:
        float_model.save_pretrained(os.path.join(tmp, "float"))
        packed = AutoModel.from_pretrained(os.path.join(tmp, "float"), quantization_config=config)
        staging = os.path.join(tmp, "packed")
        packed.save_pretrained(staging)
        replace_folder(staging, output_dir)
    return str(output_dir)


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
) -> VisionDistillResult:
    """Distill a float ViT folder into a packed ternary one, on unlabeled ``images``.

    The student is ``build_student(teacher, ternary_config)`` (latent float weights behind the exact
    inference-time ternary forward, straight-through gradients). The loss is
    :func:`ternary_hf.distill.distillation_loss` with ``mask_padding=False``: the hidden-state MSE covers
    every token (an image has no padding), while the pooled terms (``1 - cos`` and in-batch similarity)
    use a pooling mask: the CLS token alone for ``pooling="cls"``, all tokens for ``"mean"``.

    Args:
        teacher_dir: a float ViT folder (``train_vit_teacher`` output or any pretrained ViT).
        output_dir: where the packed ternary folder goes.
        images: unlabeled training images (see the module docstring).
        loss_weights: overrides of :class:`~ternary_hf.distill.DistillConfig` loss weights
            (``hidden_mse``, ``pooled_cosine``, ``pooled_mse``, ``layer_mse``, ``similarity``).
        save_every: checkpoint (Accelerate ``save_state``) every so many steps into ``work_dir``
            (default ``<output_dir>.work``); a rerun resumes from the newest one with the same batches.
        stop_after: stop after this many steps (checkpointed, not finalized): for tests and split runs.
        overwrite: replace ``output_dir`` even if it is not an earlier output of this function (checked
            before training).

    Returns:
        :class:`VisionDistillResult` with the trained student.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import AutoModel

    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling={pooling!r} is not allowed; choose 'cls' or 'mean'")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("save_every", save_every)):
        if int(value) < 1:
            raise ValueError(f"{name}={value!r} must be >= 1")
    cfg = DistillConfig(max_steps=steps, batch_size=batch_size, learning_rate=lr, mask_padding=False,
                        **{"hidden_mse": 1.0, "pooled_cosine": 1.0, "similarity": 1.0, **(loss_weights or {})})
    tcfg = ternary_config or TernaryConfig()
    output_dir = check_output_folder(output_dir, marker=DISTILLATION_INFO, overwrite=overwrite)
    work_dir = Path(work_dir) if work_dir is not None else output_dir.with_name(output_dir.name + ".work")
    if num_threads:
        torch.set_num_threads(num_threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(seed)

    teacher = AutoModel.from_pretrained(str(teacher_dir))
    if getattr(teacher, "is_quantized", False) or hasattr(teacher.config, "quantization_config"):
        raise ValueError(f"{teacher_dir} is already quantized; distill from the full-precision model")
    teacher.eval().requires_grad_(False)
    student = build_student(teacher, tcfg)
    student.train()
    for module in student.modules():  # match a deterministic teacher
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    pixels = to_pixel_values(images, teacher.config)
    if len(pixels) < 2:
        raise ValueError(f"distillation needs at least 2 images, got {len(pixels)}")

    # The batch of every step is fixed by the seed alone, so a resumed run sees the same batches.
    rng = np.random.default_rng(seed)
    per_epoch = max(len(pixels) // batch_size, 1)
    orders = [rng.permutation(len(pixels)) for _ in range(math.ceil(steps / per_epoch))]

    def batch_indices(step: int) -> np.ndarray:
        order = orders[step // per_epoch]
        start = (step % per_epoch) * batch_size
        idx = order[start:start + batch_size]
        return np.array_split(idx, accelerator.num_processes)[accelerator.process_index]

    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    warmup = int(warmup_ratio * steps)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, steps))
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    teacher.to(accelerator.device)

    step, _ = resume_latest(accelerator, work_dir, resume, steps)
    first_step = step
    history: list[dict[str, float]] = []
    last_loss = float("nan")
    started = time.time()
    bar = tqdm(total=steps, initial=step, desc="distilling ViT", unit="step",
               **bar_switch(show_progress_bar and accelerator.is_local_main_process))
    while step < steps and (stop_after is None or step < stop_after):
        batch = pixels[torch.as_tensor(batch_indices(step))].to(accelerator.device)
        with torch.no_grad():
            teacher_out = teacher(pixel_values=batch, output_hidden_states=bool(cfg.layer_mse))
        student_out = student(pixel_values=batch, output_hidden_states=bool(cfg.layer_mse))
        n_tokens = teacher_out.last_hidden_state.shape[1]
        mask = torch.ones(batch.shape[0], n_tokens, dtype=torch.long, device=batch.device)
        if pooling == "cls":
            mask[:, 1:] = 0  # pooled terms on the CLS token; hidden_mse still covers every token
        loss, parts = distillation_loss(student_out, teacher_out, mask, cfg)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        last_loss = float(loss.detach())
        history.append({"step": step, "loss": last_loss, **parts})
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4f}", steps_per_s=f"{(step - first_step) / (time.time() - started):.2f}")
        if step % save_every == 0 or step == steps or (stop_after is not None and step >= stop_after):
            save_checkpoint(accelerator, work_dir, step, keep=2)
    bar.close()
    accelerator.wait_for_everyone()
    seconds = time.time() - started
    trained = accelerator.unwrap_model(student)
    if step < steps:
        return VisionDistillResult(str(work_dir), step, seconds, last_loss, history, trained)
    if accelerator.is_main_process:
        finalize_vision(trained, teacher_dir, output_dir, tcfg)
        with open(output_dir / DISTILLATION_INFO, "w", encoding="utf-8") as f:
            json.dump({"teacher": str(teacher_dir), "steps": step, "seconds": seconds, "final_loss": last_loss,
                       "pooling": pooling, "batch_size": batch_size, "learning_rate": lr,
                       "loss_weights": {k: getattr(cfg, k) for k in ("hidden_mse", "pooled_cosine", "pooled_mse",
                                                                     "layer_mse", "similarity")},
                       "num_images": len(pixels), "ternary_config": tcfg.to_dict()}, f, indent=2)
    accelerator.wait_for_everyone()
    return VisionDistillResult(str(output_dir), step, seconds, last_loss, history, trained)


# ----------------------------------------------------------------------------------------------- evaluation
def _precision_at_k(gallery: np.ndarray, gallery_labels: np.ndarray, queries: np.ndarray,
                    query_labels: np.ndarray, k: int) -> float:
    import faiss

    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    _, pos = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return float((gallery_labels[pos] == query_labels[:, None]).mean())


def _linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # standardised features, fairly strong L2 (C=0.1): converges in ~150 lbfgs iterations on 128-d
    # embeddings, where C=1 needs ~300 for +0.5 point; the same protocol for every model compared
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    probe.fit(x_train, y_train)
    return float(probe.score(x_test, y_test))


def _scores(model: Any, train: ImageSplit, test: ImageSplit, batch_size: int, pooling: str, k: int
            ) -> dict[str, float]:
    x_train = embed_images(model, train.images, batch_size, pooling)
    x_test = embed_images(model, test.images, batch_size, pooling)
    return {"linear_probe_accuracy": _linear_probe(x_train, train.labels, x_test, test.labels),
            f"p_at_{k}": _precision_at_k(x_train, train.labels, x_test, test.labels, k)}


def evaluate_vision(
    model: Any,
    teacher: Any = None,
    dataset: str | tuple[ImageSplit, ImageSplit] = "fashion-mnist",
    limit: int | None = None,
    *,
    test_limit: int | None = None,
    pooling: str = "cls",
    batch_size: int = 256,
    k: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Linear-probe accuracy and image-to-image retrieval P@k, with retention against a teacher.

    * linear probe: logistic regression (standardised features, C=0.1) fit on train-split embeddings, accuracy
      on the test split;
    * retrieval: each test image queries the train images (FAISS exact inner product on the normalised
      embeddings); a hit is relevant when it has the query's label; P@k averaged over queries.

    Args:
        model / teacher: models or folders (see :func:`embed_images`); the teacher is optional.
        dataset: a name for :func:`load_image_dataset` or ``(train, test)`` :class:`ImageSplit` pairs.
        limit: seeded subset of at most this many train images (probe training set and gallery).
        test_limit: seeded subset of test images (default: ``limit``).

    Returns:
        ``{"linear_probe_accuracy", "p_at_10", "n_train", "n_test"}`` and, with a teacher,
        ``teacher_*`` and ``retention_*`` (model / teacher) for both metrics.
    """
    if isinstance(dataset, (str, os.PathLike)):
        train = load_image_dataset(str(dataset), "train", limit=limit, seed=seed)
        test = load_image_dataset(str(dataset), "test", limit=test_limit or limit, seed=seed)
    else:
        train, test = (_as_split(d, s, None, seed) for d, s in zip(dataset, ("train", "test"), strict=True))
    if len(train.labels) < k:
        raise ValueError(f"retrieval P@{k} needs at least {k} gallery images, got {len(train.labels)}")
    result: dict[str, float] = dict(_scores(model, train, test, batch_size, pooling, k),
                                    n_train=len(train.labels), n_test=len(test.labels))
    if teacher is not None:
        reference = _scores(teacher, train, test, batch_size, pooling, k)
        for name, value in reference.items():
            result[f"teacher_{name}"] = value
            result[f"retention_{name}"] = result[name] / value if value else float("nan")
    return result


def model_bytes(path: str | os.PathLike) -> int:
    """Bytes of the ``*.safetensors`` files in a saved model folder."""
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))


def time_embedding(models: Sequence[Any], images: Any, batch_size: int = 256, rounds: int = 5,
                   pooling: str = "cls") -> list[float]:
    """Median seconds per :func:`embed_images` call for each model, timed in interleaved rounds.

    Interleaving (A, B, A, B, ...) keeps a busy machine's load shifts out of the ratio.
    """
    models = [_load_model(m) for m in models]
    for m in models:  # warm-up: kernel load / weight preparation, allocator
        embed_images(m, images[: min(len(images), batch_size)], batch_size, pooling, show_progress_bar=False)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for i, m in enumerate(models):
            started = time.perf_counter()
            embed_images(m, images, batch_size, pooling, show_progress_bar=False)
            times[i].append(time.perf_counter() - started)
    return [float(np.median(t)) for t in times]
