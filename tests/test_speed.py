"""Side-by-side encode timing (ternary_hf.evaluation.speed) and the ``ternary-hf bench`` command."""

from __future__ import annotations

import json
import time

import pytest

from ternary_hf.cli import main
from ternary_hf.evaluation.speed import measure_encode_speed


class _Sleeper:
    """Takes ``per_text`` seconds per text; records the batch sizes it was called with."""

    def __init__(self, per_text: float):
        self.per_text, self.calls = per_text, []

    def encode(self, texts, batch_size=32, **_):
        self.calls.append((len(texts), batch_size))
        time.sleep(self.per_text * len(texts))
        return [[0.0]] * len(texts)


def test_ratios_reflect_the_relative_speed_and_rounds_interleave():
    fast, slow = _Sleeper(0.001), _Sleeper(0.003)
    result = measure_encode_speed({"slow": slow, "fast": fast}, ["t"] * 40, batch_size=8, rounds=2,
                                  latency_sentences=3)
    assert list(result.sentences_per_s) == ["slow", "fast"]
    assert 1.5 < result.ratio("fast", "slow") < 3.5  # 3x by construction, sleeping only adds
    assert result.sentences_per_s["fast"] <= 1000 * 1.01  # cannot beat its own sleep
    # warm-up batch, two full rounds, three single sentences each
    assert fast.calls == [(8, 8), (40, 8), (40, 8), (1, 1), (1, 1), (1, 1)]
    assert set(result.batch1_ms) == {"slow", "fast"} and result.batch1_ms["slow"] > result.batch1_ms["fast"]
    table = result.table("slow")
    assert "| fast |" in table and "vs slow" in table and result.ratio("fast", "missing") is None


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least one encoder"):
        measure_encode_speed({}, ["a"])
    with pytest.raises(ValueError, match="at least one text"):
        measure_encode_speed({"a": _Sleeper(0)}, [])
    with pytest.raises(ValueError, match="rounds"):
        measure_encode_speed({"a": _Sleeper(0)}, ["a"], rounds=0)


def test_cli_bench_prints_the_table_and_writes_json(tiny_st_dir, tmp_path, capsys):
    out = tmp_path / "speed.json"
    code = main(["bench", tiny_st_dir, "--teacher", tiny_st_dir, "--sentences", "20", "--rounds", "1",
                 "--latency", "2", "--batch-size", "8", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "20 real sentences, batch 8" in text and "| teacher (FP32) |" in text and "1.00x" in text
    data = json.loads(out.read_text())
    assert data["n_sentences"] == 20 and len(data["sentences_per_s"]) == 2 and len(data["batch1_ms"]) == 2


def test_cli_bench_errors_say_what_to_do(tiny_st_dir, tmp_path, capsys):
    assert main(["bench", tiny_st_dir, "--onnx"]) == 1
    assert "give --teacher" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "missing")]) == 1
    assert "is not a model folder" in capsys.readouterr().err


def test_cli_bench_onnx_names_what_the_teacher_folder_lacks_before_exporting(tiny_st_dir, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["bench", tiny_st_dir, "--teacher", tiny_st_dir, "--onnx", "--sentences", "4"]) == 1
    err = capsys.readouterr().err
    assert "sentence_bert_config.json is missing" in err and "Traceback" not in err
