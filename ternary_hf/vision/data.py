"""Real image data from installed packages, and images turned into a ViT's ``pixel_values``.

Data sets come from packages, never from a hub: scikit-learn's 8x8 digits (fast tests) and
Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files).

Images are given as arrays: ``uint8`` ``(N, H, W)`` / ``(N, H, W, C)`` (scaled to [0, 1]), float
``(N, H, W)`` / ``(N, H, W, C)`` already in [0, 1], or float ``(N, C, H, W)`` taken as ready
``pixel_values``. The first two are normalised with mean 0.5 / std 0.5 (the ViT image processor's
default), repeated or averaged to the model's channel count and resized to its ``image_size``.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError, MissingInputError

__all__ = ["DATASETS", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "ImageSplit", "as_split", "load_image_dataset",
           "to_pixel_values"]

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
        raise InvalidInputError(f"{path} is not an uint8 IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(bytearray(data), dtype=np.uint8, offset=4 + 4 * ndim)  # writable, for torch
    if array.size != math.prod(dims):
        raise InvalidInputError(f"{path} is truncated: expected {math.prod(dims)} values, found {array.size}")
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
        raise MissingInputError(f"Fashion-MNIST {split} files {images_stem}[.gz] / {labels_stem}[.gz] not found "
                                f"in {directory}: {hint}")
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InvalidInputError(f"Fashion-MNIST files in {directory} do not match: images {images.shape}, "
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
        InvalidInputError: unknown name or split (naming the allowed ones), a malformed IDX file.
        MissingInputError: Fashion-MNIST files missing (saying which package to install).
    """
    if split not in _FASHION_FILES:
        raise InvalidInputError(f"split={split!r} is not allowed; choose one of {list(_FASHION_FILES)}")
    if name == "digits":
        data = _load_digits(split)
    elif name == "fashion-mnist":
        data = _load_fashion_mnist(split, data_dir)
    elif isinstance(name, (str, os.PathLike)) and Path(name).is_dir():
        data = _load_fashion_mnist(split, name)
    else:
        raise InvalidInputError(f"unknown image dataset {name!r}; choose one of {list(DATASETS)} "
                         "or a folder of Fashion-MNIST-format IDX files")
    if limit is not None:
        if limit < 1:
            raise InvalidInputError(f"limit must be >= 1 or None, got {limit}")
        if limit < len(data.labels):
            keep = np.sort(np.random.default_rng(seed).choice(len(data.labels), size=limit, replace=False))
            data = ImageSplit(data.images[keep], data.labels[keep])
    return data


def as_split(dataset: str | os.PathLike | ImageSplit | tuple, split: str, limit: int | None, seed: int) -> ImageSplit:
    """A named data set's ``split`` (:func:`load_image_dataset`), or ``(images, labels)`` as an :class:`ImageSplit`."""
    if isinstance(dataset, (str, os.PathLike)):
        return load_image_dataset(str(dataset), split, limit=limit, seed=seed)
    images, labels = dataset
    return ImageSplit(np.asarray(images), np.asarray(labels, dtype=np.int64))


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
            raise InvalidInputError(f"images of shape {tuple(x.shape)} not understood: give (N, H, W) or (N, H, W, C) "
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
            raise InvalidInputError(f"images have {pixels.shape[1]} channels but the model expects {channels}")
    if size is not None and tuple(pixels.shape[-2:]) != size:
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
    return pixels.contiguous()
