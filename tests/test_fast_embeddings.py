"""The fast forward's own embeddings and first-token pooler (fast_forward/embeddings.py): bit-identical to
the model's modules on every real token, whatever the padding, token types or position numbering."""

from __future__ import annotations

import pytest
import torch
from conftest import quantized_tiny, tiny_inputs
from transformers import RobertaConfig, RobertaModel

from ternary_hf.integrations.fast_forward import ENV
from ternary_hf.integrations.fast_forward.embeddings import first_token_pooler, text_embedder
from ternary_hf.kernels import cpu_kernel_available, kernel_module

needs_kernel = pytest.mark.skipif(not cpu_kernel_available(), reason="the CPU kernel cannot run here")


#: A vocabulary large enough that the int4 word table is not dequantized whole (QuantizedEmbedding's
#: small-table limit is 2 MiB of float32): lookups then read the int4 rows, natively when the kernel runs.
BIG_VOCAB = 20_000


@pytest.fixture(scope="module")
def extra_model_dirs(tmp_path_factory):
    """RoBERTa (positions numbered from padding_idx + 1 over the non-padding ids, token types), and
    BERT and RoBERTa with a large vocabulary."""
    from transformers import BertConfig, BertModel

    common = dict(max_position_embeddings=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37)
    models = {
        "roberta": RobertaModel(RobertaConfig(vocab_size=101, pad_token_id=1, type_vocab_size=2, **common)),
        "roberta-big": RobertaModel(RobertaConfig(vocab_size=BIG_VOCAB, pad_token_id=1, type_vocab_size=2, **common)),
        "bert-big": BertModel(BertConfig(vocab_size=BIG_VOCAB, **common)),
    }
    root = tmp_path_factory.mktemp("tiny-extra")
    for name, model in models.items():
        torch.manual_seed(0)
        model.eval().save_pretrained(root / name)
    return {name: str(root / name) for name in models}


def _dirs(tiny_model_dirs, extra_model_dirs):
    return {**tiny_model_dirs, **extra_model_dirs}


def _masks(batch: int, seq: int) -> dict[str, torch.Tensor]:
    right = torch.ones(batch, seq, dtype=torch.long)
    right[0, seq - 3:] = 0
    left = torch.ones(batch, seq, dtype=torch.long)
    left[1, :4] = 0
    return {"none": None, "right": right, "left": left}


def _module_rows(model, ids, token_types, mask):
    kwargs = {} if token_types is None else {"token_type_ids": token_types}
    emb = model.embeddings(input_ids=ids, **kwargs)
    rows = emb.reshape(-1, emb.shape[-1])
    return rows if mask is None else rows[mask.reshape(-1).bool()]


@pytest.mark.parametrize("kind", ["bert", "mpnet", "roberta", "bert-big", "roberta-big"])
@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("types", [False, True], ids=["no-types", "types"])
def test_the_embedder_equals_the_embedding_module_on_real_tokens(tiny_model_dirs, extra_model_dirs, kind, padding,
                                                                   types):
    model = quantized_tiny(_dirs(tiny_model_dirs, extra_model_dirs)[kind])
    embedder = text_embedder(model.embeddings)
    assert embedder is not None
    ids = tiny_inputs("bert", batch=3, seq=11)["input_ids"]
    if kind.endswith("-big"):
        ids[:, ::2] += BIG_VOCAB - 200  # rows far from the start of the table
    ids[2, 5] = 1  # the padding id inside real tokens: RoBERTa / MPNet skip it when numbering positions
    mask = _masks(3, 11)[padding]
    if mask is not None:
        ids = ids.masked_fill(mask == 0, 1)
    token_types = None
    if types:
        if kind == "mpnet":
            pytest.skip("MPNet has no token types")
        token_types = torch.zeros_like(ids)
        token_types[:, 6:] = 1
    index = None if mask is None else mask.reshape(-1).nonzero().squeeze(1)
    with torch.inference_mode():
        ours = embedder(ids, token_types, index, kernel_module())
        theirs = _module_rows(model, ids, token_types, mask)
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("kind", ["bert", "mpnet", "roberta", "bert-big"])
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "reference"])
def test_the_fast_forward_uses_its_embedder_and_pooler_and_matches_the_modules(
    tiny_model_dirs, extra_model_dirs, kind, kernel, monkeypatch
):
    if not kernel:
        monkeypatch.setenv("TERNARY_HF_DISABLE_KERNEL", "1")
    model = quantized_tiny(_dirs(tiny_model_dirs, extra_model_dirs)[kind])
    inputs = tiny_inputs(kind, batch=4)
    with torch.inference_mode():
        monkeypatch.setenv(ENV, "0")
        eager = model(**inputs)
        monkeypatch.delenv(ENV)

        def refuse(*args, **kwargs):
            raise AssertionError("the fast forward called a module it computes itself")

        monkeypatch.setattr(model.embeddings, "forward", refuse)
        monkeypatch.setattr(model.pooler, "forward", refuse)
        fast = model(**inputs)
        monkeypatch.undo()
        pooled = model.pooler(fast.last_hidden_state)  # the module's pooler over the fast hidden states
    keep = inputs["attention_mask"][..., None].bool()
    assert ((fast.last_hidden_state - eager.last_hidden_state).abs() * keep).max() < 1e-5
    assert torch.equal(fast.pooler_output, pooled)


def test_other_embedding_and_pooler_classes_keep_their_modules(tiny_model_dirs):
    model = quantized_tiny(tiny_model_dirs["vit"])
    assert text_embedder(model.embeddings) is None
    assert first_token_pooler(getattr(model, "pooler", None)) is None

    class LookAlike(torch.nn.Module):  # same attributes, another class: its forward may differ
        def __init__(self, embeddings):
            super().__init__()
            self.word_embeddings = embeddings.word_embeddings
            self.position_embeddings = embeddings.position_embeddings
            self.LayerNorm = embeddings.LayerNorm

    bert = quantized_tiny(tiny_model_dirs["bert"])
    assert text_embedder(LookAlike(bert.embeddings)) is None
    assert text_embedder(bert.embeddings) is not None


@needs_kernel
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_the_int4_word_table_is_read_natively_and_bad_indices_are_refused(tiny_model_dirs, extra_model_dirs,
                                                                            monkeypatch, group_size):
    model = quantized_tiny(extra_model_dirs["bert-big"], embedding_group_size=group_size)
    assert model.embeddings.word_embeddings.weight_scale.shape[1] == -(-model.config.hidden_size // group_size)
    embedder = text_embedder(model.embeddings)
    km = kernel_module()
    calls = []
    native = km.int4_text_embeddings
    monkeypatch.setattr(km, "int4_text_embeddings", lambda *a: calls.append(1) or native(*a))
    ids = torch.tensor([[5, BIG_VOCAB - 1, 7]])
    with torch.inference_mode():
        assert torch.equal(embedder(ids, None, None, km), _module_rows(model, ids, None, None))
        assert calls
        with pytest.raises(IndexError, match="out of range for a vocabulary of 20000"):
            embedder(torch.tensor([[5, BIG_VOCAB]]), None, None, km)
        with pytest.raises(IndexError, match="longer than the model accepts"):
            embedder(torch.full((1, 65), 5), None, None, km)
        with pytest.raises(IndexError, match="token type 2 is out of range"):
            embedder(ids, torch.tensor([[0, 2, 0]]), None, km)
        calls.clear()
        model.embeddings.word_embeddings.weight_scale.data = model.embeddings.word_embeddings.weight_scale.float()
        assert torch.equal(embedder(ids, None, None, km), _module_rows(model, ids, None, None))
        assert not calls  # a table the kernel does not read (float32 scales): torch ops, same values
