"""TernaryConfig: validation messages, JSON round trip, registration with transformers."""

from __future__ import annotations

import importlib
import json

import pytest

import ternary_hf
from ternary_hf import TernaryConfig
from ternary_hf.integrations.config import ACTIVATION_MODES


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
        config = TernaryConfig.from_dict({"quant_method": "ternary", "future_knob": 1})
    assert config == TernaryConfig()


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
