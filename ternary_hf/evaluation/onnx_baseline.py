"""The CPU user's real alternative, as a baseline: ONNX Runtime with dynamic int8 weights.

sentence-transformers' ``backend="onnx"`` needs optimum-onnx, which pins transformers 4; so the model
is exported here with ``torch.onnx.export`` (from a copy of its own) and quantized with
``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations quantized at run time).
:class:`OnnxEncoder` then does what ``SentenceTransformer.encode`` does around the network: the
folder's tokenizer, mean pooling, L2 normalisation. :func:`onnx_int8_encoder` is the one set-up used by
``ternary-hf demo`` and ``ternary-hf bench --onnx``; needs ``pip install onnx onnxruntime`` (the ``onnx``
extra).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, MissingInputError
from ..utils.io import read_json

__all__ = ["OnnxEncoder", "export_onnx", "onnx_available", "onnx_int8_encoder"]


def onnx_available() -> tuple[bool, str]:
    """``(True, "")`` when onnx + onnxruntime import, else ``(False, what to install)``."""
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        return False, f"pip install {' '.join(missing)} (or the onnx extra: pip install 'ternary-hf[onnx]')"
    return True, ""


def _check_folder(model_dir: str | os.PathLike[str]) -> Path:
    """``model_dir`` if it has the files :class:`OnnxEncoder` reads besides the network."""
    model_dir = Path(model_dir)
    for name in ("tokenizer.json", "sentence_bert_config.json", "special_tokens_map.json"):
        if not (model_dir / name).is_file():
            raise MissingInputError(f"{model_dir / name} is missing: the ONNX baseline needs a saved "
                                    "sentence-transformers folder with a fast tokenizer")
    return model_dir


def onnx_int8_encoder(model_dir: str | os.PathLike[str], work_dir: str | os.PathLike[str],
                      threads: int | None = None, say: Callable[[str], None] | None = None) -> OnnxEncoder:
    """The float model in ``model_dir`` as ONNX Runtime with int8 weights, ready to ``encode``.

    The export and its int8 versions are kept in ``work_dir`` and reused when already there (a demo
    re-run does not export again). ``threads`` defaults to torch's thread count, so both engines are
    timed on the same cores; ``say`` is told before an export starts.

    Raises:
        MissingDependencyError: onnx / onnxruntime are not installed (the message says what to install).
    """
    ok, why = onnx_available()
    if not ok:
        raise MissingDependencyError(f"ONNX Runtime is not installed: {why}")
    import torch

    _check_folder(model_dir)
    if say is not None and not (Path(work_dir) / "model_int8.onnx").is_file():
        say(f"exporting {model_dir} to ONNX and quantizing it to int8 ...")
    paths = export_onnx(model_dir, work_dir)
    return OnnxEncoder(paths["int8"], model_dir, threads=threads or torch.get_num_threads())


def export_onnx(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Export the float model in ``model_dir`` to ``out_dir``/model.onnx and its int8 versions.

    Returns ``{"fp32": ..., "int8": ..., "uint8": ...}`` (``QInt8`` and ``QUInt8`` weights; on AVX2
    without VNNI ONNX Runtime's u8 path can be faster). Files appear only when complete (written
    under a temporary name, then renamed), so an interrupted export is redone, never half-used.
    """
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"fp32": out_dir / "model.onnx", "int8": out_dir / "model_int8.onnx", "uint8": out_dir / "model_uint8.onnx"}
    if all(p.is_file() for p in paths.values()):
        return paths
    model = AutoModel.from_pretrained(str(model_dir)).eval()  # a copy of its own: tracing can alter a model

    class _LastHidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(5, 1000, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    tmp = out_dir / "model.onnx.partial"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LastHidden(model), (ids, mask), str(tmp), input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"], opset_version=17, dynamo=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                          "last_hidden_state": {0: "batch", 1: "seq"}},
        )
    tmp.replace(paths["fp32"])
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime's quantizer logs a pre-processing hint on the root logger
    try:
        for key, weight_type in (("int8", QuantType.QInt8), ("uint8", QuantType.QUInt8)):
            partial = out_dir / f"{paths[key].name}.partial"
            quantize_dynamic(str(paths["fp32"]), str(partial), weight_type=weight_type)
            partial.replace(paths[key])
    finally:
        root.setLevel(level)
    return paths


class OnnxEncoder:
    """Tokenizer + ONNX Runtime session + mean pooling + L2 normalisation (what ``encode`` does).

    Uses the ``tokenizers`` library directly with the model folder's ``tokenizer.json``, truncation
    at ``max_seq_length`` and padding to the longest text of the batch; texts are sorted by length
    first, as ``SentenceTransformer.encode`` does.
    """

    def __init__(self, onnx_path: str | os.PathLike | None, model_dir: str | os.PathLike, threads: int | None = None,
                 session: object | None = None) -> None:
        """``session``: any object with ONNX Runtime's ``run(None, feeds)`` and ``get_inputs()`` (e.g. an
        OpenVINO compiled model behind an adapter, see ``benchmarks/_openvino.py``) instead of ``onnx_path``."""
        from tokenizers import Tokenizer

        if session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.session = session
        model_dir = _check_folder(model_dir)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        st_cfg = read_json(model_dir / "sentence_bert_config.json", hint="re-save the sentence-transformers folder")
        special = read_json(model_dir / "special_tokens_map.json", hint="re-save the sentence-transformers folder")
        pad = special.get("pad_token", "[PAD]")
        pad = pad["content"] if isinstance(pad, dict) else pad
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=int(st_cfg["max_seq_length"]))
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id(pad), pad_token=pad)
        self.input_names = {i.name for i in self.session.get_inputs()}

    def encode(self, texts: Sequence[str], batch_size: int = 32, **_: object) -> np.ndarray:
        """Normalised float32 embeddings, rows in the order of ``texts``."""
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out: list[np.ndarray | None] = [None] * len(texts)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            encs = self.tokenizer.encode_batch([texts[i] for i in idx])
            ids = np.array([e.ids for e in encs], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            hidden = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            for j, i in enumerate(idx):
                out[i] = pooled[j]
        return np.stack(out)  # type: ignore[arg-type]
