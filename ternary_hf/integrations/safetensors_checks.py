"""Checks of ternary checkpoints, so bad input fails with the file, the tensor and the problem named.

Without them a truncated download or a hand-edited config surfaces as a deep ``SafetensorError`` or a
size-mismatch table with no hint of which file or why, and a tensor missing from a ternary file is
worse: transformers reports it only as "newly initialized" and the layer keeps whatever memory it got
(its packed codes and scales are buffers nobody initializes), so the model encodes wrong vectors.

Two stages. Before loading, only the headers are read (``safetensors.safe_open`` parses and checks
them, so a truncated or corrupt file is refused there), and the ternary tensors they hold must have
the dtype and shape the layers expect. After loading, every tensor a ternary layer needs must have
been loaded, and the values it cannot work without are checked once: scales and float tensors
finite, packed codes free of the never-written ``0b11``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import CheckpointError
from ..quant.packing import has_invalid_codes

__all__ = [
    "CheckpointError",
    "TensorInfo",
    "linears_stored_ternary",
    "read_safetensors_header",
    "validate_loaded_modules",
    "validate_ternary_checkpoint",
]

_TORCH_TO_SAFETENSORS = {
    torch.uint8: "U8", torch.int8: "I8", torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16",
}
_FIX = "re-save the model, re-download the file, or re-run `ternary-hf quantize`"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header: its dtype (safetensors' name, e.g. ``"U8"``) and shape."""

    dtype: str
    shape: tuple[int, ...]


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """The tensors listed in a ``.safetensors`` header; raise :class:`CheckpointError` naming ``path``.

    ``safe_open`` reads only the header (the data is memory-mapped, never read) and refuses a header
    that does not cover the file exactly, so truncation and corruption are caught here.
    """
    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt") as f:
            return {key: TensorInfo(f.get_slice(key).get_dtype(), tuple(f.get_slice(key).get_shape()))
                    for key in f.keys()}
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path}: not a valid safetensors file ({exc}); it is truncated or corrupt: {_FIX}"
        ) from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc})") from exc


def _ternary_modules(model: nn.Module) -> dict[str, nn.Module]:
    from .conversion import ternary_modules

    return ternary_modules(model)


def _expected_tensors(model: nn.Module) -> dict[str, TensorInfo]:
    """What the ternary modules of ``model`` load from a checkpoint, by qualified name."""
    return {
        f"{name}.{tensor_name}": TensorInfo(_TORCH_TO_SAFETENSORS.get(t.dtype, str(t.dtype)), tuple(t.shape))
        for name, module in _ternary_modules(model).items()
        for tensor_name, t in module.state_dict(keep_vars=True).items()
    }


def validate_ternary_checkpoint(files: Iterable[str | os.PathLike], model: nn.Module, prefix: str = "") -> None:
    """Check a pre-quantized checkpoint against the ternary skeleton of ``model`` before loading.

    Every stored tensor of a ternary module (``weight``, ``weight_scale``, ``bias``) that the files
    contain under the module's own name must have the dtype and shape the module expects; otherwise
    :class:`CheckpointError` names the file, the tensor, what was expected and what was found. (Keys
    that transformers renames while loading are not matched here; what never loads is caught by
    :func:`validate_loaded_modules`.)
    """
    expected = _expected_tensors(model)
    for path in map(os.fspath, files):
        if not path.endswith(".safetensors"):
            continue
        for key, info in read_safetensors_header(path).items():
            key = key.removeprefix(prefix + ".") if prefix else key
            want = expected.get(key)
            if want is not None:
                _check_entry(path, key, info, want)


def linears_stored_ternary(files: Iterable[str | os.PathLike], model: nn.Module, prefix: str = "") -> set[str]:
    """The names of ``model``'s ``nn.Linear`` modules whose weight the safetensors ``files`` store packed
    (``uint8``): in a pre-quantized checkpoint the files, not the ``modules_to_not_convert`` list, are
    the record of which layers were ternarized. Keys that transformers renames while loading are not
    matched (those layers follow the list)."""
    packed = {
        key.removeprefix(prefix + ".") if prefix else key
        for path in map(os.fspath, files) if path.endswith(".safetensors")
        for key, info in read_safetensors_header(path).items()
        if key.endswith(".weight") and info.dtype == "U8"
    }
    return {
        name for name, module in model.named_modules()
        if type(module) is nn.Linear and (name.removeprefix(prefix + ".") if prefix else name) + ".weight" in packed
    }


def _check_entry(path: str, key: str, info: TensorInfo, want: TensorInfo) -> None:
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


def validate_loaded_modules(model: nn.Module, source: str, require_loaded: bool = True) -> None:
    """Refuse ternary modules whose values cannot be right after loading; raise :class:`CheckpointError`
    naming the tensor and ``source`` (the folder).

    * ``require_loaded``: every tensor of a ternary module must have come from the checkpoint.
      transformers marks each tensor it loads with ``_is_hf_initialized`` (what its own
      initialisation relies on to skip loaded weights); one without the mark was missing and holds
      uninitialised memory, which transformers would only report as "newly initialized".
    * A scale, bias or float table holding NaN or inf.
    * Packed codes holding ``0b11``, which is never written.
    """
    from .modules import TernaryLinear

    missing = []
    for name, module in _ternary_modules(model).items():
        for tensor_name, tensor in module.state_dict(keep_vars=True).items():
            key = f"{name}.{tensor_name}"
            if tensor.device.type == "meta":  # offloaded: nothing to check here
                continue
            if require_loaded and not getattr(tensor, "_is_hf_initialized", False):
                missing.append(key)
            elif tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"{source}: {key} holds NaN or inf; the checkpoint is corrupt: {_FIX}")
            elif isinstance(module, TernaryLinear) and tensor_name == "weight" and has_invalid_codes(tensor):
                raise CheckpointError(
                    f"{source}: {key} holds the invalid 2-bit code 0b11; the checkpoint is corrupt: {_FIX}"
                )
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(
            f"{source}: the ternary checkpoint lacks {shown}, which this model's ternary layers need (a file "
            f"cut short or edited, or a model class with layers the checkpoint never had); {_FIX}"
        )
