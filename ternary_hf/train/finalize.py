"""From trained student to packed ternary folder, written whole with its ``distillation.json`` record.

The student's latent weights are saved as a float checkpoint of the teacher's architecture and loaded
back through the quantizer, so the packed model is exactly what ``from_pretrained(...,
quantization_config=config)`` makes of them. Everything, the float intermediate included, is built in
a staging folder beside the output (:func:`ternary_hf.utils.io.staged_folder`) and renamed into place
with its record: a kill during finalize leaves the previous output and a staging folder that the next
run removes, never half a model or a model without its record.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..integrations.config import TernaryConfig
from ..utils.io import atomic_write_json, read_json, staged_folder
from .student import to_float_model

__all__ = ["DISTILLATION_INFO", "finalize", "finished_output", "write_packed_folder"]

#: written into every finalized folder; also what marks a folder a re-run may replace
DISTILLATION_INFO = "distillation.json"
_FLOAT = ".float"  # the float intermediate, inside the staging folder


def write_packed_folder(output_dir: str | os.PathLike, save_float: Callable[[Path], None],
                        pack: Callable[[Path, Path], None], info: dict[str, Any] | None = None, *,
                        overwrite: bool = True) -> str:
    """Build ``output_dir`` aside: ``save_float(dir)`` writes the float model, ``pack(float_dir, out)`` loads
    it quantized and saves it to ``out``; ``info`` becomes its ``distillation.json``. Then swap it in."""
    with staged_folder(output_dir, marker=DISTILLATION_INFO, overwrite=overwrite,
                       hint="pass overwrite=True (CLI: --overwrite) to replace it") as staging:
        float_dir = staging / _FLOAT
        save_float(float_dir)
        pack(float_dir, staging)
        shutil.rmtree(float_dir)
        if info is not None:
            atomic_write_json(staging / DISTILLATION_INFO, info)
    return str(output_dir)


def _pack_sentence_transformer(float_dir: Path, out: Path, config: TernaryConfig) -> None:
    from sentence_transformers import SentenceTransformer

    packed = SentenceTransformer(str(float_dir), device="cpu", model_kwargs={"quantization_config": config})
    packed.save(str(out))


def finalize(student: nn.Module, teacher_st: Any, output_dir: str | os.PathLike, config: TernaryConfig,
             info: dict[str, Any] | None = None, overwrite: bool = True) -> str:
    """Pack the trained ``student`` into a ternary sentence-transformers folder at ``output_dir``.

    ``teacher_st`` gives the pipeline around the encoder (tokenizer, pooling, normalisation); ``info``
    is written as the folder's ``distillation.json``. Returns ``output_dir``.
    """
    float_st = copy.deepcopy(teacher_st)
    float_st[0].auto_model.load_state_dict(to_float_model(student).state_dict())
    return write_packed_folder(output_dir, lambda path: float_st.save(str(path)),
                               lambda float_dir, out: _pack_sentence_transformer(float_dir, out, config),
                               info, overwrite=overwrite)


def read_info(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``distillation.json`` of a finalized folder, or ``None``."""
    return read_json(Path(output_dir) / DISTILLATION_INFO, missing=None, invalid=None)


def finished_output(output_dir: str | os.PathLike, run_id: str | None, step: int) -> dict[str, Any] | None:
    """The record of ``output_dir`` if it is the finalized model of run ``run_id`` at ``step``, else ``None``."""
    info = read_info(output_dir)
    if run_id is None or info is None or info.get("run_id") != run_id or info.get("steps") != step:
        return None
    return info
