"""A ternary checkpoint that lacks a tensor, holds NaN / inf, or is cut short fails at load, naming the tensor."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from ternary_hf import TernaryConfig
from ternary_hf.errors import CheckpointError, TernaryHfError
from ternary_hf.integrations.safetensors_checks import read_safetensors_header

QUERY = "encoder.layer.0.attention.self.query"
WORDS = "embeddings.word_embeddings"


@pytest.fixture(scope="module")
def ternary_dir(tiny_model_dirs, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ternary") / "bert"
    AutoModel.from_pretrained(tiny_model_dirs["bert"], quantization_config=TernaryConfig()).save_pretrained(path)
    return str(path)


def _edited_copy(src: str, dst, edit) -> str:
    shutil.copytree(src, dst)
    state = load_file(f"{dst}/model.safetensors")
    edit(state)
    save_file(state, f"{dst}/model.safetensors", metadata={"format": "pt"})
    return str(dst)


def test_the_unedited_copy_loads(ternary_dir, tmp_path):
    AutoModel.from_pretrained(_edited_copy(ternary_dir, tmp_path / "same", lambda state: None))


@pytest.mark.parametrize("key", [f"{QUERY}.weight_scale", f"{QUERY}.weight", f"{QUERY}.bias",
                                 f"{WORDS}.weight_scale", f"{WORDS}.weight"])
def test_a_missing_tensor_is_named(ternary_dir, tmp_path, key):
    path = _edited_copy(ternary_dir, tmp_path / "missing", lambda state: state.pop(key))
    with pytest.raises(CheckpointError, match=f"lacks {key}"):
        AutoModel.from_pretrained(path)


@pytest.mark.parametrize("key", [f"{QUERY}.weight_scale", f"{QUERY}.bias", f"{WORDS}.weight_scale"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_scale_or_bias_is_named(ternary_dir, tmp_path, key, value):
    def edit(state):
        state[key] = state[key].clone()
        state[key].view(-1)[1] = value

    path = _edited_copy(ternary_dir, tmp_path / "nan", edit)
    with pytest.raises(CheckpointError, match=f"{key} holds NaN or inf"):
        AutoModel.from_pretrained(path)


def test_corrupt_packed_codes_are_named(ternary_dir, tmp_path):
    def edit(state):
        state[f"{QUERY}.weight"] = state[f"{QUERY}.weight"].clone()
        state[f"{QUERY}.weight"][3, 2] = 0b11011001

    path = _edited_copy(ternary_dir, tmp_path / "codes", edit)
    with pytest.raises(CheckpointError, match=f"{QUERY}.weight holds the invalid 2-bit code"):
        AutoModel.from_pretrained(path)


def test_checkpoint_error_is_a_ternary_hf_error_and_a_value_error():
    assert issubclass(CheckpointError, TernaryHfError) and issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("cut", ["empty", "short", "header", "data", "extra", "json"])
def test_truncated_and_corrupt_headers_name_the_file(ternary_dir, tmp_path, cut):
    data = open(f"{ternary_dir}/model.safetensors", "rb").read()
    header_len = int.from_bytes(data[:8], "little")
    broken = {
        "empty": b"",
        "short": data[:5],
        "header": data[: 8 + header_len // 2],
        "data": data[:-1],
        "extra": data + b"\0" * 8,
        "json": data[:8] + b"{" * header_len + data[8 + header_len :],
    }[cut]
    path = tmp_path / "model.safetensors"
    path.write_bytes(broken)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file .*truncated"):
        read_safetensors_header(path)


def test_header_lists_dtypes_and_shapes(ternary_dir):
    header = read_safetensors_header(f"{ternary_dir}/model.safetensors")
    state = load_file(f"{ternary_dir}/model.safetensors")
    assert set(header) == set(state)
    assert header[f"{QUERY}.weight"].dtype == "U8"
    assert all(header[k].shape == tuple(v.shape) for k, v in state.items())
    assert header[f"{QUERY}.weight_scale"].dtype == "F32" and state[f"{QUERY}.weight_scale"].dtype == torch.float32


def test_a_missing_scale_is_named_when_transformers_renames_the_keys(tiny_model_dirs, tmp_path):
    """ViT's checkpoint keys (``attention.attention.key``) differ from its module names in transformers 5."""
    saved = tmp_path / "vit"
    AutoModel.from_pretrained(tiny_model_dirs["vit"], quantization_config=TernaryConfig()).save_pretrained(saved)
    key = "encoder.layer.1.attention.attention.key.weight_scale"
    path = _edited_copy(str(saved), tmp_path / "vit-missing", lambda state: state.pop(key))
    with pytest.raises(CheckpointError, match=r"lacks \S*1\S*\.weight_scale"):
        AutoModel.from_pretrained(path)


def test_a_ternary_base_loads_under_a_task_head(ternary_dir):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(ternary_dir, num_labels=2)
    assert type(model.classifier) is torch.nn.Linear
