"""Which modules ``modules_to_not_convert`` keeps in float: transformers' rule plus the whole-component rule."""

from __future__ import annotations

import pytest
from torch import nn
from transformers import AutoModel

from ternary_hf import TernaryConfig, TernaryLinear
from ternary_hf.integrations.conversion import is_skipped


@pytest.mark.parametrize(
    "name, entry, skipped",
    [
        # transformers' rule a: a regular expression matching the start, up to a dot or the end
        ("encoder.layer.1.output.dense", "encoder.layer.1", True),
        ("encoder.layer.11.output.dense", "encoder.layer.1", False),
        ("encoder.layer.7.attention.self.query", "encoder.layer.*.attention", True),
        ("encoder.layer.7.intermediate.dense", r"encoder\.layer\.[0-3]\.", False),
        ("encoder.layer.2.intermediate.dense", r"encoder\.layer\.[0-3]", True),
        ("pooler.dense", "pooler", True),
        ("mlp.gate_proj", "mlp.gate", False),
        # transformers' rule b: a plain suffix
        ("model.decoder.layers.23.fc1", "fc1", True),
        ("pre_classifier", "classifier", True),
        # ternary-hf's rule: whole dotted components anywhere
        ("bert.pooler.dense", "pooler", True),
        ("encoder.layer.0.attention.self.query", "attention.self", True),
        ("encoder.layer.0.attention.selfish.query", "attention.self", False),
        ("bert.poolers.dense", "pooler", False),
        ("encoder.layer.0.output.dense", "put.dense", True),  # suffix (rule b), not a component
        ("encoder.layer.0.output.dense.x", "put.dense", False),
    ],
)
def test_matching_rules(name, entry, skipped):
    assert is_skipped(name, [entry]) is skipped


def test_no_entries_skip_nothing():
    assert not is_skipped("classifier", [])


def test_a_regex_entry_keeps_the_matching_layers_in_float(tiny_model_dirs):
    config = TernaryConfig(modules_to_not_convert=[r"encoder\.layer\.1", "encoder.layer.*.intermediate"])
    model = AutoModel.from_pretrained(tiny_model_dirs["bert"], quantization_config=config)
    layer0, layer1 = model.encoder.layer
    assert all(type(m) is nn.Linear for m in layer1.modules() if isinstance(m, (nn.Linear, TernaryLinear)))
    assert type(layer0.intermediate.dense) is nn.Linear
    assert isinstance(layer0.output.dense, TernaryLinear) and isinstance(layer0.attention.self.query, TernaryLinear)


def test_a_folder_saved_under_the_old_matching_still_loads(tiny_model_dirs, tmp_path):
    """Before 27.5 a string became a character list, saved as such: ["p", "o", "o", "l", "e", "r"] matched
    nothing then, but as suffixes "e" and "r" now match every ``dense`` and ``value`` layer. The files say
    which layers are ternary, so the folder loads as it was saved."""
    import json

    import torch
    from conftest import tiny_inputs

    model = AutoModel.from_pretrained(tiny_model_dirs["bert"], quantization_config=TernaryConfig()).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["modules_to_not_convert"] = list("pooler")
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert is_skipped("encoder.layer.0.output.dense", list("pooler"))
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded.encoder.layer[0].output.dense, TernaryLinear)
    with torch.no_grad():
        assert torch.equal(reloaded(**tiny_inputs("bert")).last_hidden_state,
                           model(**tiny_inputs("bert")).last_hidden_state)
