"""Layer-wise teacher forcing: student layers see the teacher's inputs, the loss compares layer outputs."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import tiny_inputs, tiny_sentences
from torch import nn

from ternary_hf import TernaryConfig
from ternary_hf.distill import DistillConfig, distill
from ternary_hf.train.student import build_student
from ternary_hf.train.teacher_forcing import LayerwiseTeacherForcing, find_layer_list


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_each_student_layer_gets_the_teachers_input_to_it(tiny_model_dirs, kind):
    import copy

    from transformers import AutoModel

    teacher = AutoModel.from_pretrained(tiny_model_dirs[kind]).eval()
    # a student equal to the teacher but for its first layer: free-running, every later layer's
    # output differs; teacher-forced, only the first one does
    student = copy.deepcopy(teacher)
    _, layers = find_layer_list(student)
    with torch.no_grad():
        for p in layers[0].parameters():
            p.add_(0.05 * torch.randn_like(p))
    inputs = tiny_inputs(kind)
    with torch.no_grad():
        free = student(**inputs, output_hidden_states=True).hidden_states
        t_hidden = teacher(**inputs, output_hidden_states=True).hidden_states
    assert all(not torch.allclose(free[i], t_hidden[i], atol=1e-4) for i in range(1, len(free)))
    forcing = LayerwiseTeacherForcing(student, teacher)
    forcing.enabled = True
    with torch.no_grad():
        teacher(**inputs)
        student(**inputs)
    pairs = forcing.pairs()
    assert len(pairs) == len(layers) == teacher.config.num_hidden_layers
    for i, (s_out, t_out) in enumerate(pairs):
        assert torch.allclose(t_out, t_hidden[i + 1], atol=1e-6)  # what the teacher's layer i produced
        if i == 0:
            assert torch.allclose(s_out, free[1], atol=1e-6)  # same input (the embeddings) as free-running
            assert not torch.allclose(s_out, t_out, atol=1e-4)
        else:
            assert torch.allclose(s_out, t_out, atol=1e-5), i  # identical layer fed the teacher's input
    # switched off, the hooks leave the end-to-end forward alone
    forcing.enabled = False
    with torch.no_grad():
        assert torch.equal(student(**inputs).last_hidden_state, free[-1])
    forcing.remove()
    forcing.enabled = True  # removed hooks do nothing even if re-enabled
    with torch.no_grad():
        assert torch.equal(student(**inputs).last_hidden_state, free[-1])


def test_student_before_the_teacher_and_unsupported_models_are_errors(tiny_model_dirs):
    from transformers import AutoModel

    teacher = AutoModel.from_pretrained(tiny_model_dirs["bert"]).eval()
    student = build_student(teacher, TernaryConfig())
    forcing = LayerwiseTeacherForcing(student, teacher)
    forcing.enabled = True
    with pytest.raises(RuntimeError, match="run the teacher"):
        student(**tiny_inputs("bert"))
    with pytest.raises(RuntimeError, match="needs one teacher and one student forward"):
        forcing.pairs()
    with pytest.raises(ValueError, match="teacher_forcing=0"):
        find_layer_list(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="0 <= teacher_forcing < 1"):
        DistillConfig(teacher_forcing=1.0)


def test_forced_phase_then_end_to_end_and_the_finalized_model_has_no_hooks(tiny_st_dir, tmp_path):
    cfg = DistillConfig(max_steps=6, batch_size=8, save_every=3, log_every=1, num_threads=1, teacher_forcing=0.5)
    result = distill(tiny_st_dir, tmp_path / "out", texts=tiny_sentences(80), config=cfg, show_progress_bar=False)
    assert result.steps == 6
    with open(tmp_path / "out.work" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    forced = [r for r in rows if r["teacher_forced_mse"]]
    assert [int(r["step"]) for r in forced] == [1, 2, 3]
    assert all(r["hidden_mse"] == "" for r in forced)
    assert all(r["teacher_forced_mse"] == "" and float(r["hidden_mse"]) > 0 for r in rows[3:])
    # the layer-wise loss falls while it trains (same teacher, tiny model, lr 5e-4)
    assert float(forced[-1]["teacher_forced_mse"]) < float(forced[0]["teacher_forced_mse"])
