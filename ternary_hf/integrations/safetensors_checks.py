"""Up-front checks of safetensors checkpoint files, so bad input fails with the file and the problem named.

A truncated download or a hand-edited config otherwise surfaces as a deep ``SafetensorError`` or a
size-mismatch table with no hint of which file or why. Only the JSON header is read (a few KB), never
the tensors.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

__all__ = [
    "CheckpointError",
    "TensorInfo",
    "read_safetensors_header",
    "validate_ternary_checkpoint",
]

_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_BYTES = {"U8": 1, "I8": 1, "BOOL": 1, "F16": 2, "BF16": 2, "I16": 2, "F32": 4, "I32": 4, "F64": 8, "I64": 8}


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, truncated, or does not match the model it is loaded into."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Parse and sanity-check a ``.safetensors`` header; raise :class:`CheckpointError` naming ``path``."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: file is {size} bytes, too short to be safetensors (truncated?)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise CheckpointError(
                    f"{path}: header claims {n} bytes but only {size - 8} follow (truncated, or not safetensors)"
                )
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc})") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: header is not valid JSON ({exc}); the file is corrupt") from exc
    data_bytes = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: malformed header entry for {name!r}") from exc
        if end > data_bytes or start > end:
            raise CheckpointError(
                f"{path}: tensor {name!r} ends at byte {end} but the file holds only {data_bytes} data bytes "
                "(truncated download? re-save or re-download it)"
            )
        count = 1
        for d in shape:
            count *= d
        if dtype in _DTYPE_BYTES and end - start != count * _DTYPE_BYTES[dtype]:
            raise CheckpointError(f"{path}: tensor {name!r} has {end - start} bytes, {shape} {dtype} needs "
                                  f"{count * _DTYPE_BYTES[dtype]}; the file is corrupt")
        tensors[name] = TensorInfo(dtype, shape)
    return tensors


def validate_ternary_checkpoint(files: Iterable[str], model: nn.Module, prefix: str = "") -> None:
    """Check a pre-quantized checkpoint against the ternary skeleton of ``model`` before loading.

    Every stored tensor of a ternary module (``weight``, ``weight_scale``) that the files contain must
    have the dtype and shape the module expects; otherwise :class:`CheckpointError` names the file,
    the tensor, what was expected and what was found.
    """
    from .modules import QuantizedEmbedding, TernaryLinear

    expected: dict[str, TensorInfo] = {}
    torch_to_st = {"uint8": "U8", "int8": "I8", "float16": "F16", "float32": "F32", "bfloat16": "BF16"}
    for name, module in model.named_modules():
        if isinstance(module, (TernaryLinear, QuantizedEmbedding)):
            for tensor_name, buf in module.named_buffers(recurse=False):
                dtype = torch_to_st.get(str(buf.dtype).removeprefix("torch."), str(buf.dtype))
                expected[f"{name}.{tensor_name}"] = TensorInfo(dtype, tuple(buf.shape))
    for path in files:
        if not os.fspath(path).endswith(".safetensors"):
            continue
        for key, info in read_safetensors_header(path).items():
            key = key.removeprefix(prefix + ".") if prefix and key.startswith(prefix + ".") else key
            want = expected.get(key)
            if want is None:
                continue
            if info.dtype != want.dtype and key.endswith(".weight"):
                raise CheckpointError(
                    f"{path}: {key} is {info.dtype} {list(info.shape)}, but a ternary checkpoint stores it as "
                    f"{want.dtype} {list(want.shape)}; config.json says quant_method 'ternary' yet the weights are "
                    "not ternary (remove quantization_config from config.json, or re-run ternary-hf quantize)"
                )
            if info.shape != want.shape:
                raise CheckpointError(
                    f"{path}: {key} has shape {list(info.shape)}, expected {list(want.shape)} for this model's "
                    "config; the checkpoint and config.json do not belong together"
                )
