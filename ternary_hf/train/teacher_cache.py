"""The teacher's outputs of every training text, kept in memory so later epochs skip its forward.

A time-budgeted run goes over the default corpus more than once, and the teacher is frozen: its
forward on a text gives the same last hidden state every time, yet it is a sizeable share of a CPU
step (benchmarks/README.md, ``bench_train_step.py``). :class:`TeacherCache` keeps that hidden state
per text (real tokens only, float16), so a batch whose texts were all seen before is served from
memory.

Only the last hidden state is kept, so the cache serves the losses that need nothing else (hidden
MSE over real tokens, the pooled losses, the bank); :func:`cache_supported` says when that is the
case. Padding positions of a served batch are zeros, which the masked losses never read.

Exact resume: the cached value of a text is the one computed in the batch it first appeared in
(a batch's padding changes the float rounding of the teacher's output). A resumed run
rebuilds the cache by re-running the teacher on exactly the batches that filled it before the
checkpoint (:meth:`TeacherCache.replay`), so its targets, and so its weights, are bit for bit those
of an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

__all__ = ["TeacherCache", "cache_supported"]


def cache_supported(cfg) -> str | None:
    """``None`` when the teacher cache can serve the run of ``cfg`` (a ``DistillConfig``), else why not."""
    if not cfg.mask_padding:
        return "mask_padding=False reads the teacher's outputs at padding positions, which are not cached"
    for name in ("layer_mse", "attention_kl", "teacher_forcing"):
        if getattr(cfg, name):
            return f"{name} needs more of the teacher than its last hidden state"
    return None


class TeacherCache:
    """Last hidden states of the teacher per text index, up to ``max_bytes`` of memory.

    Texts are added as they are first seen; once ``max_bytes`` is reached, later texts are simply
    not cached (their batches run the teacher, as without a cache). Stored as float16 (the student's
    error is orders of magnitude above the float16 rounding) unless a value does not fit, then as float32.
    """

    def __init__(self, max_bytes: int, dtype: torch.dtype = torch.float16):
        self.max_bytes, self.dtype = int(max_bytes), dtype
        self.nbytes = 0
        self.hits = self.misses = 0
        self._rows: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, index: int) -> bool:
        return index in self._rows

    def lookup(self, index: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """The batch's padded ``(batch, length, hidden)`` float32 last hidden state, or ``None`` unless
        every text of the batch is cached."""
        keys = [int(i) for i in index.tolist()]
        if not keys or any(k not in self._rows for k in keys):
            self.misses += 1
            return None
        self.hits += 1
        hidden = self._rows[keys[0]].shape[-1]
        out = torch.zeros(*attention_mask.shape, hidden, dtype=torch.float32, device=attention_mask.device)
        real = attention_mask.bool()
        for row, key in enumerate(keys):
            out[row, real[row]] = self._rows[key].to(device=out.device, dtype=torch.float32)
        return out

    def add(self, index: torch.Tensor, attention_mask: torch.Tensor, last_hidden_state: torch.Tensor) -> None:
        """Keep the real-token rows of every text of the batch not cached yet (while there is room)."""
        real = attention_mask.bool()
        for row, key in enumerate(int(i) for i in index.tolist()):
            if key in self._rows:
                continue
            value = last_hidden_state[row, real[row]].detach()
            stored = value.to(device="cpu", dtype=self.dtype)
            if not torch.isfinite(stored).all():
                stored = value.to(device="cpu", dtype=torch.float32)
            size = stored.numel() * stored.element_size()
            if self.nbytes + size > self.max_bytes:
                return
            self._rows[key] = stored
            self.nbytes += size

    def replay(self, batches: Iterable[dict[str, torch.Tensor]], teacher: Callable[..., object],
               progress: Callable[[Iterable], Iterable] = lambda it: it) -> int:
        """Refill the cache as a run filled it: for each batch in the order the run saw them, run the
        teacher where the run did (some text not cached yet) and add its outputs. Returns how many
        teacher forwards that took."""
        forwards = 0
        for batch in progress(batches):
            index = batch["index"]
            if all(int(i) in self._rows for i in index.tolist()):
                continue
            inputs = {k: v for k, v in batch.items() if k != "index"}
            with torch.no_grad():
                out = teacher(**inputs)
            self.add(index, inputs["attention_mask"], out.last_hidden_state)
            forwards += 1
        return forwards
