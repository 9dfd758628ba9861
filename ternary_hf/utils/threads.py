"""Torch's intra-op thread count for the length of one library call.

Distillation and evaluation take a thread count because a benchmark or a shared machine needs one; a
library function that set it for good would leave the caller's notebook or server at that count long
after it returned. ``torch`` is imported when the block is entered, so this module stays importable
without it (the package's ``utils`` import only the standard library at import time).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num_threads)`` (``None`` or 0: unchanged), then restore
    the count it found, also when the block raises."""
    import torch

    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
