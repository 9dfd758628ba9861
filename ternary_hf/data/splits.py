"""Fixed train / test splits and seeded sampling, the same on every machine and in every version.

Sets without an official split are split here by a hash, not by a seed or the file order: a *group*
(a movie, an article, a product, a dictionary entry, or the row itself when rows are independent) goes
to ``test`` when the first 8 hex digits of ``sha256("ternary-hf-split-v1:<name>:<group>")`` are 0 modulo 5
(about 20 %), else to ``train``. Keeping each group on one side means no movie, article or document is
trained on and tested on. Subsets (``limit``) are seeded random draws kept in file order: files are
often sorted by label, so the first N rows are never a fair sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInputError

__all__ = ["SPLITS", "TextDataset", "check_limit", "check_split", "is_test_group", "sample_indices"]

SPLITS = ("train", "test")
_SPLIT_SALT = "ternary-hf-split-v1"
_TEST_SHARE_MODULUS = 5  # one group in five goes to "test"


def is_test_group(name: str, group: str) -> bool:
    """Whether ``group`` of the data set ``name`` belongs to the ``test`` split (see the module docstring)."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}:{name}:{group}".encode()).hexdigest()
    return int(digest[:8], 16) % _TEST_SHARE_MODULUS == 0


def sample_indices(n: int, limit: int | None, seed: int, salt: str) -> list[int]:
    """A sorted, seeded random subset of ``range(n)`` of size ``limit`` (all when limit is None)."""
    if limit is None or limit >= n:
        return list(range(n))
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    return sorted(int(i) for i in rng.choice(n, size=limit, replace=False))


def check_limit(limit: int | None, what: str = "limit") -> None:
    """Refuse anything but a positive integer or None (``True`` and ``2.5`` included)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise InvalidInputError(f"{what} must be a positive integer or None, got {limit!r}")


def check_split(name: str, split: str, limit: int | None) -> None:
    """Refuse a split other than ``train`` / ``test`` of the set ``name``, and a bad ``limit``."""
    if split not in SPLITS:
        raise InvalidInputError(f"unknown split {split!r} for {name!r}; use one of {', '.join(SPLITS)}")
    check_limit(limit)


@dataclass
class TextDataset:
    """Texts of one split of one data set, with their labels (if any) as parallel lists.

    ``labels[i]`` indexes ``label_names``; ``scores[i]`` is the human sentiment score for the VADER
    sets (None elsewhere); ``ids[i]`` identifies the row in its source file; ``groups[i]`` is the unit
    the split was made on (movie, article, ...), equal to the id when rows are independent.
    """

    name: str
    split: str
    texts: list[str]
    labels: list[int] | None
    label_names: list[str] | None
    scores: list[float] | None = None
    ids: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def sample(self, limit: int | None, seed: int, salt: str) -> TextDataset:
        """A seeded random subset of ``limit`` rows in file order (see :func:`sample_indices`)."""
        return self.subset(sample_indices(len(self), limit, seed, salt))

    def subset(self, indices: Sequence[int]) -> TextDataset:
        """The rows at ``indices`` (in that order), as a new data set."""
        idx = [int(i) for i in indices]

        def pick(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in idx]

        return dataclasses.replace(
            self,
            texts=[self.texts[i] for i in idx],
            labels=pick(self.labels),
            label_names=None if self.label_names is None else list(self.label_names),
            scores=pick(self.scores),
            ids=pick(self.ids) or [],
            groups=pick(self.groups) or [],
        )
