"""OpenVINO baselines for ``bench_encode.py``: the model at OpenVINO's default precision, and NNCF static int8.

Why here and not through optimum-intel: optimum-intel pins transformers < 5.6, which this stack is
past. So the float model is converted with ``openvino.convert_model`` on a wrapper whose
``forward(input_ids, attention_mask)`` returns ``last_hidden_state`` (dynamic batch and length), and
the int8 model is ``nncf.quantize`` of that graph calibrated on real sentences (``model_type=
TRANSFORMER``, NNCF's recipe for encoders). Tokenizer, mean pooling and normalisation are
``OnnxEncoder``'s, so every baseline does the same work around its network.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ternary_hf.evaluation.onnx_baseline import OnnxEncoder

__all__ = ["convert_openvino", "openvino_encoder"]


def _wrapper(model_dir: str) -> Any:
    import torch
    from transformers import AutoModel

    inner = AutoModel.from_pretrained(model_dir).eval()

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHidden()


def convert_openvino(model_dir: str, out_dir: Path, calibration: Sequence[str]) -> dict[str, Path]:
    """``{"fp": model.xml, "int8": model_int8.xml}`` in ``out_dir`` (made once; files appear complete)."""
    import openvino as ov
    import torch

    paths = {"fp": out_dir / "model.xml", "int8": out_dir / "model_int8.xml"}
    if all(p.is_file() for p in paths.values()):
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = torch.randint(5, 1000, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    shape = ov.PartialShape([-1, -1])
    with torch.no_grad():
        model = ov.convert_model(_wrapper(model_dir), example_input={"input_ids": ids, "attention_mask": mask},
                                 input=[("input_ids", shape, ov.Type.i64), ("attention_mask", shape, ov.Type.i64)])
    ov.save_model(model, str(out_dir / "model.partial.xml"))
    import nncf

    feeds = [_feeds(model_dir, [t]) for t in calibration]
    quantized = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(feeds))
    ov.save_model(quantized, str(out_dir / "model_int8.partial.xml"))
    for key, name in (("fp", "model.partial"), ("int8", "model_int8.partial")):
        for ext in (".bin", ".xml"):  # .xml last: its presence means the pair is complete
            os.replace(out_dir / f"{name}{ext}", paths[key].with_suffix(ext))
    return paths


def _feeds(model_dir: str, texts: list[str]) -> dict[str, np.ndarray]:
    enc = _tokenizer_of(model_dir)
    encs = enc.tokenizer.encode_batch(texts)
    return {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64)}


_TOKENIZERS: dict[str, OnnxEncoder] = {}


def _tokenizer_of(model_dir: str) -> OnnxEncoder:
    if model_dir not in _TOKENIZERS:
        _TOKENIZERS[model_dir] = OnnxEncoder(None, model_dir, session=_NoSession())
    return _TOKENIZERS[model_dir]


class _NoSession:
    def get_inputs(self) -> list[Any]:
        return []


class _Input:
    def __init__(self, name: str) -> None:
        self.name = name


class _OpenVinoSession:
    """ONNX Runtime's session interface over an OpenVINO compiled model (what ``OnnxEncoder`` calls)."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.names = [i.get_any_name() for i in compiled.inputs]

    def get_inputs(self) -> list[_Input]:
        return [_Input(n) for n in self.names]

    def run(self, _outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feeds)
        return [np.asarray(result[self.compiled.outputs[0]])]


def openvino_encoder(xml_path: str | Path, model_dir: str, threads: int) -> tuple[OnnxEncoder, str]:
    """(encoder, the inference precision OpenVINO picked) for one IR file, ``threads`` threads, one stream."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(xml_path), "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1})
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return OnnxEncoder(None, model_dir, threads, session=_OpenVinoSession(compiled)), precision
