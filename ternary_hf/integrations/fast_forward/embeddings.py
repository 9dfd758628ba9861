"""Text embeddings and the first-token pooler, computed on the packed tokens only.

Why not call the model's own modules: at batch 1 a forward spends a few hundred microseconds outside
the encoder layers, most of it in the embedding module (five sub-module calls and a dozen small ops,
all on padding positions too) and the pooler (three module calls for one row per sequence). Both are
simple sums and one linear layer, so the engine does the same arithmetic itself on the real tokens,
in the same order (the sum in one kernel call, ``int4_text_embeddings``, when the word table is int4,
else torch ops; LayerNorm through torch), which keeps the results bit-identical to the modules'
(tested) and to the same sentence in any batch.

Only the classes listed here qualify, each with what its forward does (a look-alike class with other
semantics must keep its own forward, as in :mod:`.plan`); anything else uses the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..modules import QuantizedEmbedding

__all__ = ["TextEmbedder", "text_embedder", "first_token_pooler", "POOLERS"]

#: Embedding classes whose forward is ``LayerNorm(word [+ token type] + position)`` with dropout, and
#: how they number positions: by column (BERT) or by counting non-padding ids from ``padding_idx + 1``
#: (RoBERTa's fairseq numbering, which MPNet shares).
_EMBEDDINGS: dict[str, tuple[bool, bool]] = {  # class: (positions counted from the ids, has token types)
    "BertEmbeddings": (False, True),
    "RobertaEmbeddings": (True, True),
    "XLMRobertaEmbeddings": (True, True),
    "CamembertEmbeddings": (True, True),
    "MPNetEmbeddings": (True, False),
}
#: Pooler classes whose forward is ``activation(dense(hidden[:, 0]))``.
POOLERS = ("BertPooler", "RobertaPooler", "XLMRobertaPooler", "CamembertPooler", "MPNetPooler")


@dataclass
class TextEmbedder:
    """``LayerNorm(word [+ token type] + position)`` of the real tokens, as ``(tokens, hidden)``."""

    word: nn.Module
    position: nn.Module
    token_type: nn.Module | None
    norm: nn.LayerNorm
    padding_idx: int | None  # None: positions are column numbers; else counted over non-padding ids

    def __call__(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                 index: torch.Tensor | None, kernels: Any = None) -> torch.Tensor:
        """``index``: the real tokens' positions in the flattened ``(batch, length)`` ids (None: all);
        ``kernels``: the compiled kernel module with the encoder ops (``_kernel_module()``), if any."""
        batch, length = input_ids.shape
        if self.padding_idx is None:
            positions = torch.arange(length).expand(batch, length)
        else:
            real = input_ids.ne(self.padding_idx).int()
            positions = (torch.cumsum(real, dim=1).type_as(real) * real).long() + self.padding_idx
        if kernels is not None:
            x = self._native_sum(kernels, input_ids, token_type_ids, positions, index)
            if x is not None:
                return F.layer_norm(x, self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps)
        x = self.word(_packed(input_ids, index))
        if self.token_type is not None:
            if token_type_ids is None:  # the modules' default: type 0 everywhere
                x = x + self.token_type(torch.zeros(1, dtype=torch.long))
            else:
                x = x + self.token_type(_packed(token_type_ids, index))
        x = x + self.position(_packed(positions, index))
        return F.layer_norm(x, self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps)

    def _native_sum(self, kernels: Any, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                    positions: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor | None:
        """The sum before LayerNorm in one kernel call, or None when a table is not of the kinds it reads."""
        word = self.word
        if not (isinstance(word, QuantizedEmbedding) and word.storage == "int4" and word.float_table() is None
                and word.compute_dtype == torch.float32 and word.weight.dtype == torch.uint8
                and word.weight_scale.dtype == torch.float16):
            return None
        position_table = _float_table(self.position)
        type_table = _float_table(self.token_type) if self.token_type is not None else None
        if position_table is None or (self.token_type is not None and type_table is None):
            return None
        types = _packed(token_type_ids, index) if token_type_ids is not None and type_table is not None else None
        return kernels.int4_text_embeddings(_packed(input_ids, index), word.weight, word.weight_scale,
                                            word.embedding_dim, _packed(positions, index), position_table,
                                            types, type_table)


def _float_table(module: nn.Module) -> torch.Tensor | None:
    """The float32 table a lookup in ``module`` reads: an ``nn.Embedding``'s weight, or a small
    ``QuantizedEmbedding``'s dequantized table (the one its own forward looks rows up in); else None."""
    if type(module) is nn.Embedding:
        weight = module.weight
    elif isinstance(module, QuantizedEmbedding):
        weight = module.float_table()
        if weight is None:
            return None
    else:
        return None
    return weight if weight.dtype == torch.float32 and weight.device.type == "cpu" else None


def _packed(values: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    flat = values.reshape(-1)
    return flat if index is None else flat.index_select(0, index)


def text_embedder(embeddings: nn.Module) -> TextEmbedder | None:
    """The engine's embedder for ``embeddings`` (a model's embedding module), or None (use the module)."""
    spec = _EMBEDDINGS.get(type(embeddings).__name__)
    if spec is None:
        return None
    from_ids, has_types = spec
    word = getattr(embeddings, "word_embeddings", None)
    position = getattr(embeddings, "position_embeddings", None)
    token_type = getattr(embeddings, "token_type_embeddings", None) if has_types else None
    norm = getattr(embeddings, "LayerNorm", None)
    padding_idx = getattr(embeddings, "padding_idx", None) if from_ids else None
    if not isinstance(word, nn.Module) or not isinstance(position, nn.Module) or not isinstance(norm, nn.LayerNorm):
        return None
    if (has_types and not isinstance(token_type, nn.Module)) or (from_ids and not isinstance(padding_idx, int)):
        return None
    return TextEmbedder(word, position, token_type, norm, padding_idx)


def first_token_pooler(pooler: nn.Module | None) -> tuple[nn.Module, tuple[nn.Module, str]] | None:
    """``(dense layer, (owner, attribute) of the activation)`` of a first-token pooler, or None."""
    if pooler is None or type(pooler).__name__ not in POOLERS:
        return None
    dense = getattr(pooler, "dense", None)
    if not isinstance(dense, nn.Module) or not isinstance(getattr(pooler, "activation", None), nn.Module):
        return None
    return dense, (pooler, "activation")
