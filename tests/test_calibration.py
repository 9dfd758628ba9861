"""GPTQ-style ternary calibration: the pure per-layer math, and the model walk on tiny models."""

from __future__ import annotations

import copy

import pytest
import torch

from ternary_hf import TernaryConfig
from ternary_hf.ptq.calibration import (
    _calibration_targets,
    _collect,
    _cut_short,
    calibrate_model,
    gptq_ternarize,
    output_error,
)
from ternary_hf.quant.ternarize import ternarize


def _correlated_inputs(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) * 0.3 + torch.eye(k)
    return (torch.randn(n, k, generator=g) @ mix) * torch.linspace(0.2, 3.0, k)


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize("method", ["calibrated", "twn"])
def test_gptq_has_lower_output_error_than_weight_rounding_on_correlated_inputs(method, granularity):
    for seed in range(3):
        x = _correlated_inputs(1500, 96, seed)
        h = x.t() @ x / x.shape[0]
        w = torch.randn(40, 96, generator=torch.Generator().manual_seed(seed + 10)) * 0.05
        plain = ternarize(w, method, granularity)
        gptq = gptq_ternarize(w, h, method, granularity)
        assert set(gptq.values.unique().tolist()) <= {-1, 0, 1}
        assert gptq.values.dtype == torch.int8 and gptq.values.shape == w.shape
        assert gptq.scale.shape == plain.scale.shape and bool((gptq.scale > 0).all())
        # measured on the inputs themselves: the rounding that looks at them must do better
        y = x @ w.t()
        err_plain = float(((y - x @ plain.dequantize().t()) ** 2).sum() / (y**2).sum())
        err_gptq = float(((y - x @ gptq.dequantize().t()) ** 2).sum() / (y**2).sum())
        assert err_gptq < 0.85 * err_plain
        assert output_error(w, gptq, h) == pytest.approx(err_gptq, rel=1e-3)


def test_act_order_and_second_pass_help():
    x = _correlated_inputs(2000, 128, 0)
    h = x.t() @ x / x.shape[0]
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(3)) * 0.05
    one = output_error(w, gptq_ternarize(w, h, act_order=False, passes=1), h)
    ordered = output_error(w, gptq_ternarize(w, h, act_order=True, passes=1), h)
    two = output_error(w, gptq_ternarize(w, h, act_order=True, passes=2), h)
    assert ordered < one and two <= ordered


def test_uncorrelated_inputs_give_plain_ternarization():
    """With H = I there is nothing to compensate: GPTQ must reduce to the weight rule itself."""
    w = torch.randn(24, 50, generator=torch.Generator().manual_seed(0))
    plain = ternarize(w, "calibrated")
    gptq = gptq_ternarize(w, torch.eye(50), "calibrated", damping=0.0, act_order=False)
    assert torch.equal(gptq.values, plain.values)
    assert torch.allclose(gptq.scale, plain.scale, rtol=1e-5)


@pytest.mark.parametrize("method", ["calibrated", "twn"])
def test_calibrated_values_survive_the_quantizer_rule(method):
    """The quantizer re-ternarizes alpha*T when the model is loaded: it must get alpha*T back."""
    x = _correlated_inputs(800, 64, 1)
    w = torch.randn(30, 64, generator=torch.Generator().manual_seed(2)) * 0.05
    gptq = gptq_ternarize(w, x.t() @ x / 800, method)
    again = ternarize(gptq.dequantize(), method)
    assert torch.equal(again.values, gptq.values)
    assert torch.allclose(again.scale, gptq.scale, rtol=1e-6)


def test_bad_arguments_are_refused():
    w, h = torch.randn(4, 8), torch.eye(8)
    with pytest.raises(ValueError, match="threshold method"):
        gptq_ternarize(w, h, "absmean")
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        gptq_ternarize(w, torch.eye(7))
    with pytest.raises(ValueError, match="NaN or inf"):
        gptq_ternarize(w, torch.full((8, 8), float("nan")))
    with pytest.raises(ValueError, match="damping"):
        gptq_ternarize(w, h, damping=-1.0)
    with pytest.raises(ValueError, match="threshold_method"):
        calibrate_model(torch.nn.Linear(3, 3), [{"input": torch.zeros(1, 3)}], TernaryConfig(threshold_method="paper"))


# ------------------------------------------------------------------------------------------- model walk
def _tiny_batches(kind: str, n: int = 8) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of 6 different random inputs (token ids or images), with some padding."""
    g = torch.Generator().manual_seed(7)
    batches = []
    for _ in range(n):
        if kind == "vit":
            batches.append({"pixel_values": torch.randn(6, 1, 16, 16, generator=g)})
            continue
        ids = torch.randint(5, 100, (6, 13), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 10:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def test_attention_projections_share_one_pass(tiny_model_dirs):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dirs["bert"]).eval()
    targets = _calibration_targets(model, TernaryConfig())
    batch = _tiny_batches("bert", 1)[0]
    group, hessian, count = _collect(lambda i: _cut_short(lambda: model(**batch)), 1, [batch["attention_mask"]],
                                     targets, set(), "encoder.layer.0.attention.self.query")
    assert group == [f"encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value")]
    assert count == 6 * 13 - 3  # the 3 padding positions are left out
    assert hessian.shape == (32, 32)


@pytest.mark.parametrize("kind", ["bert", "mpnet", "vit"])
def test_calibrated_model_tracks_the_float_model_better_and_reloads_exactly(kind, tiny_model_dirs, tmp_path):
    from transformers import AutoModel

    # float embeddings: at hidden size 32 the int4 table's error would swamp the linear layers' one
    config = TernaryConfig(embedding_storage=None)
    teacher = AutoModel.from_pretrained(tiny_model_dirs[kind]).eval()
    model = copy.deepcopy(teacher)
    batches = _tiny_batches(kind)
    report = calibrate_model(model, batches, config, show_progress_bar=False)
    n_linear = len(_calibration_targets(teacher, config))
    assert len(report.layers) + len(report.skipped) == n_linear
    assert all(after <= before + 1e-9 for before, after in report.layers.values())
    assert "calibrated" in report.summary()

    model.save_pretrained(tmp_path / "float")
    calibrated = AutoModel.from_pretrained(tmp_path / "float", quantization_config=config).eval()
    plain = AutoModel.from_pretrained(tiny_model_dirs[kind], quantization_config=config).eval()
    with torch.no_grad():  # on the calibration inputs, summed over all of them
        err_cal = err_plain = 0.0
        for inputs in batches:
            target = teacher(**inputs).last_hidden_state
            err_cal += float(((calibrated(**inputs).last_hidden_state - target) ** 2).mean())
            err_plain += float(((plain(**inputs).last_hidden_state - target) ** 2).mean())
    assert err_cal < err_plain
    # loading through the quantizer kept the calibrated values (the float weights are alpha*T)
    layer_name = next(iter(report.layers))
    loaded = calibrated.get_submodule(layer_name)
    original = model.get_submodule(layer_name).weight
    from ternary_hf.quant.packing import unpack_ternary

    values = unpack_ternary(loaded.weight, loaded.in_features, torch.float32)
    assert torch.allclose(values * loaded.weight_scale.reshape(-1, 1), original, rtol=1e-5, atol=1e-8)


def test_padding_does_not_change_the_calibration(tiny_model_dirs):
    from transformers import AutoModel

    teacher = AutoModel.from_pretrained(tiny_model_dirs["bert"]).eval()
    ids = torch.randint(5, 100, (4, 9), generator=torch.Generator().manual_seed(0))
    tight = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    padded_ids = torch.cat([ids, torch.zeros(4, 5, dtype=ids.dtype)], dim=1)
    padded_mask = torch.cat([torch.ones_like(ids), torch.zeros(4, 5, dtype=ids.dtype)], dim=1)
    padded = [{"input_ids": padded_ids, "attention_mask": padded_mask}]
    a, b = copy.deepcopy(teacher), copy.deepcopy(teacher)
    calibrate_model(a, tight, TernaryConfig(), show_progress_bar=False)
    calibrate_model(b, padded, TernaryConfig(), show_progress_bar=False)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("kind", ["bert", "mpnet", "vit"])
def test_block_by_block_replay_gives_the_full_forward_result_with_fewer_model_calls(kind, tiny_model_dirs,
                                                                                   monkeypatch):
    from transformers import AutoModel

    from ternary_hf.ptq import calibration

    teacher = AutoModel.from_pretrained(tiny_model_dirs[kind]).eval()
    batches = _tiny_batches(kind, 3)
    calls = {}

    def calibrated(replay: bool) -> torch.nn.Module:
        model = copy.deepcopy(teacher)
        counter = model.register_forward_pre_hook(lambda *_: calls.__setitem__(replay, calls.get(replay, 0) + 1))
        with monkeypatch.context() as patch:
            if not replay:
                patch.setattr(calibration, "_block_stack", lambda *_: None)
            calibrate_model(model, batches, TernaryConfig(), show_progress_bar=False)
        counter.remove()
        return model

    fast, slow = calibrated(True), calibrated(False)
    for (name, a), (_, b) in zip(fast.named_parameters(), slow.named_parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    n_targets = len(_calibration_targets(teacher, TernaryConfig()))
    assert calls[False] >= n_targets // 2 * len(batches)  # one cut-short model pass per layer group and batch
    assert calls[True] < calls[False] / 2


def test_blocks_that_cannot_be_replayed_fall_back_to_full_forwards(tiny_model_dirs, monkeypatch):
    from transformers import AutoModel

    from ternary_hf.ptq import calibration

    teacher = AutoModel.from_pretrained(tiny_model_dirs["bert"]).eval()
    batches = _tiny_batches("bert", 2)
    # a model passing extra state between blocks: replaying from the first block's inputs diverges
    monkeypatch.setattr(calibration, "_advance", lambda block, item: ((item[0][0] * 1.5, *item[0][1:]), item[1]))
    model = copy.deepcopy(teacher)
    report = calibrate_model(model, batches, TernaryConfig(), show_progress_bar=False)
    monkeypatch.undo()
    reference = copy.deepcopy(teacher)
    monkeypatch.setattr(calibration, "_block_stack", lambda *_: None)
    calibrate_model(reference, batches, TernaryConfig(), show_progress_bar=False)
    assert len(report.layers) == len(_calibration_targets(teacher, TernaryConfig()))
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
