"""Tokenize once (``ternary_hf.serve.features``): the server's split-then-collate equals ``preprocess``.

The server tokenizes each request on its tokenizer thread and the model thread only pads texts from
different requests into one batch. These tests hold that batch to what ``SentenceTransformer.preprocess``
gives for the same texts (which is what ``encode`` runs), with the real bundled tokenizer, a prompt,
truncation, and a left-padding tokenizer, and check that inputs it cannot split are refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_sentences

pytest.importorskip("starlette")

from ternary_hf.serve import features  # noqa: E402
from ternary_hf.serve.encoder import Encoder  # noqa: E402


@pytest.fixture(scope="module")
def st_model(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu")


def _same(expected: dict, got: dict) -> None:
    assert set(expected) == set(got)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, got[key]), key
        else:
            assert value == got[key], key


@pytest.mark.parametrize("prompt", [None, "query: "])
@pytest.mark.parametrize("left", [False, True])
def test_split_then_collate_across_requests_equals_preprocess(st_model, prompt, left):
    tokenizer = st_model.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left" if left else "right"
    try:
        long = " ".join(["word"] * (st_model.max_seq_length * 2))  # truncated by preprocess
        first, second = tiny_sentences(5, seed=1) + [long], tiny_sentences(4, seed=2)
        pads = features.pad_values(tokenizer)
        parts = (features.split(st_model.preprocess(first, prompt=prompt), pads, left)
                 + features.split(st_model.preprocess(second, prompt=prompt), pads, left))
        texts = first + second
        for pick in ([8, 0, 5, 3], [2], list(range(len(texts)))[::-1]):  # rows from both requests, any order
            got = features.collate([parts[i] for i in pick], pads, left)
            _same(st_model.preprocess([texts[i] for i in pick], prompt=prompt), got)
        assert parts[5].length == st_model.max_seq_length
    finally:
        tokenizer.padding_side = side


def test_inputs_that_are_not_plain_token_ids_are_not_split():
    pads = {"input_ids": 0, "attention_mask": 0, "token_type_ids": 0}
    ids = torch.ones(2, 3, dtype=torch.long)
    plain = {"input_ids": ids, "attention_mask": ids, "modality": "text"}
    assert features.split(plain, pads, left=False) is not None
    assert features.split({**plain, "pixel_values": torch.zeros(2, 3, 4, 4)}, pads, left=False) is None
    assert features.split({**plain, "position_ids": ids}, pads, left=False) is None  # pad value unknown
    assert features.split({**plain, "prompt_length": torch.tensor(2)}, pads, left=False) is None
    assert features.split({"input_ids": ids.flatten(), "attention_mask": ids.flatten()}, pads, left=False) is None


def test_encoder_tokenizes_once_with_exact_counts_and_same_embeddings(st_model):
    encoder = Encoder(st_model)
    assert encoder.check_tokenize_once()
    texts = tiny_sentences(6, seed=3) + [" ".join(["token"] * 700)]
    payload, counts = encoder.tokenize(texts, "query: ")
    assert all(isinstance(p, features.TextFeatures) for p in payload)
    assert counts == encoder.count_tokens(texts, "query: ")  # the over-long text's count is not cut
    assert counts[-1] > encoder.max_seq_length == payload[-1].length
    order = [6, 2, 0, 5]
    from_features = encoder.embed([payload[i] for i in order], "query: ")
    from_texts = encoder.embed([texts[i] for i in order], "query: ")
    np.testing.assert_array_equal(from_features, from_texts)


def test_encoder_without_a_pad_token_tokenizes_on_the_model_thread(st_model, monkeypatch):
    encoder = Encoder(st_model)
    monkeypatch.setattr(encoder, "_pads", None)
    assert not encoder.check_tokenize_once()
    payload, counts = encoder.tokenize(["a short text", "another one"], None)
    assert payload == ["a short text", "another one"]
    assert counts == encoder.count_tokens(["a short text", "another one"], None)
