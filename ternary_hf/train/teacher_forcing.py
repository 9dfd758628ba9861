"""Layer-wise teacher forcing: every student layer learns on the teacher's input to that layer.

End-to-end distillation asks layer 6 of a freshly ternarized student to fix errors that layers 1-5
made, while they are changing too. Teacher forcing removes that coupling for the first part of a
run: each student transformer layer is fed the *teacher's* hidden state at its input and trained to
reproduce the teacher's output of the same layer (masked MSE, averaged over layers). It is the
block-wise reconstruction of low-bit post-training quantization (BRECQ-style), but with all layers
trained at once from one teacher forward and one student forward per step, so a step costs what an
end-to-end step costs. The end-to-end losses then take over and fix what the layers still get wrong
together.

Hooks do the work, so any encoder whose layers sit in one ``nn.ModuleList`` of
``config.num_hidden_layers`` entries and take the hidden states as their first argument (BERT,
MPNet, RoBERTa, ...) is supported without model-specific code.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LayerwiseTeacherForcing", "find_layer_list"]


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``(name, ModuleList)`` of the model's transformer layers.

    Raises ``ValueError`` naming what it looked for when no unique list matches, so an unsupported
    architecture fails before training instead of silently training nothing layer-wise.
    """
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and len(module) > 0
                  and (n_layers is None or len(module) == n_layers)]
    if len(candidates) != 1:
        found = ", ".join(f"{name} ({len(m)})" for name, m in candidates) or "none"
        raise ValueError(
            f"teacher forcing needs the model's transformer layers as one nn.ModuleList of "
            f"config.num_hidden_layers={n_layers} entries; found {found}. Set teacher_forcing=0 for this model.")
    return candidates[0]


def _first_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class LayerwiseTeacherForcing:
    """Hooks that feed ``student``'s layers the teacher's layer inputs while :attr:`enabled`.

    Call the teacher first, then the student, then :meth:`pairs`. With ``enabled`` false the hooks only
    cost a dictionary write per layer and the student runs end to end as usual. :meth:`remove` takes
    the hooks off (the finalized model must not carry them).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module):
        _, student_layers = find_layer_list(student)
        _, teacher_layers = find_layer_list(teacher)
        if len(student_layers) != len(teacher_layers):
            raise ValueError(f"student has {len(student_layers)} layers, teacher {len(teacher_layers)}")
        self.enabled = False
        self._teacher_in: dict[int, torch.Tensor] = {}
        self._teacher_out: dict[int, torch.Tensor] = {}
        self._student_out: dict[int, torch.Tensor] = {}
        self._handles = []
        for i, (s_layer, t_layer) in enumerate(zip(student_layers, teacher_layers, strict=True)):
            self._handles.append(t_layer.register_forward_hook(self._record_teacher(i)))
            self._handles.append(s_layer.register_forward_pre_hook(self._feed_student(i)))
            self._handles.append(s_layer.register_forward_hook(self._record_student(i)))
        self.n_layers = len(student_layers)

    def _record_teacher(self, i: int):
        def hook(module, args, output):
            if self.enabled:
                self._teacher_in[i] = args[0].detach()
                self._teacher_out[i] = _first_tensor(output).detach()
        return hook

    def _feed_student(self, i: int):
        def hook(module, args):
            if not self.enabled:
                return None
            if i not in self._teacher_in:
                raise RuntimeError("teacher forcing: run the teacher on the same batch before the student")
            return (self._teacher_in[i], *args[1:])
        return hook

    def _record_student(self, i: int):
        def hook(module, args, output):
            if self.enabled:
                self._student_out[i] = _first_tensor(output)
        return hook

    def pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(student output, teacher output)`` of every layer for this batch; clears the records."""
        if len(self._student_out) != self.n_layers or len(self._teacher_out) != self.n_layers:
            raise RuntimeError("teacher forcing: pairs() needs one teacher and one student forward with enabled=True")
        out = [(self._student_out[i], self._teacher_out[i]) for i in range(self.n_layers)]
        self._teacher_in.clear()
        self._teacher_out.clear()
        self._student_out.clear()
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.enabled = False
