"""Where a result was measured: Python, CPU, threads, library versions and the data packages.

Why: speed is only comparable on the same machine and thread count, and scores only with the same data
release; a result file must say both, or it cannot be compared with one made later.
"""

from __future__ import annotations

import os
import platform
from typing import Any

from ..data import dataset_info

__all__ = ["environment"]


def environment() -> dict[str, Any]:
    """The machine, thread count, library versions and data sets (with their pinned packages) of this process."""
    import sentence_transformers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "data": dataset_info(),
    }
