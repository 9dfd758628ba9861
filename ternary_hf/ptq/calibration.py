"""Data-aware ternarization: choose each layer's ternary matrix to preserve its *outputs*, not its weights.

Plain ternarization (:func:`ternary_hf.quant.ternarize.ternarize`) rounds every weight on its own: it
minimises ``||W - alpha T||``. What the model needs is the layer's output on real inputs,
``||X W^T - X (alpha T)^T||``, and the two differ because input features are correlated: the rounding
error of one weight can be cancelled by nudging the weights of correlated inputs. This module does
that with the GPTQ procedure (Frantar et al., 2022) on the ternary grid ``{-alpha, 0, +alpha}``:

1. ``H = X^T X / n`` is collected from real text, one layer at a time, with the layers before it already
   ternarized (so each layer also corrects what the earlier ones got wrong);
2. the columns of ``W`` are rounded to the grid one after another, and each rounding error is spread
   over the columns not yet rounded through the inverse Hessian (its Cholesky factor);
3. the per-channel (or per-tensor) scale is refitted by least squares on the outputs.

The result is written back as ``alpha * T`` in the layer's float weight. Loading such a model through
the quantizer reproduces exactly these values: for the ``calibrated`` and ``twn`` rules a row holding
only ``{-alpha, 0, +alpha}`` ternarizes to itself. Those are the only rules allowed here (``absmean`` and
``paper`` derive the scale from ``mean|W|``, which would move it).

Why it matters: without any training, a calibrated model is much closer to its float teacher than a
rounded one (``ternary-hf quantize --calibrate N``); as the starting point of distillation it did not
help. The measurements are in ``docs/quality.md`` ("rounding vs calibration",
``benchmarks/bench_calibration.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from ..integrations.config import TernaryConfig
from ..integrations.conversion import is_skipped
from ..quant.ternarize import TernaryWeight, ternarize
from ..utils.progress import bar_switch

__all__ = ["CALIBRATION_METHODS", "CalibrationReport", "gptq_ternarize", "calibrate_model", "output_error"]

logger = logging.getLogger(__name__)

#: Threshold rules whose output is a fixed point of the rule itself (see the module docstring).
CALIBRATION_METHODS = ("calibrated", "twn")


def _check_hessian(hessian: torch.Tensor, in_features: int) -> None:
    if hessian.shape != (in_features, in_features):
        raise InvalidInputError(f"hessian must be ({in_features}, {in_features}) to match the weight, "
                         f"got {tuple(hessian.shape)}")
    if not bool(torch.isfinite(hessian).all()):
        raise InvalidInputError("hessian contains NaN or inf (check the calibration inputs)")


def _grid_round(w: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Nearest point of ``{-alpha, 0, +alpha}`` (ties to 0); rows with ``alpha == 0`` give 0."""
    safe = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    t = torch.where(alpha > 0, (w / safe).round().clamp(-1, 1), torch.zeros_like(w))
    return t


def _refit_scale(weight: torch.Tensor, values: torch.Tensor, hessian: torch.Tensor, per_tensor: bool,
                 fallback: torch.Tensor) -> torch.Tensor:
    """Least-squares scale on the outputs: ``alpha = <X w, X t> / ||X t||^2`` per row (or summed)."""
    t = values.to(torch.float64)
    ht = t @ hessian  # (out, in): rows t_r^T H
    num = (ht * weight.to(torch.float64)).sum(dim=1)
    den = (ht * t).sum(dim=1)
    if per_tensor:
        num, den = num.sum(dim=0, keepdim=True), den.sum(dim=0, keepdim=True)
    alpha = torch.where(den > 0, num / den.clamp(min=1e-300), fallback.to(torch.float64))
    # A negative fit (outputs anti-correlated with the pattern) is no scale at all; keep the weight rule's.
    alpha = torch.where(alpha > 0, alpha, fallback.to(torch.float64))
    return alpha.to(torch.float32)


def gptq_ternarize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    method: str = "calibrated",
    granularity: str = "channel",
    damping: float = 0.01,
    block_size: int = 128,
    act_order: bool = True,
    passes: int = 2,
) -> TernaryWeight:
    """Ternarize ``weight`` so that ``x @ (alpha T).T`` stays close to ``x @ weight.T`` for inputs with
    second moment ``hessian`` (``E[x x^T]``); see the module docstring.

    Args:
        weight: ``(out_features, in_features)`` float matrix (not modified).
        hessian: ``(in_features, in_features)`` symmetric positive semi-definite ``E[x x^T]``.
        method: the weight rule giving the initial scale; one of :data:`CALIBRATION_METHODS`.
        granularity: ``"channel"`` or ``"tensor"``, as in :func:`~ternary_hf.ternarize.ternarize`.
        damping: added to the diagonal as a fraction of its mean (numerical stability; GPTQ's 1%).
        block_size: columns processed together (speed only; the result does not depend on it).
        act_order: round the columns with the largest input energy first (GPTQ's "act order").
        passes: rounds of (GPTQ with the current scale, then least-squares scale refit); the second
            pass starts from the refitted scale, which the first pass's grid did not know.

    Returns:
        A :class:`~ternary_hf.ternarize.TernaryWeight` (int8 values, float32 scale).

    Raises:
        ValueError: on a rule outside :data:`CALIBRATION_METHODS`, mismatched shapes, NaN / inf.
    """
    if method not in CALIBRATION_METHODS:
        raise InvalidInputError(f"calibration needs a threshold method in {CALIBRATION_METHODS} (the quantizer "
                                f"must map alpha*T to itself), got {method!r}")
    if not damping >= 0:
        raise InvalidInputError(f"damping must be >= 0, got {damping!r}")
    initial = ternarize(weight, method, granularity)  # validates weight, method and granularity
    out_features, in_features = weight.shape
    _check_hessian(hessian, in_features)
    per_tensor = granularity == "tensor"
    alpha = initial.scale.to(torch.float32).reshape(-1, 1)
    if per_tensor:
        alpha = alpha.expand(out_features, 1)

    w0 = weight.detach().to(torch.float32)
    h = hessian.detach().to(torch.float64).clone()
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0
    diag_mean = torch.diagonal(h).mean()
    h += torch.eye(in_features, dtype=torch.float64, device=h.device) * (damping * diag_mean)
    # Columns with the largest input energy first ("act order"): their rounding errors are then
    # absorbed by the many columns still free, instead of by the few left at the end.
    order = torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(in_features)
    inverse = torch.argsort(order)
    h_perm = h[order][:, order]
    # Upper Cholesky factor of H^-1: row i holds how column i's error propagates to the columns after it.
    try:
        hinv = torch.cholesky_inverse(torch.linalg.cholesky(h_perm))
        upper = torch.linalg.cholesky(hinv, upper=True).to(torch.float32)
    except RuntimeError as exc:  # not positive definite even after damping
        raise InvalidInputError(f"hessian is not positive definite (raise damping, now {damping}): {exc}") from exc

    fallback = alpha[:, 0] if not per_tensor else alpha[:1, 0]
    for _ in range(max(1, passes)):
        w = w0[:, order].clone()
        w[:, dead[order]] = 0.0
        values = _gptq_pass(w, alpha, upper, block_size)[:, inverse]
        scale = _refit_scale(w0, values, h, per_tensor, fallback)
        alpha = scale.reshape(-1, 1).expand(out_features, 1) if per_tensor else scale.reshape(-1, 1)
        fallback = scale
    return TernaryWeight(values=values.to(torch.int8), scale=scale.reshape(-1).contiguous())


def _gptq_pass(w: torch.Tensor, alpha: torch.Tensor, upper: torch.Tensor, block_size: int) -> torch.Tensor:
    """One GPTQ sweep over the columns of ``w`` (modified in place) on the grid ``alpha * {-1, 0, 1}``."""
    in_features = w.shape[1]
    values = torch.zeros_like(w)
    for start in range(0, in_features, block_size):
        stop = min(start + block_size, in_features)
        block = w[:, start:stop].clone()
        errors = torch.zeros_like(block)
        u = upper[start:stop, start:stop]
        for i in range(stop - start):
            col = block[:, i:i + 1]
            t = _grid_round(col, alpha)
            values[:, start + i:start + i + 1] = t
            err = (col - t * alpha) / u[i, i]
            block[:, i:] -= err @ u[i:i + 1, i:]
            errors[:, i:i + 1] = err
        w[:, stop:] -= errors @ upper[start:stop, stop:]
    return values


def output_error(weight: torch.Tensor, ternary: TernaryWeight, hessian: torch.Tensor) -> float:
    """Relative output error ``E||x W^T - x (alpha T)^T||^2 / E||x W^T||^2``, inputs of second moment ``hessian``."""
    w = weight.detach().to(torch.float64)
    diff = w - ternary.dequantize(torch.float64)
    h = hessian.to(torch.float64)
    total = float(((w @ h) * w).sum())
    return float(((diff @ h) * diff).sum()) / total if total > 0 else 0.0


# ----------------------------------------------------------------------------------------------- model walk
@dataclass
class CalibrationReport:
    """What :func:`calibrate_model` did: per layer the relative output error before and after."""

    layers: dict[str, tuple[float, float]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    n_samples: int = 0

    def summary(self) -> str:
        if not self.layers:
            return "no layer calibrated"
        before = sum(b for b, _ in self.layers.values()) / len(self.layers)
        after = sum(a for _, a in self.layers.values()) / len(self.layers)
        text = (f"{len(self.layers)} linear layers calibrated on {self.n_samples} texts: mean relative output "
                f"error {before:.4f} (weight rounding) -> {after:.4f}")
        if self.skipped:
            text += f"; {len(self.skipped)} never reached by the inputs, ternarized plainly: {', '.join(self.skipped)}"
        return text


class _Reached(Exception):
    """Raised from a hook to end a forward pass once the layer being calibrated has seen its input."""


def _calibration_targets(model: nn.Module, config: TernaryConfig) -> list[tuple[str, nn.Linear]]:
    # int8 / int4 layers are quantized by rounding alone: calibration fits ``alpha * T`` to ternary layers
    skip = (config.skipped_modules() + config.int8_module_names() + config.int4_module_names()
            + list(getattr(model, "_keep_in_fp32_modules", None) or []))
    return [(name, m) for name, m in model.named_modules()
            if name and type(m) is nn.Linear and not is_skipped(name, skip)]


def _cut_short(forward: Callable[[], Any]) -> Any:
    try:
        return forward()
    except _Reached:
        return None


@torch.no_grad()
def calibrate_model(
    model: nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]] | Iterable[Mapping[str, torch.Tensor]],
    config: TernaryConfig | None = None,
    damping: float = 0.01,
    act_order: bool = True,
    passes: int = 2,
    show_progress_bar: bool = True,
) -> CalibrationReport:
    """Replace, in place, every linear layer the quantizer would convert with its calibrated ``alpha * T``.

    Layers are taken in the order the model calls them; each one's input statistics are gathered with
    the earlier layers already ternarized. Layers fed the same input (attention Q, K, V) share one
    pass, and a forward stops (from a hook) as soon as the layers it was run for have seen their
    input. Inside the model's stack of repeated blocks (``encoder.layer``) only the current block is
    run, from the inputs the previous (calibrated) block produced, so the cost grows linearly with
    depth; a model whose blocks cannot be replayed that way is run from its inputs for every layer.
    The model stays a float model: load it through the quantizer (``from_pretrained(...,
    quantization_config=config)``) to get the packed ternary model with exactly these values.

    Args:
        model: a float transformers model (e.g. ``SentenceTransformer(...)[0].auto_model``).
        batches: keyword-argument dicts for ``model(**batch)`` (tokenizer outputs); held in memory,
            as every layer needs them again. A few hundred texts are enough.
        config: which layers convert and with which rule (``threshold_method`` in
            :data:`CALIBRATION_METHODS`); default ``TernaryConfig()``.
        damping, act_order, passes: see :func:`gptq_ternarize`.
        show_progress_bar: a tqdm bar over the layers.

    Returns:
        A :class:`CalibrationReport` with each layer's output error before / after.
    """
    from tqdm.auto import tqdm

    config = config or TernaryConfig()
    batches = list(batches)
    targets = _checked_targets(model, batches, config)
    was_training = model.training
    model.eval()
    report = CalibrationReport(n_samples=sum(int(next(iter(b.values())).shape[0]) for b in batches))
    modules = dict(targets)
    masks = [b.get("attention_mask") for b in batches]
    done: set[str] = set()
    bar = tqdm(total=len(targets), desc="calibrating", unit="layer", **bar_switch(show_progress_bar))

    def calibrate(name: str, run: Callable[[int], None]) -> None:
        group, hessian, count = _collect(run, len(batches), masks, targets, done, name)
        for member_name in group:
            member = modules[member_name]
            weight = member.weight.detach().to(torch.float32)
            if count == 0:
                report.skipped.append(member_name)
                result = ternarize(weight, config.threshold_method, config.granularity)
            else:
                h = hessian / count
                plain = ternarize(weight, config.threshold_method, config.granularity)
                result = gptq_ternarize(weight, h, config.threshold_method, config.granularity, damping,
                                        act_order=act_order, passes=passes)
                report.layers[member_name] = (output_error(weight, plain, h), output_error(weight, result, h))
            member.weight.copy_(result.dequantize(member.weight.dtype))
            done.add(member_name)
            bar.update(1)

    try:
        _calibrate_in_call_order(model, batches, targets, done, calibrate)
    finally:
        bar.close()
        model.train(was_training)
    if report.skipped:
        logger.warning("calibration: %d layer(s) never received an input (%s); ternarized from weights alone",
                       len(report.skipped), ", ".join(report.skipped))
    return report


def _checked_targets(model: nn.Module, batches: list, config: TernaryConfig) -> list[tuple[str, nn.Linear]]:
    """The layers to calibrate, after refusing a rule whose scale would move and empty inputs."""
    if config.threshold_method not in CALIBRATION_METHODS:
        raise InvalidInputError(f"calibration needs threshold_method in {CALIBRATION_METHODS}, got "
                                f"{config.threshold_method!r} (its scale would not survive reloading)")
    if not batches:
        raise InvalidInputError("calibration needs at least one batch of inputs")
    targets = _calibration_targets(model, config)
    if not targets:
        raise InvalidInputError(f"{type(model).__name__} has no nn.Linear layer to calibrate")
    return targets


def _calibrate_in_call_order(model: nn.Module, batches: list, targets, done: set[str],
                             calibrate: Callable[[str, Callable[[int], None]], None]) -> None:
    """Call ``calibrate(layer, run)`` for every target in the order the model calls them, where ``run(i)``
    feeds batch ``i`` up to that layer: through the whole model, or, inside the stack of repeated
    blocks, through the current block only (from the inputs the previous calibrated block produced)."""

    def run_model(i: int) -> None:
        _cut_short(lambda: model(**batches[i]))

    order = _call_order(model, batches[0], targets)
    blocks = _replayable_blocks(model, batches, order)
    if blocks is None:
        for name in order:
            if name not in done:
                calibrate(name, run_model)
        return
    prefix, stack, inputs = blocks
    in_block = {name: int(name[len(prefix) + 1:].split(".")[0]) for name in order if name.startswith(prefix + ".")}
    first = min(order.index(n) for n in in_block)
    for name in order[:first]:  # layers before the stack (rare: an input projection)
        if name not in done:
            calibrate(name, run_model)
    inputs = _block_inputs(model, stack[0], batches) if order[:first] else inputs
    for index, block in enumerate(stack):
        def run_block(i: int, block: nn.Module = block, inputs: list = inputs) -> None:
            args, kwargs = inputs[i]
            _cut_short(lambda: block(*args, **kwargs))

        for name in order:
            if in_block.get(name) == index and name not in done:
                calibrate(name, run_block)
        inputs = [_advance(block, item) for item in inputs]
    for name in order:  # after the stack (a pooler), or never called
        if name not in done:
            calibrate(name, run_model)


def _call_order(model: nn.Module, batch: Mapping[str, torch.Tensor], targets) -> list[str]:
    """Target names in the order one forward pass first calls them; never-called ones at the end."""
    seen: list[str] = []

    def hook_for(name: str):
        def hook(_module, _args):
            if name not in seen:
                seen.append(name)
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in targets]
    try:
        model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen + [n for n, _ in targets if n not in seen]


def _block_stack(model: nn.Module, names: list[str]) -> tuple[str, nn.ModuleList] | None:
    """The ``nn.ModuleList`` of repeated blocks holding the most target layers (``encoder.layer``)."""
    best = None
    for prefix, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2:
            held = sum(n.startswith(prefix + ".") for n in names)
            if held and (best is None or held > best[0]):
                best = (held, prefix, module)
    return (best[1], best[2]) if best else None


def _block_inputs(model: nn.Module, block: nn.Module, batches) -> list[tuple[tuple, dict]]:
    """``(args, kwargs)`` of ``block``'s call for each batch (each forward stopped right there)."""
    captured: list[tuple[tuple, dict]] = []

    def hook(_module, args, kwargs):
        captured.append((args, dict(kwargs)))
        raise _Reached

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            _cut_short(lambda batch=batch: model(**batch))
    finally:
        handle.remove()
    return captured


def _advance(block: nn.Module, item: tuple[tuple, dict]) -> tuple[tuple, dict]:
    """The next block's ``(args, kwargs)``: this block's output hidden states, the rest unchanged."""
    args, kwargs = item
    out = block(*args, **kwargs)
    hidden = out[0] if isinstance(out, (tuple, list)) else out
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _replayable_blocks(model: nn.Module, batches, order: list[str]
                       ) -> tuple[str, nn.ModuleList, list[tuple[tuple, dict]]] | None:
    """``(prefix, blocks, inputs of the first block)`` if the block stack can be run block by block.

    Checked, not assumed: replaying the blocks from the first one's captured inputs must reproduce the
    last block's input of a full forward (a model passing other state from block to block fails this
    and is calibrated with full forwards instead)."""
    found = _block_stack(model, order)
    if found is None:
        return None
    prefix, stack = found
    try:
        inputs = _block_inputs(model, stack[0], batches)
        if len(inputs) != len(batches):
            return None
        first_args, first_kwargs = inputs[0]
        if not first_args and "hidden_states" not in first_kwargs:
            return None
        reference = _block_inputs(model, stack[-1], batches[:1])[0]
        item = inputs[0]
        for block in list(stack)[:-1]:
            item = _advance(block, item)
        replayed, expected = _hidden_of(item), _hidden_of(reference)
        if replayed is None or expected is None or replayed.shape != expected.shape:
            return None
        if not torch.allclose(replayed, expected, rtol=1e-4, atol=1e-5):
            return None
    except Exception as exc:  # an unusual block signature: fall back to full forwards
        logger.debug("calibration: block-by-block replay unavailable (%s)", exc)
        return None
    return prefix, stack, inputs


def _hidden_of(item: tuple[tuple, dict]) -> torch.Tensor | None:
    args, kwargs = item
    hidden = args[0] if args else kwargs.get("hidden_states")
    return hidden if isinstance(hidden, torch.Tensor) else None


def _collect(run: Callable[[int], None], n_items: int, masks: Sequence[torch.Tensor | None], targets,
             done: set[str], name: str) -> tuple[list[str], torch.Tensor, int]:
    """Input second moments of ``name`` and of the not-yet-done layers fed the very same tensor.

    ``run(i)`` runs forward pass ``i`` (of the model or of one block). Returns ``(group, sum of x x^T
    in float64, number of rows)``; each pass stops at the first other layer reached after the group."""
    state: dict = {"group": [], "hessian": None, "count": 0, "input": None, "mask": None}
    pending = {n for n, _ in targets if n not in done}

    def hook_for(layer_name: str):
        def hook(_module, args):
            x = args[0]
            if layer_name == name:
                state["input"] = x
                if layer_name not in state["group"]:
                    state["group"].append(layer_name)
                flat = x.detach().to(torch.float32)
                mask = state["mask"]
                # Padding positions are computed but never pooled: leave them out of the statistics.
                flat = flat[mask.bool()] if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]) \
                    else flat.reshape(-1, x.shape[-1])
                gram = (flat.t() @ flat).to(torch.float64)
                state["hessian"] = gram if state["hessian"] is None else state["hessian"] + gram
                state["count"] += flat.shape[0]
            elif state["input"] is not None:
                if x is state["input"] and layer_name in pending:
                    if layer_name not in state["group"]:
                        state["group"].append(layer_name)
                else:
                    raise _Reached
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in targets]
    try:
        for i in range(n_items):
            state["input"], state["mask"] = None, masks[i]
            run(i)
    finally:
        for handle in handles:
            handle.remove()
    if not state["group"]:
        state["group"] = [name]
    hessian = state["hessian"]
    if hessian is None:
        in_features = dict(targets)[name].in_features
        hessian = torch.zeros(in_features, in_features, dtype=torch.float64)
    return state["group"], hessian, state["count"]
