"""Every distillation loss, in one place: a new loss goes here (plus its weight in :class:`DistillConfig`).

Each loss compares the student's outputs with the teacher's on the same batch; :func:`distillation_loss`
adds the switched-on ones with their weights. What each term is for:

* ``hidden_mse`` -- the founding paper's loss (arXiv 2411.15438): MSE between last hidden states,
  here masked to real tokens (padding carries nothing the user sees, and the unmasked MSE spends
  capacity on it);
* ``pooled_cosine`` -- ``1 - cos`` between the pooled sentence embeddings (what users search with);
* ``pooled_mse`` -- MSE between pooled embeddings (keeps their norm, which cosine ignores);
* ``layer_mse`` -- masked MSE averaged over every intermediate hidden state (TernaryBERT's recipe);
* ``attention_kl`` -- KL between the attention distributions (TernaryBERT / MiniLM attention transfer);
* ``similarity`` -- matching the in-batch cosine-similarity matrices (ranking is what retrieval
  needs). ``similarity_mode="mse"`` compares off-diagonal entries; ``"kl"`` compares row-wise
  softmaxes at ``similarity_temperature`` with the diagonal masked (left in, it dominates every row);
* ``bank_similarity`` -- MSE between the student's and the teacher's cosine similarities of this
  batch to a bank of the teacher's embeddings of up to ``bank_size`` earlier texts. For a pair of
  texts the error of the student's similarity is, to first order, ``(s_a - t_a) . t_b + ...``: this
  loss averages exactly that term over thousands of real ``t_b`` per step instead of the other texts
  of the batch, so the student's error is pushed out of the directions real texts differ in. The bank
  costs no student forward (teacher embeddings only) and is saved with each checkpoint;
* ``teacher_forced_mse`` -- the layer-wise loss of teacher forcing (:func:`teacher_forced_loss`, see
  :mod:`ternary_hf.train.teacher_forcing`), used instead of the others for the first part of a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .config import DistillConfig

__all__ = ["TeacherBank", "attention_kl", "distillation_loss", "masked_mse", "mean_pool", "teacher_forced_loss"]


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """MSE over the positions where ``mask`` (batch, tokens) is 1; plain MSE without a mask."""
    if mask is None:
        return F.mse_loss(a, b)
    m = mask.unsqueeze(-1).to(a.dtype)
    return ((a - b) ** 2 * m).sum() / (m.sum() * a.shape[-1]).clamp(min=1)


def attention_kl(student_attn: Sequence[torch.Tensor], teacher_attn: Sequence[torch.Tensor],
                 mask: torch.Tensor | None) -> torch.Tensor:
    """KL(teacher || student) of the attention distributions, averaged over layers, heads and real query tokens.

    Which tokens each token reads from is what the ternary weights perturb first, and the teacher's
    rows are a dense target per token pair."""
    total = student_attn[0].new_zeros(())
    for s, t in zip(student_attn, teacher_attn, strict=True):
        kl = (torch.xlogy(t, t) - t * torch.log(s.clamp_min(1e-12))).sum(-1)  # (batch, heads, queries)
        if mask is None:
            total = total + kl.mean()
        else:
            m = mask[:, None, :].to(kl.dtype)
            total = total + (kl * m).sum() / (m.sum() * kl.shape[1]).clamp(min=1)
    return total / max(len(student_attn), 1)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over the real tokens (sentence-transformers' mean pooling)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class TeacherBank:
    """FIFO of the teacher's L2-normalised pooled embeddings of earlier batches (``bank_similarity``).

    Every process pushes the gathered embeddings of all processes, so the banks stay identical and
    the one saved with a checkpoint (``state_dict``, via ``accelerator.register_for_checkpointing``)
    is every process's bank.
    """

    def __init__(self, size: int):
        self.size = size
        self.embeddings = torch.empty(0)

    def push(self, normalized: torch.Tensor) -> None:
        self.embeddings = torch.cat([normalized.detach().to(torch.float32).cpu(), self.embeddings])[: self.size]

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"embeddings": self.embeddings}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.embeddings = state["embeddings"]


def _similarity(s_pool: torch.Tensor, t_pool: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    s_sim = F.normalize(s_pool, dim=-1) @ F.normalize(s_pool, dim=-1).t()
    t_sim = F.normalize(t_pool, dim=-1) @ F.normalize(t_pool, dim=-1).t()
    off = ~torch.eye(s_sim.shape[0], dtype=torch.bool, device=s_sim.device)
    if cfg.similarity_mode == "mse":
        return F.mse_loss(s_sim[off], t_sim[off])
    neg = torch.finfo(s_sim.dtype).min
    s_log = F.log_softmax((s_sim / cfg.similarity_temperature).masked_fill(~off, neg), dim=-1)
    t_prob = F.softmax((t_sim / cfg.similarity_temperature).masked_fill(~off, neg), dim=-1)
    return F.kl_div(s_log, t_prob, reduction="batchmean")


def _pooled_terms(s_last: torch.Tensor, t_last: torch.Tensor, attention_mask: torch.Tensor, cfg: DistillConfig,
                  bank: TeacherBank | None) -> dict[str, torch.Tensor]:
    parts: dict[str, torch.Tensor] = {}
    s_pool, t_pool = mean_pool(s_last, attention_mask), mean_pool(t_last, attention_mask)
    if cfg.pooled_cosine:
        parts["pooled_cosine"] = (1 - F.cosine_similarity(s_pool, t_pool, dim=-1)).mean()
    if cfg.pooled_mse:
        parts["pooled_mse"] = F.mse_loss(s_pool, t_pool)
    if cfg.similarity and s_pool.shape[0] > 1:
        parts["similarity"] = _similarity(s_pool, t_pool, cfg)
    if cfg.bank_similarity and bank is not None and len(bank):
        reference = bank.embeddings.to(s_pool.device, s_pool.dtype)
        parts["bank_similarity"] = F.mse_loss(F.normalize(s_pool, dim=-1) @ reference.t(),
                                              F.normalize(t_pool, dim=-1) @ reference.t())
    return parts


def distillation_loss(student_out: Any, teacher_out: Any, attention_mask: torch.Tensor, cfg: DistillConfig,
                      bank: TeacherBank | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the switched-on losses; returns ``(loss, {name: value})``.

    ``attention_mask`` marks the tokens the losses read (for images: which tokens are pooled).
    ``bank`` holds the reference embeddings of ``bank_similarity`` (the term is left out while it is
    empty or ``None``)."""
    mask = attention_mask if cfg.mask_padding else None
    s_last, t_last = student_out.last_hidden_state, teacher_out.last_hidden_state
    parts: dict[str, torch.Tensor] = {}
    if cfg.hidden_mse:
        parts["hidden_mse"] = masked_mse(s_last, t_last, mask)
    if cfg.layer_mse:
        pairs = list(zip(student_out.hidden_states[1:-1], teacher_out.hidden_states[1:-1], strict=True))
        parts["layer_mse"] = sum(masked_mse(s, t, mask) for s, t in pairs) / max(len(pairs), 1)
    if cfg.attention_kl:
        parts["attention_kl"] = attention_kl(student_out.attentions, teacher_out.attentions, mask)
    if cfg.pooled_cosine or cfg.pooled_mse or cfg.similarity or cfg.bank_similarity:
        parts.update(_pooled_terms(s_last, t_last, attention_mask, cfg, bank))
    # Starts from a graph-connected zero: with bank_similarity alone, the first step (empty bank) has
    # no term yet and must still backpropagate.
    loss = sum((getattr(cfg, name) * value for name, value in parts.items()), s_last.sum() * 0.0)
    return loss, {name: float(value.detach()) for name, value in parts.items()}


def teacher_forced_loss(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor | None
                        ) -> tuple[torch.Tensor, dict[str, float]]:
    """Masked MSE between each student layer's output and the teacher's, averaged over layers."""
    loss = sum(masked_mse(s, t, mask) for s, t in pairs) / len(pairs)
    return loss, {"teacher_forced_mse": float(loss.detach())}
