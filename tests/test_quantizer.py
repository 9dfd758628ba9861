"""The transformers integration on tiny random BERT / MPNet / ViT models: quantize, save, reload, fail loudly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import quantized_tiny, tiny_hidden, tiny_inputs
from safetensors import safe_open
from torch import nn
from transformers import AutoModel

import ternary_hf
from ternary_hf import QuantizedEmbedding, TernaryConfig, TernaryLinear
from ternary_hf.integrations.safetensors_checks import CheckpointError

KINDS = ["bert", "mpnet", "vit"]


@pytest.mark.parametrize("kind", KINDS)
def test_on_the_fly_converts_every_linear_layer(tiny_model_dirs, kind):
    model = quantized_tiny(tiny_model_dirs[kind], modules_to_not_convert=[])
    float_model = AutoModel.from_pretrained(tiny_model_dirs[kind])
    n_float = sum(type(m) is nn.Linear for m in float_model.modules())
    assert n_float > 0
    assert sum(isinstance(m, TernaryLinear) for m in model.modules()) == n_float
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert model.config.quantization_config.quant_method == "ternary"
    # each ternary layer holds exactly the ternarization of the float weight it replaced
    float_linears = {n: m for n, m in float_model.named_modules() if type(m) is nn.Linear}
    for name, module in model.named_modules():
        if isinstance(module, TernaryLinear):
            expected = ternary_hf.quant.ternarize(float_linears[name].weight, "calibrated", "channel")
            assert torch.equal(module.ternary_values(), expected.values)
            assert torch.equal(module.weight_scale, expected.scale)
            assert torch.equal(module.bias, float_linears[name].bias)


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_reload_is_bit_identical(tiny_model_dirs, kind, tmp_path):
    model = quantized_tiny(tiny_model_dirs[kind])
    out = tiny_hidden(model, kind)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "ternary"
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        packed = [k for k in f.keys() if f.get_slice(k).get_dtype() == "U8"]
        assert packed, "packed ternary weights must be stored as uint8"
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert torch.equal(tiny_hidden(reloaded, kind), out)
    for (n1, b1), (n2, b2) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(b1, b2)


def test_checkpoint_is_small_and_embeddings_follow_config(tiny_model_dirs, tmp_path):
    for storage in (None, "fp16", "int8", "int4"):
        model = quantized_tiny(tiny_model_dirs["bert"], embedding_storage=storage)
        n_emb = sum(isinstance(m, QuantizedEmbedding) for m in model.modules())
        assert n_emb == (0 if storage is None else 3)
        model.save_pretrained(tmp_path / str(storage))
    sizes = {s: os.path.getsize(tmp_path / str(s) / "model.safetensors") for s in (None, "fp16", "int8", "int4")}
    assert sizes[None] > sizes["fp16"] > sizes["int8"] > sizes["int4"]
    assert sizes["int4"] < 0.5 * os.path.getsize(os.path.join(tiny_model_dirs["bert"], "model.safetensors"))


def test_dequantize_gives_back_a_float_model(tiny_model_dirs):
    model = quantized_tiny(tiny_model_dirs["bert"], activations="float", embedding_storage="int8")
    out = tiny_hidden(model, "bert")
    model = model.dequantize()
    assert not any(isinstance(m, (TernaryLinear, QuantizedEmbedding)) for m in model.modules())
    assert any(type(m) is nn.Linear for m in model.modules())
    assert not hasattr(model.config, "quantization_config")
    real = tiny_inputs("bert")["attention_mask"][..., None].bool()  # the ternary fast forward leaves padding at 0
    assert torch.allclose(tiny_hidden(model, "bert") * real, out * real, atol=1e-5)


def test_modules_to_not_convert_and_nothing_to_convert_warning(tiny_model_dirs):
    model = quantized_tiny(tiny_model_dirs["bert"], modules_to_not_convert=["pooler", "attention.self"])
    assert type(model.pooler.dense) is nn.Linear
    assert type(model.encoder.layer[0].attention.self.query) is nn.Linear
    assert isinstance(model.encoder.layer[0].attention.output.dense, TernaryLinear)
    with pytest.warns(UserWarning, match="no nn.Linear"):
        quantized_tiny(tiny_model_dirs["bert"], modules_to_not_convert=["encoder", "pooler"])


def test_default_config_keeps_classification_head(tiny_model_dirs, tmp_path):
    from transformers import BertForSequenceClassification

    path = tmp_path / "cls"
    BertForSequenceClassification.from_pretrained(tiny_model_dirs["bert"], num_labels=3).save_pretrained(path)
    model = BertForSequenceClassification.from_pretrained(path, quantization_config=TernaryConfig())
    assert type(model.classifier) is nn.Linear
    assert isinstance(model.bert.encoder.layer[0].output.dense, TernaryLinear)


def _saved(tiny_model_dirs, tmp_path) -> str:
    path = tmp_path / "ternary"
    quantized_tiny(tiny_model_dirs["bert"]).save_pretrained(path)
    return str(path)


def test_truncated_and_corrupt_files_name_the_file(tiny_model_dirs, tmp_path):
    path = _saved(tiny_model_dirs, tmp_path)
    weights = os.path.join(path, "model.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        AutoModel.from_pretrained(path)
    open(weights, "wb").write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + data[24:])
    with pytest.raises(CheckpointError, match="model.safetensors.*JSON"):
        AutoModel.from_pretrained(path)


def test_malformed_quantization_config_and_mismatched_shapes(tiny_model_dirs, tmp_path):
    path = _saved(tiny_model_dirs, tmp_path)
    config_file = os.path.join(path, "config.json")
    config = json.load(open(config_file))
    bad = dict(config, quantization_config=dict(config["quantization_config"], threshold_method="magic"))
    json.dump(bad, open(config_file, "w"))
    with pytest.raises(ValueError, match="config.json.*magic"):
        AutoModel.from_pretrained(path)
    json.dump(dict(config, intermediate_size=40), open(config_file, "w"))
    with pytest.raises(CheckpointError, match="intermediate.dense.*expected"):
        AutoModel.from_pretrained(path)
    # float weights under a ternary config.json
    float_copy = tmp_path / "float_claims_ternary"
    shutil.copytree(tiny_model_dirs["bert"], float_copy)
    json.dump(dict(json.load(open(float_copy / "config.json")), quantization_config=TernaryConfig().to_dict()),
              open(float_copy / "config.json", "w"))
    with pytest.raises(CheckpointError, match="not ternary"):
        AutoModel.from_pretrained(float_copy)


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_loading_without_the_plugin_fails_loudly(tiny_model_dirs, tmp_path):
    path = _saved(tiny_model_dirs, tmp_path)
    result = _run_python(f"""
        from transformers import AutoModel
        AutoModel.from_pretrained({path!r})
    """)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "ternary" in output and "mismatch" in output.lower()


def test_trust_remote_code_loads_without_import(tiny_model_dirs, tmp_path):
    path = _saved(tiny_model_dirs, tmp_path)
    assert os.path.isfile(os.path.join(path, "ternary_hf_autoload.py"))
    expected = tiny_hidden(AutoModel.from_pretrained(path), "bert")
    torch.save(tiny_inputs("bert"), tmp_path / "inputs.pt")
    result = _run_python(f"""
        import sys, torch
        from transformers import AutoModel
        assert "ternary_hf" not in sys.modules
        model = AutoModel.from_pretrained({path!r}, trust_remote_code=True).eval()
        assert type(model.encoder.layer[0].output.dense).__name__ == "TernaryLinear"
        with torch.no_grad():
            out = model(**torch.load({str(tmp_path / 'inputs.pt')!r})).last_hidden_state
        torch.save(out, {str(tmp_path / 'out.pt')!r})
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def test_a_layer_missing_from_the_checkpoint_gets_zero_weights_not_stale_memory(tiny_model_dirs, tmp_path, caplog):
    """sentence-transformers exports often drop BERT's pooler; it must still load and run."""
    from safetensors.torch import load_file, save_file

    from ternary_hf.quant.packing import ZERO_BYTE

    src = tmp_path / "no-pooler"
    shutil.copytree(tiny_model_dirs["bert"], src)
    state = load_file(str(src / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("pooler.")}, str(src / "model.safetensors"),
              metadata={"format": "pt"})
    with caplog.at_level("WARNING", logger="ternary_hf.integrations.quantizer"):
        model = AutoModel.from_pretrained(str(src), quantization_config=TernaryConfig())
    pooler = model.pooler.dense
    assert isinstance(pooler, TernaryLinear)
    assert bool((pooler.weight == ZERO_BYTE).all()) and not pooler.weight_scale.any() and not pooler.bias.any()
    assert "pooler.dense" in caplog.text
    out = model(**tiny_inputs("bert"))
    assert torch.isfinite(out.last_hidden_state).all() and not out.pooler_output.any()
    # the layers that were in the checkpoint are untouched by this
    full = AutoModel.from_pretrained(tiny_model_dirs["bert"], quantization_config=TernaryConfig())
    assert torch.equal(full.encoder.layer[0].attention.self.query.weight,
                       model.encoder.layer[0].attention.self.query.weight)


def test_folder_fingerprint_follows_the_weights_not_the_reads(tmp_path):
    from ternary_hf.utils.io import folder_fingerprint

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    first = folder_fingerprint(tmp_path)
    assert folder_fingerprint(str(tmp_path)) == first  # str or Path, same folder
    (tmp_path / "README.md").write_text("not a weight file")
    assert folder_fingerprint(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"x" * 11)
    assert folder_fingerprint(tmp_path) != first
    other = tmp_path / "copy"
    other.mkdir()
    (other / "config.json").write_text("{}")
    assert folder_fingerprint(other) != folder_fingerprint(tmp_path)


def _mlp_blocks(model):
    """(block, up-projection, activation attribute name) of each feed-forward block."""
    from ternary_hf.integrations.fusion import FUSION_PATTERNS

    return [(m, getattr(m, lin), act) for m in model.modules() for lin, act in FUSION_PATTERNS
            if hasattr(m, lin) and hasattr(m, act)]


@pytest.mark.parametrize("kind", KINDS)
def test_gelu_is_fused_into_the_up_projection_and_undone_by_dequantize(tiny_model_dirs, kind):
    from transformers.activations import GELUActivation

    from ternary_hf.integrations.fusion import FusedIntoLinear, unfuse_activations

    model = quantized_tiny(tiny_model_dirs[kind])
    blocks = _mlp_blocks(model)
    assert len(blocks) == 2  # one per layer of the tiny models
    assert all(isinstance(getattr(b, act), FusedIntoLinear) and lin.fused_activation == "gelu"
               for b, lin, act in blocks)
    fused_out = tiny_hidden(model, kind)
    assert not any("original" in name for name in model.state_dict())  # nothing saved changes
    # the same model with GELU as its own module: same result (the fused erf differs by ~1e-7, which
    # can move a rounding of the next layer's int8 activations by one step, hence the tolerance)
    reference = quantized_tiny(tiny_model_dirs[kind])
    assert unfuse_activations(reference) == 2
    assert all(type(getattr(b, act)) is GELUActivation and lin.fused_activation is None
               for b, lin, act in _mlp_blocks(reference))
    ref_out = tiny_hidden(reference, kind)
    cos = torch.nn.functional.cosine_similarity(fused_out.flatten(1), ref_out.flatten(1), dim=-1)
    assert bool((cos > 0.9999).all()), cos
    # dequantize puts the original activation back before the layers turn float
    model = model.dequantize()
    assert not any(isinstance(m, FusedIntoLinear) for m in model.modules())
    assert all(type(getattr(b, act)) is GELUActivation for b, _, act in _mlp_blocks(model))


def test_reference_path_applies_the_fused_gelu_exactly(tiny_model_dirs):
    """Without the kernel (autograd here), a fused layer computes torch's GELU of its own output."""
    _, linear, _ = _mlp_blocks(quantized_tiny(tiny_model_dirs["bert"]))[0]
    x = torch.randn(5, linear.in_features, requires_grad=True)  # requires_grad -> reference path
    fused = linear(x)
    linear.fused_activation = None
    assert torch.equal(fused, torch.nn.functional.gelu(linear(x)))
