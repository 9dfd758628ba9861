"""Pure ternarization rules: a float matrix ``W`` becomes ``scale * T`` with ``T`` in ``{-1, 0, +1}``.

Every rule picks a threshold ``delta`` (entries with ``|w| <= delta`` become 0, the rest keep their
sign) and a scale ``alpha``, either per output channel (one per row of ``W``, the default: rows of a
linear layer differ in magnitude by an order of magnitude, and a shared scale wastes the two
non-zero levels on the small rows) or per tensor (the founding paper's choice, kept to reproduce it).

Rules (``THRESHOLD_METHODS``):

* ``"twn"`` -- Ternary Weight Networks: ``delta = 0.7 * mean|W|``, ``alpha`` = mean of the ``|w|`` that
  survive the threshold (the least-squares scale for that mask).
* ``"absmean"`` -- BitNet b1.58: ``gamma = mean|W|``, ``T = clamp(round(W / gamma), -1, 1)``,
  ``alpha = gamma`` (so ``delta = gamma / 2``).
* ``"paper"`` -- the founding paper's code (arXiv 2411.15438): ``delta = mean|W|``,
  ``alpha = 2 * mean|W|``.
* ``"calibrated"`` -- the threshold that minimises the reconstruction error ``||W - alpha T||^2``
  exactly. For a mask keeping the ``k`` largest magnitudes the best scale is their mean, and the
  error is ``||W||^2 - S_k^2 / k`` (``S_k`` their sum), so sorting the magnitudes once and taking
  ``argmax_k S_k^2 / k`` finds the optimum; no empirical ``beta`` to tune.

All functions compute in float32, never modify their inputs, and reject NaN / inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidInputError

__all__ = [
    "THRESHOLD_METHODS",
    "SCALE_GRANULARITIES",
    "TernaryWeight",
    "ternarize",
    "dequantize_ternary",
    "reconstruction_error",
]

THRESHOLD_METHODS = ("twn", "absmean", "paper", "calibrated")
SCALE_GRANULARITIES = ("channel", "tensor")
_TWN_FACTOR = 0.7
_EPS = 1e-12
_ROW_CHUNK = 256


@dataclass(frozen=True)
class TernaryWeight:
    """A ternarized matrix: ``values`` (int8, -1/0/+1, same shape as the input) and ``scale``.

    ``scale`` is float32 of shape ``(out_features,)`` for per-channel scales and ``(1,)`` per tensor.
    """

    values: torch.Tensor
    scale: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_ternary(self.values, self.scale, dtype)


def _check(weight: torch.Tensor, method: str, granularity: str) -> None:
    if method not in THRESHOLD_METHODS:
        raise InvalidInputError(f"threshold method {method!r} is not one of {THRESHOLD_METHODS}")
    if granularity not in SCALE_GRANULARITIES:
        raise InvalidInputError(f"scale granularity {granularity!r} is not one of {SCALE_GRANULARITIES}")
    if weight.dim() != 2:
        raise InvalidInputError(
            f"ternarize expects a 2-D (out_features, in_features) weight, got {tuple(weight.shape)}"
        )
    if not weight.is_floating_point():
        raise InvalidInputError(f"ternarize expects a floating-point weight, got {weight.dtype}")
    if not bool(torch.isfinite(weight).all()):
        raise InvalidInputError("weight contains NaN or inf; refusing to ternarize (check the checkpoint)")


def _calibrated_threshold(mag: torch.Tensor) -> torch.Tensor:
    """Exact least-squares threshold per row of ``mag`` (``|W|`` in float32, rows = groups).

    The rule only needs the sorted *values* (never the sort permutation), which are the same whatever
    sort computes them; on CPU NumPy's vectorised sort does that much faster than ``torch.sort``, and
    this function runs on every training step of the distillation trainer (where the sort was a large
    share of a step), so CPU tensors take the NumPy route. Both routes compute the same float64 arithmetic and
    are tested equal.
    """
    if mag.device.type == "cpu" and mag.shape[1] > 0:
        return _calibrated_threshold_numpy(mag)
    return _calibrated_threshold_torch(mag)


def _calibrated_threshold_torch(mag: torch.Tensor) -> torch.Tensor:
    """:func:`_calibrated_threshold` with torch ops (any device)."""
    n = mag.shape[1]
    sorted_mag, _ = torch.sort(mag, dim=1, descending=True)
    csum = torch.cumsum(sorted_mag.to(torch.float64), dim=1)
    k = torch.arange(1, n + 1, device=mag.device, dtype=torch.float64)
    best = torch.argmax(csum * csum / k, dim=1, keepdim=True)  # index of the last kept entry
    next_idx = (best + 1).clamp(max=n - 1)
    dropped_max = torch.gather(sorted_mag, 1, next_idx)
    # ``|w| > dropped_max`` keeps the optimal set (a tie at the boundary drops both tied entries; the
    # caller recomputes the scale from the actual mask, so it stays least-squares for that mask).
    return torch.where(best + 1 < n, dropped_max, torch.zeros_like(dropped_max))


def _calibrated_threshold_numpy(mag: torch.Tensor) -> torch.Tensor:
    """:func:`_calibrated_threshold` on CPU through NumPy (same values, see there)."""
    n = mag.shape[1]
    # Sorting the negated magnitudes ascending gives the descending order contiguously; negation is
    # exact and IEEE rounding is sign-symmetric, so the squared partial sums are the same numbers.
    neg_sorted = np.sort(np.negative(mag.numpy()), axis=1)
    csum = np.cumsum(neg_sorted, axis=1, dtype=np.float64)
    k = np.arange(1, n + 1, dtype=np.float64)
    best = np.argmax(csum * csum / k, axis=1)  # first maximum, like torch.argmax
    dropped_max = -neg_sorted[np.arange(mag.shape[0]), np.minimum(best + 1, n - 1)]
    threshold = np.where(best + 1 < n, dropped_max, np.float32(0.0)).astype(np.float32)
    return torch.from_numpy(threshold).reshape(-1, 1)


def ternarize(weight: torch.Tensor, method: str = "twn", granularity: str = "channel") -> TernaryWeight:
    """Ternarize a 2-D weight with one of :data:`THRESHOLD_METHODS`.

    Args:
        weight: ``(out_features, in_features)`` float tensor (any float dtype; math in float32).
        method: threshold rule, see the module docstring.
        granularity: ``"channel"`` (one scale per output row) or ``"tensor"`` (one scale).

    Returns:
        :class:`TernaryWeight` with int8 values and a float32 scale. A row (or tensor) of zeros gets
        all-zero values and scale 0.

    Raises:
        ValueError: on an unknown method/granularity, a non-2-D or non-float weight, NaN or inf.
    """
    _check(weight, method, granularity)
    if granularity == "channel" and weight.shape[0] > _ROW_CHUNK:
        # Rows are independent: chunking bounds the float temporaries (the calibrated rule sorts).
        chunks = [ternarize(weight[i : i + _ROW_CHUNK], method, granularity)
                  for i in range(0, weight.shape[0], _ROW_CHUNK)]
        return TernaryWeight(torch.cat([c.values for c in chunks]), torch.cat([c.scale for c in chunks]))
    w = weight.detach().to(torch.float32)
    groups = w if granularity == "channel" else w.reshape(1, -1)
    mag = groups.abs()
    mean_mag = mag.mean(dim=1, keepdim=True) if mag.shape[1] else torch.zeros(mag.shape[0], 1)

    if method == "absmean":
        gamma = mean_mag.clamp(min=_EPS)
        values = torch.round(groups / gamma).clamp(-1, 1)
        scale = torch.where(mean_mag > 0, mean_mag, torch.zeros_like(mean_mag))
    else:
        if method == "twn":
            delta = _TWN_FACTOR * mean_mag
        elif method == "paper":
            delta = mean_mag
        else:
            delta = _calibrated_threshold(mag) if mag.shape[1] else mean_mag
        mask = mag > delta
        values = torch.sign(groups) * mask
        if method == "paper":
            scale = 2.0 * mean_mag
        else:
            count = mask.sum(dim=1, keepdim=True)
            # Summed in float64 and rounded once: the result no longer depends on the summation order,
            # so the trainer's one-pass C++ version (kernels.ternarize_calibrated_cpu) gives the same bits.
            kept = (mag * mask).sum(dim=1, keepdim=True, dtype=torch.float64)
            scale = (kept / count.clamp(min=1)).to(torch.float32)
    values = values.to(torch.int8).reshape(w.shape)
    return TernaryWeight(values=values, scale=scale.reshape(-1).contiguous())


def dequantize_ternary(values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``scale * values`` as a float matrix (per-channel ``scale`` broadcasts over rows)."""
    s = scale.to(torch.float32).reshape(-1, 1) if scale.numel() > 1 else scale.to(torch.float32).reshape(1, 1)
    return (values.to(torch.float32) * s).to(dtype)


def reconstruction_error(weight: torch.Tensor, ternary: TernaryWeight) -> float:
    """Relative Frobenius error ``||W - alpha T|| / ||W||`` (0 for an exact fit, 1 for all zeros)."""
    w = weight.detach().to(torch.float32)
    norm = torch.linalg.norm(w)
    if norm == 0:
        return 0.0
    return float(torch.linalg.norm(w - ternary.dequantize()) / norm)
