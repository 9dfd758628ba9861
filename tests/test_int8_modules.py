"""``TernaryConfig.int8_modules``: the int8 rule, the layer, loading and saving, the fast forward, training."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import kernel_builds, quantized_tiny, tiny_hidden, tiny_inputs, tiny_sentences
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from torch import nn
from transformers import AutoModel

from ternary_hf import TernaryConfig, TernaryLinear
from ternary_hf.errors import InvalidInputError
from ternary_hf.hub.model_card import render_model_card
from ternary_hf.integrations.conversion import dequantize_model
from ternary_hf.integrations.fast_forward.engine import ENV, FastEncoder
from ternary_hf.integrations.int8_linear import Int8Linear
from ternary_hf.integrations.safetensors_checks import CheckpointError
from ternary_hf.quant.functional import quantize_activations_int8
from ternary_hf.quant.int8 import dequantize_int8, int8_linear, quantize_weight_int8
from ternary_hf.train.config import DistillConfig
from ternary_hf.train.student import build_student
from ternary_hf.train.text_distill import distill

LAST = {"bert": "encoder.layer.1", "mpnet": "encoder.layer.1", "vit": "layers.1"}


def test_weight_rule_is_symmetric_per_output_channel():
    torch.manual_seed(0)
    w = torch.randn(6, 13)
    w[2] = 0.0
    values, scale = quantize_weight_int8(w)
    assert values.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (6,)
    nonzero = [0, 1, 3, 4, 5]
    assert torch.equal(values[nonzero].abs().amax(dim=1), torch.full((5,), 127, dtype=torch.int8))
    assert torch.equal(values[2], torch.zeros(13, dtype=torch.int8)) and scale[2] == 1.0
    error = (dequantize_int8(values, scale) - w).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())
    with pytest.raises(InvalidInputError, match="NaN"):
        quantize_weight_int8(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(InvalidInputError, match="2-D float"):
        quantize_weight_int8(torch.ones(3, dtype=torch.float32))


def test_int8_linear_sums_exactly_on_cpu_and_agrees_without_int_mm(monkeypatch):
    torch.manual_seed(1)
    x = torch.randn(2, 5, 1536) * 3
    w = torch.randn(40, 1536)
    bias = torch.randn(40)
    values, scale = quantize_weight_int8(w)
    y = int8_linear(x, values, scale, bias)
    assert y.shape == (2, 5, 40)
    q, s_x = quantize_activations_int8(x)
    exact = (q.to(torch.int64) @ values.to(torch.int64).t()).to(torch.float32)  # int64: no rounding at K=1536
    assert torch.equal(y, exact * s_x * scale + bias)
    monkeypatch.delattr(torch, "_int_mm")  # the device-agnostic float path
    assert torch.allclose(int8_linear(x, values, scale, bias), y, rtol=1e-5, atol=1e-4)
    floats = int8_linear(x, values, scale, bias, quantize_activations=False)
    assert torch.allclose(floats, x @ dequantize_int8(values, scale).t() + bias, rtol=1e-5, atol=1e-4)


def test_layer_from_linear_and_back():
    torch.manual_seed(2)
    linear = nn.Linear(24, 8)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(3, 24)
    assert torch.allclose(layer(x), linear(x), atol=0.05)
    back = layer.to_linear()
    assert torch.equal(back.weight, dequantize_int8(layer.weight, layer.weight_scale)) and torch.equal(back.bias,
                                                                                                       linear.bias)
    with pytest.raises(InvalidInputError, match="does not fit an Int8Linear"):
        layer.quantize_weight(torch.randn(8, 23))
    assert "weights=int8" in repr(layer)


def test_config_field_is_checked_and_round_trips():
    config = TernaryConfig(int8_modules="encoder.layer.5")
    assert config.int8_modules == ["encoder.layer.5"] and config.int8_module_names() == ["encoder.layer.5"]
    assert TernaryConfig.from_dict(config.to_dict()) == config
    assert TernaryConfig().int8_module_names() == []
    with pytest.raises(InvalidInputError, match="int8_modules"):
        TernaryConfig(int8_modules=[""])
    with pytest.raises(InvalidInputError, match="int8_modules entry"):
        TernaryConfig(int8_modules=["encoder.layer.("])
    with pytest.raises(InvalidInputError, match="int8_modules"):
        TernaryConfig(int8_modules=5)


@pytest.mark.parametrize("kind", ["bert", "mpnet", "vit"])
def test_named_layers_load_int8_and_reload_bit_identically(tiny_model_dirs, kind, tmp_path):
    last = LAST[kind]
    model = quantized_tiny(tiny_model_dirs[kind], int8_modules=[last])
    float_model = AutoModel.from_pretrained(tiny_model_dirs[kind])
    float_linears = {n: m for n, m in float_model.named_modules() if type(m) is nn.Linear}
    int8 = {n: m for n, m in model.named_modules() if isinstance(m, Int8Linear)}
    assert int8 and all(n.startswith(last + ".") for n in int8)
    assert any(isinstance(m, TernaryLinear) and n.startswith(last.replace("1", "0")) for n, m in model.named_modules())
    for name, module in int8.items():  # each holds exactly the int8 rule applied to the float weight
        values, scale = quantize_weight_int8(float_linears[name].weight)
        assert torch.equal(module.weight, values) and torch.equal(module.weight_scale, scale)
    out = tiny_hidden(model, kind)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["int8_modules"] == [last]
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    stored_int8 = [k for k, dtype in dtypes.items() if dtype == "I8"]  # (ViT's keys are renamed on save)
    assert len(stored_int8) == len(int8) and all(k.endswith(".weight") for k in stored_int8)
    card = str(render_model_card(tmp_path, "tester/int8"))
    assert f"The modules matching `int8_modules` ({last}) store int8 weights" in card
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert torch.equal(tiny_hidden(reloaded, kind), out)
    assert sum(isinstance(m, Int8Linear) for m in reloaded.modules()) == len(int8)
    dequantize_model(reloaded)
    assert not any(isinstance(m, (Int8Linear, TernaryLinear)) for m in reloaded.modules())


def test_modules_to_not_convert_wins_over_int8_modules(tiny_model_dirs):
    model = quantized_tiny(tiny_model_dirs["bert"], int8_modules=["encoder.layer.1"],
                      modules_to_not_convert=["encoder.layer.1.output"])
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if n.startswith("encoder.layer.1.")}
    assert kinds["encoder.layer.1.output.dense"] == "Linear"
    assert kinds["encoder.layer.1.intermediate.dense"] == "Int8Linear"


def test_a_wrong_dtype_for_an_int8_layer_names_the_tensor(tiny_model_dirs, tmp_path):
    quantized_tiny(tiny_model_dirs["bert"]).save_pretrained(tmp_path)  # every layer stored ternary (U8)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["int8_modules"] = ["encoder.layer.1.attention.self.query"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    # the file, not the edited list, is the record of how a layer was stored: it still loads ternary
    model = AutoModel.from_pretrained(tmp_path)
    assert isinstance(model.encoder.layer[1].attention.self.query, TernaryLinear)
    int8_dir = tmp_path / "int8"
    quantized_tiny(tiny_model_dirs["bert"], int8_modules=["encoder.layer.1"]).save_pretrained(int8_dir)
    tensors = load_file(str(int8_dir / "model.safetensors"))
    key = "encoder.layer.1.output.dense.weight"
    tensors[key] = tensors[key].float()
    save_file(tensors, str(int8_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"{key} is F32 .* stores it as I8"):
        AutoModel.from_pretrained(int8_dir)


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_fast_forward_runs_the_ternary_blocks_natively_and_the_int8_block_after(tiny_model_dirs, kind, monkeypatch):
    model = quantized_tiny(tiny_model_dirs[kind], int8_modules=[LAST[kind]])
    fast = tiny_hidden(model, kind)
    engine = model.__dict__["_ternary_fast_forward"]
    from ternary_hf import kernels
    from ternary_hf.kernels import cpu_kernel_available

    if cpu_kernel_available():  # block 1 (int8) in the kernel's encoder where the build multiplies int8
        assert engine.native.n_layers == (2 if kernels.int8_weights_available() else 1)
        assert engine.layers[1].qkv.int8 and engine.layers[1].up.int8
    monkeypatch.setattr(FastEncoder, "use_native", False)
    assert torch.equal(tiny_hidden(model, kind), fast)
    monkeypatch.setenv(ENV, "0")  # transformers' own forward through the modules
    mask = tiny_inputs(kind)["attention_mask"].bool()
    assert torch.allclose(tiny_hidden(model, kind)[mask], fast[mask], atol=1e-5)


def test_fast_forward_of_a_pre_ln_model_with_an_int8_block_matches_its_own_forward(tiny_model_dirs, monkeypatch):
    model = quantized_tiny(tiny_model_dirs["vit"], int8_modules=["layers.0"])
    fast = tiny_hidden(model, "vit")
    from ternary_hf import kernels

    native = model.__dict__["_ternary_fast_forward"].native
    if kernels.int8_weights_available():  # pre-LN: all blocks in the kernel's encoder, or none
        assert native.n_layers == 2
    else:
        assert native in (None, True)
    monkeypatch.setenv(ENV, "0")
    assert torch.allclose(tiny_hidden(model, "vit"), fast, atol=1e-5)


@pytest.mark.parametrize("qat", [True, False], ids=["quantization-aware", "float"])
def test_distillation_trains_int8_layers_and_finalizes_them_int8(tiny_st_dir, tmp_path, qat):
    from transformers import AutoModel as Auto

    config = TernaryConfig(int8_modules=["encoder.layer.1"])
    student = build_student(Auto.from_pretrained(tiny_st_dir), config, quantized_int_layers=qat)
    assert type(student.encoder.layer[1].output.dense).__name__ == ("FakeIntLinear" if qat else "Linear")
    assert type(student.encoder.layer[0].output.dense).__name__ == "FakeTernaryLinear"
    cfg = DistillConfig(max_steps=2, batch_size=8, save_every=2, log_every=1, num_threads=1, int_blocks_qat=qat)
    distill(tiny_st_dir, tmp_path / "out", texts=tiny_sentences(40), config=cfg, ternary_config=config,
            show_progress_bar=False)
    packed = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    encoder = packed[0].auto_model
    assert isinstance(encoder.encoder.layer[1].output.dense, Int8Linear)
    assert isinstance(encoder.encoder.layer[0].output.dense, TernaryLinear)
    assert torch.isfinite(packed.encode(tiny_sentences(3), convert_to_tensor=True)).all()
    info = json.loads((tmp_path / "out" / "distillation.json").read_text())
    assert info["ternary_config"]["int8_modules"] == ["encoder.layer.1"]


def test_cli_int8_flag_reaches_the_saved_config(tiny_st_dir, tmp_path, capsys):
    from ternary_hf.cli import main

    out = tmp_path / "q"
    assert main(["quantize", tiny_st_dir, str(out), "--sentences", "0", "--int8", "encoder.layer.1"]) == 0
    # the report counts the block's six linear layers as int8, not as ternarized
    counts = re.search(r"linear layers: (\d+) ternarized, (\d+) int8", capsys.readouterr().out)
    assert counts is not None and int(counts.group(2)) == 6 and int(counts.group(1)) > 0
    saved = json.loads((out / "config.json").read_text())["quantization_config"]
    assert saved["int8_modules"] == ["encoder.layer.1"]
    model = SentenceTransformer(str(out), device="cpu")[0].auto_model
    assert isinstance(model.encoder.layer[1].attention.self.query, Int8Linear)
    assert isinstance(model.encoder.layer[0].attention.self.query, TernaryLinear)


# ----------------------------------------------------------------------------------- the kernel's int8 panels
def test_prepared_int8_layout_round_trips_and_refuses_bad_values():
    from ternary_hf.kernels.layout import prepare_int8_weight, prepared_to_int8

    torch.manual_seed(3)
    for n, k in ((5, 3), (16, 16), (37, 70)):
        values = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        prepared = prepare_int8_weight(values)
        assert prepared.shape == (-(-n // 16), -(-k // 16), 256) and prepared.dtype == torch.uint8
        assert torch.equal(prepared_to_int8(prepared, k, n), values)
    # byte (p, kb, 64 s + 32 v + 4 j + i) holds w + 128 of output 16 p + 8 v + j, input 16 kb + 4 s + i
    values = torch.arange(40 * 50).remainder(255).sub(127).to(torch.int8).view(40, 50)
    prepared = prepare_int8_weight(values)
    assert int(prepared[1, 2, 64 * 3 + 32 * 1 + 4 * 5 + 2]) == int(values[16 + 8 + 5, 32 + 12 + 2]) + 128
    with pytest.raises(ValueError, match="-128"):
        prepare_int8_weight(torch.full((2, 2), -128, dtype=torch.int8))
    with pytest.raises(ValueError, match="2-D int8"):
        prepare_int8_weight(torch.zeros(2, 2))


@pytest.mark.parametrize(("m", "k", "n"), [(1, 37, 45), (3, 100, 3), (8, 300, 33), (17, 1030, 100), (64, 384, 200)])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_int8_weights_give_the_torch_int8_bits(m, k, n, threads):
    from ternary_hf.kernels.layout import prepare_int8_weight

    g = torch.Generator().manual_seed(m + k + n)
    values = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    values[0] = 127  # extreme codes: sums far beyond any int16 bound
    x = torch.randn(m, k, generator=g) * 3
    x[0] = 127.0
    if m > 2:
        x[1] = 0.0
    scale, bias = torch.rand(n, generator=g) + 0.01, torch.randn(n, generator=g)
    prepared = prepare_int8_weight(values)
    q, _ = quantize_activations_int8(x)
    exact = (q.to(torch.int64) @ values.to(torch.int64).t()).to(torch.int32)
    expected = int8_linear(x, values, scale, bias)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for build in kernel_builds():
            assert build.INT8_WEIGHTS
            assert torch.equal(build.ternary_accumulators(x, prepared, k, n), exact), build.ISA
            assert torch.equal(build.ternary_linear(x, prepared, scale, bias, k, n, False), expected), build.ISA
            gelu = build.ternary_linear(x, prepared, scale, bias, k, n, True)
            reference = torch.nn.functional.gelu(expected)
            assert bool(((gelu - reference).abs() <= 1e-6 * (reference.abs() + 1)).all()), build.ISA
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_the_int8_block_runs_in_the_kernel_encoder_and_team_forward(tiny_model_dirs, kind, monkeypatch):
    from conftest import native_encoder_forward

    from ternary_hf import kernels

    if not kernels.int8_weights_available():
        pytest.skip("the kernel build here does not multiply int8 weights")
    model = quantized_tiny(tiny_model_dirs[kind], int8_modules=[LAST[kind]])
    assert model.encoder.layer[1].intermediate.dense.fused_activation == "gelu"  # fused into the int8 layer
    native = tiny_hidden(model, kind)
    engine = model.__dict__["_ternary_fast_forward"]
    assert engine.native.n_layers == 2 and engine.layers[1].qkv.on_kernel(kernels)
    monkeypatch.setattr(FastEncoder, "use_native", False)
    assert torch.equal(tiny_hidden(model, kind), native)  # op by op, the same kernel GEMMs
    monkeypatch.undo()
    module = kernels.kernel_module()
    x = torch.randn(9, model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = module._team_forward_count()
        team = native_encoder_forward(module, engine, x)
        assert module._team_forward_count() == runs + 1
        module._set_team_forward(False)
        assert torch.equal(native_encoder_forward(module, engine, x), team)
    finally:
        module._set_team_forward(True)
        torch.set_num_threads(old)
    # a build without int8 weights (compiled by an older ternary-hf): the int8 block runs in torch after the
    # native ternary blocks
    monkeypatch.setattr(kernels, "int8_weights_available", lambda: False)
    model = quantized_tiny(tiny_model_dirs[kind], int8_modules=[LAST[kind]])
    torch_int8 = tiny_hidden(model, kind)
    assert model.__dict__["_ternary_fast_forward"].native.n_layers == 1
    mask = tiny_inputs(kind)["attention_mask"].bool()
    assert torch.allclose(torch_int8[mask], native[mask], atol=1e-5)  # GELU: torch's erf vs the kernel's


def test_int8_blocks_name_the_last_encoder_blocks(tiny_model_dirs):
    from transformers import AutoModel as Auto

    from ternary_hf.train.student import with_int8_blocks

    bert = Auto.from_pretrained(tiny_model_dirs["bert"])
    assert with_int8_blocks(TernaryConfig(), bert, 1).int8_modules == ["encoder.layer.1"]
    assert with_int8_blocks(TernaryConfig(), bert, 2).int8_modules == ["encoder.layer.0", "encoder.layer.1"]
    mine = TernaryConfig(int8_modules=["pooler"])
    assert with_int8_blocks(mine, bert, 1).int8_modules == ["pooler", "encoder.layer.1"]
    assert mine.int8_modules == ["pooler"]  # not modified
    assert with_int8_blocks(mine, bert, 0) is mine
    vit = Auto.from_pretrained(tiny_model_dirs["vit"])
    assert with_int8_blocks(TernaryConfig(), vit, 1).int8_modules == ["layers.1"]
    with pytest.raises(InvalidInputError, match="int8_blocks=3, but BertModel has 2 encoder blocks"):
        with_int8_blocks(TernaryConfig(), bert, 3)
    with pytest.warns(UserWarning, match="int8_blocks=1 ignored.*Linear"):
        assert with_int8_blocks(TernaryConfig(), nn.Linear(2, 2), 1).int8_modules is None


@pytest.mark.parametrize("blocks", [0, 1])
def test_distillation_int8_blocks_keep_the_last_blocks_int8(tiny_st_dir, tmp_path, blocks):
    cfg = DistillConfig(max_steps=1, batch_size=8, save_every=1, log_every=1, num_threads=1, int8_blocks=blocks,
                        int4_blocks=0, int4_last_blocks=0)
    assert DistillConfig().int8_blocks == 0  # the default keeps int4 blocks instead (test_int4_modules)
    distill(tiny_st_dir, tmp_path / "out", texts=tiny_sentences(20), config=cfg, show_progress_bar=False)
    encoder = SentenceTransformer(str(tmp_path / "out"), device="cpu")[0].auto_model
    kinds = {type(layer.output.dense) for layer in encoder.encoder.layer}
    assert kinds == ({TernaryLinear} if blocks == 0 else {TernaryLinear, Int8Linear})
    assert isinstance(encoder.encoder.layer[1].output.dense, TernaryLinear if blocks == 0 else Int8Linear)
