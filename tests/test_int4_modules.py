"""``TernaryConfig.int4_modules``: the int4 rule and storage, the layer, loading and saving, the fast forward,
training."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import kernel_builds, quantized_tiny, tiny_hidden, tiny_inputs, tiny_sentences
from safetensors import safe_open
from sentence_transformers import SentenceTransformer
from torch import nn
from transformers import AutoModel

from ternary_hf import Int4Linear, Int8Linear, TernaryConfig, TernaryLinear
from ternary_hf.errors import InvalidInputError
from ternary_hf.hub.model_card import render_model_card
from ternary_hf.integrations.conversion import dequantize_model
from ternary_hf.integrations.fast_forward.engine import ENV, FastEncoder
from ternary_hf.quant.functional import quantize_activations_int8
from ternary_hf.quant.int4 import CLIP_GRID, pack_int4, quantize_weight_int4, unpack_int4
from ternary_hf.quant.int8 import dequantize_int8, int8_linear, quantize_weight_int8
from ternary_hf.train.config import DistillConfig
from ternary_hf.train.student import FakeIntLinear, build_student, with_int4_blocks, with_int8_blocks
from ternary_hf.train.text_distill import distill

FIRST = {"bert": "encoder.layer.0", "mpnet": "encoder.layer.0", "vit": "layers.0"}


def test_weight_rule_is_per_channel_in_seven_levels_each_side_with_the_best_clipping():
    torch.manual_seed(0)
    w = torch.randn(6, 40)
    w[1, 3] = 9.0  # an outlier: clipping it pays
    w[2] = 0.0
    values, scale = quantize_weight_int4(w)
    assert values.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (6,)
    assert int(values.abs().max()) == 7 and torch.equal(values[2], torch.zeros(40, dtype=torch.int8))
    assert scale[2] == 1.0
    error = (dequantize_int8(values, scale) - w).square().sum(dim=1)
    amax = w.abs().amax(dim=1, keepdim=True)
    for clip in CLIP_GRID:  # no clipping factor of the grid rounds any row with less error
        s = torch.where(amax > 0, amax * clip / 7, torch.ones_like(amax))
        other = (torch.round(w / s).clamp(-7, 7) * s - w).square().sum(dim=1)
        assert bool((error <= other + 1e-6).all())
    with pytest.raises(InvalidInputError, match="NaN"):
        quantize_weight_int4(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(InvalidInputError, match="2-D float"):
        quantize_weight_int4(torch.ones(3))


@pytest.mark.parametrize("k", [1, 2, 7, 64])
def test_two_values_per_byte_low_nibble_first_round_trip(k):
    values = torch.randint(-8, 8, (5, k), dtype=torch.int8, generator=torch.Generator().manual_seed(k))
    packed = pack_int4(values)
    assert packed.dtype == torch.int8 and packed.shape == (5, (k + 1) // 2)
    assert torch.equal(unpack_int4(packed, k), values)
    raw = packed.view(torch.uint8).to(torch.int16)
    low = torch.where((raw & 0xF) > 7, (raw & 0xF) - 16, raw & 0xF)
    assert torch.equal(low.to(torch.int8), values[:, 0::2])
    if k % 2:
        assert bool(((raw[:, -1] >> 4) == 0).all())  # the odd input's pad nibble is 0
    with pytest.raises(InvalidInputError, match=r"\[-8, 7\]"):
        pack_int4(torch.full((1, 2), 8, dtype=torch.int8))
    with pytest.raises(InvalidInputError, match="packed int4"):
        unpack_int4(packed, k + 2)


def test_layer_is_the_int8_map_of_its_unpacked_values():
    torch.manual_seed(2)
    linear = nn.Linear(33, 20)
    layer = Int4Linear.from_linear(linear)
    assert layer.weight.shape == (20, 17) and layer.weight.dtype == torch.int8
    values = layer.int8_values()
    assert values.shape == (20, 33) and int(values.abs().max()) <= 7
    x = torch.randn(3, 5, 33)
    assert torch.equal(layer(x), int8_linear(x, values, layer.weight_scale, layer.bias))
    assert torch.allclose(layer(x), linear(x), atol=0.2)
    back = layer.to_linear()
    assert torch.equal(back.weight, dequantize_int8(values, layer.weight_scale))
    with torch.no_grad():  # the unpacked values follow an in-place change of the stored weight
        layer.weight.zero_()
    assert int(layer.int8_values().abs().max()) == 0
    with pytest.raises(InvalidInputError, match="does not fit an Int4Linear"):
        layer.quantize_weight(torch.randn(20, 32))
    assert "weights=int4" in repr(layer)


def test_config_field_is_checked_round_trips_and_is_left_out_when_unset():
    config = TernaryConfig(int4_modules="encoder.layer.0")
    assert config.int4_modules == ["encoder.layer.0"] and config.int4_module_names() == ["encoder.layer.0"]
    assert TernaryConfig.from_dict(config.to_dict()) == config
    assert "int4_modules" not in TernaryConfig().to_dict()  # without int4 layers: readable by older versions
    with pytest.raises(InvalidInputError, match="int4_modules"):
        TernaryConfig(int4_modules=[""])


def test_a_layer_named_int8_and_int4_is_refused(tiny_model_dirs):
    with pytest.raises(InvalidInputError, match="both int8_modules .* and int4_modules"):
        quantized_tiny(tiny_model_dirs["bert"], int8_modules=["encoder.layer.0"],
                       int4_modules=["encoder.layer.0.output"])


@pytest.mark.parametrize("kind", ["bert", "mpnet", "vit"])
def test_named_layers_load_int4_and_reload_bit_identically(tiny_model_dirs, kind, tmp_path):
    first = FIRST[kind]
    model = quantized_tiny(tiny_model_dirs[kind], int4_modules=[first])
    float_model = AutoModel.from_pretrained(tiny_model_dirs[kind])
    float_linears = {n: m for n, m in float_model.named_modules() if type(m) is nn.Linear}
    int4 = {n: m for n, m in model.named_modules() if isinstance(m, Int4Linear)}
    assert int4 and all(n.startswith(first + ".") for n in int4)
    assert not any(type(m) is Int8Linear for m in model.modules())
    for name, module in int4.items():
        values, scale = quantize_weight_int4(float_linears[name].weight)
        assert torch.equal(module.int8_values(), values) and torch.equal(module.weight_scale, scale)
    out = tiny_hidden(model, kind)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["int4_modules"] == [first]
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        stored = {k: (f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in f.keys()}
    int8_stored = {k: shape for k, (dtype, shape) in stored.items() if dtype == "I8"}
    assert len(int8_stored) == len(int4)
    assert sorted(shape[1] for shape in int8_stored.values()) == sorted((m.in_features + 1) // 2 for m in int4.values())
    card = str(render_model_card(tmp_path, "tester/int4"))
    assert f"The modules matching `int4_modules` ({first}) store int4 weights" in card
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert torch.equal(tiny_hidden(reloaded, kind), out)
    assert sum(isinstance(m, Int4Linear) for m in reloaded.modules()) == len(int4)
    dequantize_model(reloaded)
    assert not any(isinstance(m, (Int8Linear, TernaryLinear)) for m in reloaded.modules())


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_fast_forward_runs_the_int4_block_in_the_kernel_encoder(tiny_model_dirs, kind, monkeypatch):
    from ternary_hf import kernels

    model = quantized_tiny(tiny_model_dirs[kind], int4_modules=[FIRST[kind]])
    fast = tiny_hidden(model, kind)
    engine = model.__dict__["_ternary_fast_forward"]
    assert engine.layers[0].qkv.int8 and engine.layers[0].up.int8  # the int8 GEMM path, on unpacked values
    if kernels.cpu_kernel_available() and kernels.int8_weights_available():
        assert engine.native.n_layers == 2
    monkeypatch.setattr(FastEncoder, "use_native", False)
    assert torch.equal(tiny_hidden(model, kind), fast)
    monkeypatch.setenv(ENV, "0")  # transformers' own forward through the modules
    mask = tiny_inputs(kind)["attention_mask"].bool()
    assert torch.allclose(tiny_hidden(model, kind)[mask], fast[mask], atol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_the_kernel_path_holds_each_weight_once(tiny_model_dirs, kind):
    # Packed int4 bytes stay (they are the checkpoint); beside them only the kernel's panels, one copy per
    # GEMM: no unpacked int8 values (one byte per weight) in the layers or the plan, no layer-owned panels
    # beside a concatenated copy.
    from ternary_hf import kernels

    if not (kernels.cpu_kernel_available() and kernels.int8_weights_available()):
        pytest.skip("no CPU kernel with int8 weights here")
    model = quantized_tiny(tiny_model_dirs[kind], int4_modules=[FIRST[kind]])
    out = tiny_hidden(model, kind)
    gemms = [g for layer in model.__dict__["_ternary_fast_forward"].layers for g in (layer.qkv, layer.o, layer.up,
                                                                                      layer.down)]
    assert all(g.prepared is not None and g._int8_values is None for g in gemms)
    assert all(m._values is None for m in model.modules() if isinstance(m, Int4Linear))
    for gemm in gemms:
        if len(gemm.modules) == 1:  # the layer's own panels, not a copy of them
            assert gemm.prepared.data_ptr() == gemm.modules[0].kernel_weight(kernels).data_ptr()
        else:
            assert all(m._prepared is None for m in gemm.modules)
    # the torch paths still find what they need (and keep it, since they multiply it on every call)
    layer = next(m for m in model.modules() if isinstance(m, Int4Linear))
    x = torch.randn(3, layer.in_features)
    assert torch.equal(layer(x), int8_linear(x, layer.int8_values(), layer.weight_scale, layer.bias))
    assert layer._values is not None
    assert torch.equal(tiny_hidden(model, kind), out)


def test_int4_blocks_name_the_first_encoder_blocks(tiny_model_dirs):
    bert = AutoModel.from_pretrained(tiny_model_dirs["bert"])
    assert with_int4_blocks(TernaryConfig(), bert, 1).int4_modules == ["encoder.layer.0"]
    assert with_int4_blocks(TernaryConfig(), bert, None).int4_modules == ["encoder.layer.0"]  # the lower half
    assert with_int4_blocks(TernaryConfig(), bert, 0).int4_modules is None
    assert with_int4_blocks(TernaryConfig(), bert, 0, 1).int4_modules == ["encoder.layer.1"]
    # one block always stays ternary: the last blocks give way first, then the first ones
    assert with_int4_blocks(TernaryConfig(), bert, 1, 1).int4_modules == ["encoder.layer.0"]
    assert with_int4_blocks(TernaryConfig(), bert, 2).int4_modules == ["encoder.layer.0"]
    assert with_int4_blocks(TernaryConfig(int8_modules=["encoder.layer.0"]), bert, 2).int4_modules is None
    with pytest.raises(InvalidInputError, match="int4_last_blocks=3, but BertModel has 2 encoder blocks"):
        with_int4_blocks(TernaryConfig(), bert, 0, 3)
    vit = AutoModel.from_pretrained(tiny_model_dirs["vit"])
    assert with_int4_blocks(TernaryConfig(), vit, 1).int4_modules == ["layers.0"]
    with pytest.raises(InvalidInputError, match="int4_blocks=3, but BertModel has 2 encoder blocks"):
        with_int4_blocks(TernaryConfig(), bert, 3)
    with pytest.warns(UserWarning, match="int4_blocks=1 ignored"):
        assert with_int4_blocks(TernaryConfig(), nn.Linear(2, 2), 1).int4_modules is None


@pytest.mark.parametrize("blocks, expected", [(6, [0, 1, 2, 5]), (12, [0, 1, 2, 3, 4, 5, 11]), (3, [0, 2]), (2, [0])])
def test_distillation_defaults_name_the_lower_half_and_the_last_block_int4(blocks, expected):
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=blocks, num_attention_heads=4,
                                 intermediate_size=37))
    defaults = DistillConfig()
    config = with_int8_blocks(TernaryConfig(), model, defaults.int8_blocks)
    config = with_int4_blocks(config, model, defaults.int4_blocks, defaults.int4_last_blocks)
    assert config.int4_modules == [f"encoder.layer.{i}" for i in expected]  # at least one block stays ternary
    assert config.int8_modules is None


def test_distillation_trains_int4_blocks_through_their_rounding_and_finalizes_them_int4(tiny_st_dir, tmp_path):
    teacher, config = AutoModel.from_pretrained(tiny_st_dir), TernaryConfig(int4_modules=["encoder.layer.0"])
    assert type(build_student(teacher, config).encoder.layer[0].output.dense) is nn.Linear  # float (--float-int-blocks)
    student = build_student(teacher, config, quantized_int_layers=True)
    assert isinstance(student.encoder.layer[0].output.dense, FakeIntLinear)
    assert student.encoder.layer[0].output.dense.bits == 4
    assert type(student.encoder.layer[1].output.dense).__name__ == "FakeTernaryLinear"
    cfg = DistillConfig(max_steps=2, batch_size=8, save_every=2, log_every=1, num_threads=1)  # the defaults
    assert cfg.int_blocks_qat
    distill(tiny_st_dir, tmp_path / "out", texts=tiny_sentences(40), config=cfg, show_progress_bar=False)
    packed = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    layers = packed[0].auto_model.encoder.layer
    assert [type(layer.output.dense) for layer in layers] == [Int4Linear, TernaryLinear]  # one stays ternary
    assert torch.isfinite(packed.encode(tiny_sentences(3), convert_to_tensor=True)).all()
    info = json.loads((tmp_path / "out" / "distillation.json").read_text())
    assert info["ternary_config"]["int4_modules"] == ["encoder.layer.0"] and info["config"]["int_blocks_qat"]


@pytest.mark.parametrize("bits", [4, 8])
def test_quantization_aware_layer_multiplies_what_the_finalized_layer_multiplies(bits):
    torch.manual_seed(0)
    linear = nn.Linear(48, 20)
    layer = FakeIntLinear(linear, bits, quantize_activations=True).eval()
    x = torch.randn(5, 48) * 3
    values, scale = (quantize_weight_int4 if bits == 4 else quantize_weight_int8)(linear.weight)
    with torch.no_grad():
        assert torch.allclose(layer(x), int8_linear(x, values, scale, linear.bias), atol=1e-5)
        # float activations when the config keeps them float
        plain = FakeIntLinear(linear, bits, quantize_activations=False)(x)
        assert torch.allclose(plain, x @ dequantize_int8(values, scale).t() + linear.bias, atol=1e-5)
    assert layer.to_linear().weight.equal(linear.weight)  # the latent weight, not the rounded one


def test_quantization_aware_layer_gradient_goes_straight_through_both_roundings():
    torch.manual_seed(1)
    layer = FakeIntLinear(nn.Linear(32, 8), 4, quantize_activations=True)
    x = torch.randn(6, 32, requires_grad=True)
    g = torch.randn(6, 8)
    layer(x).backward(g)
    q, s_x = quantize_activations_int8(x.detach())
    assert torch.allclose(layer.weight.grad, g.t() @ (q * s_x), atol=1e-5)  # grad_W = g.T @ (rounded x)
    assert torch.allclose(x.grad, g @ layer.quantized_weight(), atol=1e-5)  # grad_x through the rounded W
    assert torch.allclose(layer.bias.grad, g.sum(0))


def test_int4_training_searches_the_clipping_every_n_forwards_and_in_eval():
    torch.manual_seed(2)
    layer = FakeIntLinear(nn.Linear(64, 16), 4, quantize_activations=False, search_every=3)
    x = torch.randn(4, 64)

    def searched():
        values, scale = quantize_weight_int4(layer.weight)
        return dequantize_int8(values, scale)

    def kept(clip):  # the last search's factors on the current max|row|
        scale = clip * layer.weight.detach().abs().amax(dim=1) / 7
        return torch.round(layer.weight.detach() / scale[:, None]).clamp(-7, 7) * scale[:, None]

    layer(x)  # forward 1 searches
    clip = layer.clip.clone()
    with torch.no_grad():
        layer.weight.mul_(1.0 + 0.3 * torch.rand_like(layer.weight))  # the search would now pick other factors
    assert not torch.equal(searched(), kept(clip))
    assert torch.allclose(layer.quantized_weight(), kept(clip))  # between searches: the kept factors
    layer(x)
    layer(x)  # forward 3 searches again
    assert torch.allclose(layer.quantized_weight(), searched()) and not torch.equal(layer.clip, clip)
    with torch.no_grad():
        layer.weight.mul_(0.8)
    layer.eval()
    last = layer.clip.clone()
    assert torch.allclose(layer.quantized_weight(), searched())  # eval: exactly the finalized rule
    assert torch.equal(layer.clip, last)  # and training goes on with the factors it had
    with pytest.raises(InvalidInputError, match="int8 or int4"):
        FakeIntLinear(nn.Linear(4, 4), 2, quantize_activations=True)


def test_cli_int4_flag_reaches_the_saved_config_and_the_report(tiny_st_dir, tmp_path, capsys):
    from ternary_hf.cli import main

    out = tmp_path / "q"
    assert main(["quantize", tiny_st_dir, str(out), "--sentences", "0", "--int4", "encoder.layer.0"]) == 0
    counts = re.search(r"linear layers: (\d+) ternarized, (\d+) int4", capsys.readouterr().out)
    assert counts is not None and int(counts.group(2)) == 6 and int(counts.group(1)) > 0
    saved = json.loads((out / "config.json").read_text())["quantization_config"]
    assert saved["int4_modules"] == ["encoder.layer.0"]
    model = SentenceTransformer(str(out), device="cpu")[0].auto_model
    assert isinstance(model.encoder.layer[0].attention.self.query, Int4Linear)


# ----------------------------------------------------------------------------------- the kernel's int4 panels
def test_prepared_int4_layout_is_the_int8_layout_of_small_codes():
    from ternary_hf.kernels.layout import is_int8_prepared, prepare_int4_weight, prepare_int8_weight, prepared_to_int8

    values = torch.randint(-7, 8, (37, 70), dtype=torch.int8, generator=torch.Generator().manual_seed(5))
    prepared = prepare_int4_weight(values)
    assert prepared.dtype == torch.int8 and is_int8_prepared(prepared)
    assert torch.equal(prepared.view(torch.uint8).to(torch.int16) + 120, prepare_int8_weight(values).to(torch.int16))
    assert torch.equal(prepared_to_int8(prepared, 70, 37), values)
    with pytest.raises(ValueError, match=r"\[-7, 7\]"):
        prepare_int4_weight(torch.full((2, 2), -8, dtype=torch.int8))


@pytest.mark.parametrize(("m", "k", "n"), [(1, 37, 45), (3, 100, 3), (8, 300, 33), (17, 1030, 100), (64, 1536, 40)])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_int4_weights_give_the_torch_int8_bits(m, k, n, threads):
    from ternary_hf.kernels.layout import prepare_int4_weight

    g = torch.Generator().manual_seed(m + k + n)
    values = torch.randint(-7, 8, (n, k), dtype=torch.int8, generator=g)
    values[0] = 7  # extreme codes against extreme activations: the int16 bound of the AVX2 tile
    values[-1] = -7
    x = torch.randn(m, k, generator=g) * 3
    x[0] = 127.0
    if m > 2:
        x[1] = -127.0
    scale, bias = torch.rand(n, generator=g) + 0.01, torch.randn(n, generator=g)
    prepared = prepare_int4_weight(values)
    q, _ = quantize_activations_int8(x)
    exact = (q.to(torch.int64) @ values.to(torch.int64).t()).to(torch.int32)
    expected = int8_linear(x, values, scale, bias)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for build in kernel_builds():
            assert torch.equal(build.ternary_accumulators(x, prepared, k, n), exact), build.ISA
            assert torch.equal(build.ternary_linear(x, prepared, scale, bias, k, n, False), expected), build.ISA
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize(("threads", "reach_cap", "k"), [(1, 16, 1536), (2, 16, 1552), (1, 2, 1536)])
def test_kernel_int4_sums_stay_exact_where_rows_reach_the_int16_bound_at_different_blocks(threads, reach_cap, k):
    # Every weight 7 (code 15) against same-sign activations makes each int16 lane of the AVX2 tile as large
    # as it can get for its rows' sum(|q|), and outlier channels make that sum differ from row to row and
    # block to block: widening one block later than each row allows would wrap an int16 lane.
    g = torch.Generator().manual_seed(11)
    m, n = 29, 48  # k = 1552: an odd number of 16-input blocks (the reach sums them two at a time)
    values = torch.full((n, k), 7, dtype=torch.int8)
    values[n // 2:] = -7  # codes 1: the small end too
    x = torch.rand(m, k, generator=g) * torch.rand(m, 1, generator=g) ** 2
    for r in range(m):  # a few outlier channels per row scale its other codes down by different amounts
        x[r, torch.randint(0, k, (r % 5,), generator=g)] = 4.0 + r
    x[1::3] *= -1
    x[2, 512:1024] = 1.0  # a stretch of 127s in an otherwise small row
    from ternary_hf.kernels.layout import prepare_int4_weight

    prepared = prepare_int4_weight(values)
    q, _ = quantize_activations_int8(x)
    exact = (q.to(torch.int64) @ values.to(torch.int64).t()).to(torch.int32)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    builds = kernel_builds()
    defaults = [build._int4_reach_cap() for build in builds]
    try:
        for build in builds:
            with pytest.raises(ValueError, match="2 to 16"):  # a longer reach would outgrow the panel chunk
                build._set_int4_reach_cap(17)
            build._set_int4_reach_cap(reach_cap)  # 2: the worst case's widening, whatever the rows
            assert torch.equal(build.ternary_accumulators(x, prepared, k, n), exact), build.ISA
    finally:
        torch.set_num_threads(old)
        for build, cap in zip(builds, defaults, strict=True):
            build._set_int4_reach_cap(cap)
