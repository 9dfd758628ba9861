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
(a batch's padding changes the float rounding of the teacher's output). At every checkpoint the rows
added since the one before are written to the run's work dir (:meth:`TeacherCache.flush`: one
safetensors journal file per checkpoint and process), and a resumed run reads back the files up to
its checkpoint (:meth:`TeacherCache.restore`) instead of running the teacher again on every batch it
had done. Batches whose rows are not in a journal (a run checkpointed before journals existed)
are refilled by re-running the teacher on exactly the batches that filled them
(:meth:`TeacherCache.replay`). Either way the targets, and so the weights, are bit for bit those of
an uninterrupted run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ..utils.io import atomic_write_bytes

__all__ = ["TeacherCache", "cache_supported"]

_JOURNAL = re.compile(r"p\d+-(\d+)\.safetensors")


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
        self._unsaved: list[int] = []  # added since the last flush

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
            self._unsaved.append(key)
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

    def flush(self, folder: str | Path, step: int, process: int = 0) -> Path | None:
        """Write the rows added since the last flush to ``folder`` as the journal of ``step`` (one
        file per process, written even when empty: its presence says that the journals hold every
        row up to ``step``). Call before the checkpoint of ``step`` is saved, so that a checkpoint
        never relies on a journal that is not on disk. A second save of the same step (the final
        save of a time budget) adds nothing and keeps the file; returns ``None`` then."""
        path = Path(folder) / f"p{process}-{step}.safetensors"
        if not self._unsaved and path.exists():
            return None
        from safetensors.torch import save

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save({str(key): self._rows[key] for key in self._unsaved}))
        self._unsaved.clear()
        return path

    def restore(self, folder: str | Path, step: int, process: int = 0) -> tuple[int, bool]:
        """Read this process's journals up to ``step`` (the checkpoint resumed from) back into the cache.

        Journals of later steps (written before a kill, with no checkpoint after them) are deleted:
        the resumed run recomputes their rows. Returns how many texts were read and whether the
        journals are complete (the one of ``step`` exists, so every row up to it was written);
        when they are not (a run checkpointed before journals existed), :meth:`replay` adds the rest.
        """
        journals = []
        for path in Path(folder).glob(f"p{process}-*.safetensors"):
            match = _JOURNAL.fullmatch(path.name)  # the glob fixed the process; this reads the step
            if match is None:
                continue
            if int(match.group(1)) > step:
                path.unlink(missing_ok=True)
            else:
                journals.append((int(match.group(1)), path))
        from safetensors.torch import load_file

        read = 0
        for _, path in sorted(journals):
            for key, value in load_file(str(path)).items():
                if int(key) not in self._rows:
                    self._rows[int(key)] = value
                    self.nbytes += value.numel() * value.element_size()
                    read += 1
        return read, any(journal_step == step for journal_step, _ in journals)
