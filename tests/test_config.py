"""TernaryConfig: validation messages, JSON round trip, registration with transformers."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

import ternary_hf
from ternary_hf import TernaryConfig, TernaryHfError
from ternary_hf.integrations.config import ACTIVATION_MODES, LEGACY_EMBEDDING_GROUP_SIZE


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"threshold_method": "median"}, ["median", "calibrated", "twn", "absmean", "paper"]),
        ({"granularity": "row"}, ["row", "channel", "tensor"]),
        ({"activations": "int4"}, ["int4", *ACTIVATION_MODES]),
        ({"embedding_storage": "int2"}, ["int2", "fp16", "int8", "int4", "None"]),
        ({"packing_format": "v0"}, ["v0", "ternary-2bit-rowmajor-v1"]),
        ({"modules_to_not_convert": ["pooler", ""]}, ["modules_to_not_convert"]),
        ({"modules_to_not_convert": [3]}, ["modules_to_not_convert"]),
    ],
)
def test_bad_values_raise_with_value_and_allowed_ones(kwargs, names):
    with pytest.raises(ValueError) as info:
        TernaryConfig(**kwargs)
    for name in names:
        assert name in str(info.value)


def test_round_trips_through_json():
    config = TernaryConfig(threshold_method="twn", granularity="tensor", activations="float",
                           embedding_storage="int8", modules_to_not_convert=["pooler"])
    data = json.loads(json.dumps(config.to_dict()))
    assert data["quant_method"] == "ternary"
    assert TernaryConfig.from_dict(data) == config
    assert TernaryConfig.from_dict(data).to_dict() == config.to_dict()


def test_from_dict_errors_say_config_json():
    with pytest.raises(ValueError, match="config.json"):
        TernaryConfig.from_dict({"quant_method": "ternary", "granularity": 5})
    with pytest.raises(ValueError, match="quant_method"):
        TernaryConfig.from_dict({"quant_method": "bitnet"})
    with pytest.raises(ValueError, match="object"):
        TernaryConfig.from_dict(["ternary"])


def test_unknown_keys_warn_but_load():
    with pytest.warns(UserWarning, match="future_knob"):
        config = TernaryConfig.from_dict({"quant_method": "ternary", "future_knob": 1, "embedding_group_size": 64})
    assert config == TernaryConfig()


def test_a_config_without_an_embedding_group_size_means_the_32_columns_of_older_checkpoints():
    assert TernaryConfig().embedding_group_size == 64
    assert TernaryConfig().to_dict()["embedding_group_size"] == 64
    legacy = TernaryConfig.from_dict({"quant_method": "ternary", "embedding_storage": "int4"})
    assert legacy.embedding_group_size == LEGACY_EMBEDDING_GROUP_SIZE == 32
    assert "embedding_group_size" not in legacy.to_dict()  # written as older versions wrote it
    assert TernaryConfig.from_dict(legacy.to_dict()) == legacy
    with pytest.raises(ValueError, match=r"embedding_group_size=48 is not allowed; choose one of \[16, 32, 64, 128\]"):
        TernaryConfig(embedding_group_size=48)


def test_default_skips_heads_and_empty_list_converts_all():
    assert "classifier" in TernaryConfig().skipped_modules()
    assert TernaryConfig(modules_to_not_convert=[]).skipped_modules() == []


def test_registration_is_idempotent_across_imports_and_reloads():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    ternary_hf.register()
    ternary_hf.register()
    importlib.reload(importlib.import_module("ternary_hf.integrations.registration"))
    importlib.import_module("ternary_hf").register()
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["ternary"].__name__ == "TernaryConfig"
    assert AUTO_QUANTIZER_MAPPING["ternary"].__name__ == "TernaryHfQuantizer"


def test_foreign_registration_is_refused():
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

    saved = AUTO_QUANTIZER_MAPPING["ternary"]
    try:
        AUTO_QUANTIZER_MAPPING["ternary"] = type("OtherQuantizer", (), {})
        with pytest.raises(RuntimeError, match="already has"):
            ternary_hf.register()
    finally:
        AUTO_QUANTIZER_MAPPING["ternary"] = saved


def test_a_string_is_one_module_name_never_split():
    config = TernaryConfig(modules_to_not_convert="pooler")
    assert config.modules_to_not_convert == ["pooler"] and config.skipped_modules() == ["pooler"]
    assert config.to_dict()["modules_to_not_convert"] == ["pooler"]
    config.modules_to_not_convert = "encoder.layer.1"
    assert config.modules_to_not_convert == ["encoder.layer.1"]
    assert TernaryConfig(modules_to_not_convert=("a", "b")).modules_to_not_convert == ["a", "b"]


@pytest.mark.parametrize("value", [{"pooler"}, {"pooler": 1}, 3, b"pooler", ["layer[0"]])
def test_other_module_lists_are_refused(value):
    with pytest.raises(ValueError, match="modules_to_not_convert"):
        TernaryConfig(modules_to_not_convert=value)


def test_unknown_keyword_arguments_are_refused_naming_the_known_ones():
    with pytest.raises(TernaryHfError) as info:
        TernaryConfig(threshold="twn")
    assert isinstance(info.value, ValueError)
    for name in ("threshold", "threshold_method", "granularity", "modules_to_not_convert"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="quant_method"):
        TernaryConfig(quant_method="bitnet")
    assert TernaryConfig(**TernaryConfig(granularity="tensor").to_dict()) == TernaryConfig(granularity="tensor")


@pytest.mark.parametrize(
    "field, value, allowed",
    [("threshold_method", "median", "calibrated"), ("granularity", "row", "tensor"), ("activations", "int4", "float"),
     ("embedding_storage", "int2", "fp16"), ("packing_format", "v0", "ternary-2bit-rowmajor-v1"),
     ("quant_method", "bitnet", "ternary"), ("modules_to_not_convert", [""], "non-empty")],
)
def test_fields_set_after_construction_are_checked(field, value, allowed):
    config = TernaryConfig()
    with pytest.raises(ValueError) as info:
        setattr(config, field, value)
    assert field in str(info.value) and repr(value).strip("[]") in str(info.value) and allowed in str(info.value)
    assert config == TernaryConfig()  # the bad value was not stored
    with pytest.raises(ValueError, match=field):
        config.update(**{field: value})  # transformers' own setter path
    with pytest.raises(ValueError, match=field):
        TernaryConfig.from_dict({"quant_method": "ternary"}, **{field: value})


def test_valid_assignments_are_kept_and_copies_work():
    import copy
    import pickle

    config = TernaryConfig()
    config.threshold_method = "twn"
    config.embedding_storage = None
    assert config.to_dict()["threshold_method"] == "twn" and config.to_dict()["embedding_storage"] is None
    assert copy.deepcopy(config) == config and pickle.loads(pickle.dumps(config)) == config


def test_saved_folder_reloads_with_the_same_config(tiny_model_dirs, tmp_path):
    from transformers import AutoConfig, AutoModel

    config = TernaryConfig(threshold_method="twn", modules_to_not_convert="pooler")
    AutoModel.from_pretrained(tiny_model_dirs["bert"], quantization_config=config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved == config.to_dict() and saved["modules_to_not_convert"] == ["pooler"]
    model = AutoModel.from_pretrained(tmp_path)
    assert model.config.quantization_config == config
    assert type(model.pooler.dense).__name__ == "Linear"
    assert TernaryConfig.from_dict(AutoConfig.from_pretrained(tmp_path).quantization_config) == config


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_embeddings_of_either_group_size_reload_bit_identically(tiny_model_dirs, tmp_path, group_size):
    from conftest import tiny_hidden
    from safetensors.torch import load_file
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dirs["bert"],
                                      quantization_config=TernaryConfig(embedding_group_size=group_size)).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved.get("embedding_group_size", LEGACY_EMBEDDING_GROUP_SIZE) == group_size
    scales = load_file(tmp_path / "model.safetensors")["embeddings.word_embeddings.weight_scale"]
    assert scales.shape[1] == -(-model.config.hidden_size // group_size)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert reloaded.embeddings.word_embeddings.group_size == group_size
    assert torch.equal(tiny_hidden(reloaded, "bert"), tiny_hidden(model, "bert"))
