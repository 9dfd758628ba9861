"""One call from a float model folder (or repo id) to a saved ternary folder, with the numbers that matter.

:func:`quantize_folder` is what ``ternary-hf quantize`` runs: it loads the source through the quantizer
(layer by layer, never a full float copy in memory), measures the size ratio and the mean cosine between
teacher and ternary sentence embeddings on real text, and writes the model and its report into a staging
folder that is renamed into place only when complete (:func:`ternary_hf.utils.io.staged_folder`: an
interrupted run leaves nothing half-written, and the folder gets normal permissions). Inputs that would
lose data or report nonsense are refused before any work: an output that is, contains or lies inside
the source, and a source that is already ternary.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError, MissingInputError
from ..integrations.config import TernaryConfig
from ..integrations.int4_linear import Int4Linear
from ..integrations.int8_linear import Int8Linear
from ..integrations.modules import QuantizedEmbedding, TernaryLinear
from ..utils.io import atomic_write_json, check_output_folder, read_json, staged_folder, weight_files_bytes

__all__ = [
    "QuantizeReport",
    "check_source_and_output",
    "is_sentence_transformers_folder",
    "linear_layer_bytes",
    "load_encoder",
    "quantize_folder",
]

logger = logging.getLogger(__name__)
_OVERWRITE_HINT = "pass overwrite=True (CLI: --overwrite) to replace it"


@dataclass
class QuantizeReport:
    """What :func:`quantize_folder` did, JSON-ready."""

    source: str
    output: str
    config: dict[str, Any]
    source_bytes: int
    output_bytes: int
    size_ratio: float
    linear_fp32_bytes: int
    linear_ternary_bytes: int
    linear_ratio: float
    n_linear: int
    n_embedding: int
    n_int8: int = 0  # of the n_linear layers, those stored int8 (TernaryConfig.int8_modules)
    n_int4: int = 0  # of the n_linear layers, those stored int4 (TernaryConfig.int4_modules)
    mean_cosine: float | None = None
    min_cosine: float | None = None
    n_sentences: int = 0
    calibration: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        int8 = f", {self.n_int8} int8" if self.n_int8 else ""
        int8 += f", {self.n_int4} int4" if self.n_int4 else ""
        lines = [
            f"source:        {self.source}",
            f"output:        {self.output}",
            f"weights:       {self.source_bytes / 1e6:.1f} MB -> {self.output_bytes / 1e6:.1f} MB "
            f"(size ratio {self.size_ratio:.3f}x)",
            f"linear layers: {self.n_linear - self.n_int8 - self.n_int4} ternarized{int8}, "
            f"{self.linear_fp32_bytes / 1e6:.1f} MB fp32 -> "
            f"{self.linear_ternary_bytes / 1e6:.2f} MB (linear-only ratio {self.linear_ratio:.3f}x)",
            f"embeddings:    {self.n_embedding} tables stored as {self.config.get('embedding_storage')}",
        ]
        if self.mean_cosine is not None:
            lines.append(
                f"teacher vs ternary: mean cosine {self.mean_cosine:.4f} (min {self.min_cosine:.4f}) "
                f"on {self.n_sentences} real sentences"
            )
        if self.calibration:
            lines.append(f"calibration:   {self.calibration}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def is_sentence_transformers_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sentence-transformers folder (it has ``modules.json``)."""
    return Path(path, "modules.json").is_file()


def _config_files(folder: Path) -> list[Path]:
    """``config.json`` of a transformers folder, and of a sentence-transformers folder's first module."""
    found = [folder / "config.json"]
    modules = read_json(folder / "modules.json", missing=[], invalid=[])
    if isinstance(modules, list):
        found += [folder / m["path"] / "config.json" for m in modules if isinstance(m, dict) and m.get("path")]
    return [p for p in found if p.is_file()]


def _is_ternary_folder(folder: Path) -> bool:
    for path in _config_files(folder):
        config = read_json(path, missing=None, invalid=None)
        qcfg = (config.get("quantization_config") or {}) if isinstance(config, dict) else {}
        if isinstance(qcfg, dict) and qcfg.get("quant_method") == "ternary":
            return True
    return False


def check_source_and_output(source: str, output: str | os.PathLike) -> None:
    """Refuse, before any work, a quantization that would destroy its source or report nonsense.

    Raises:
        MissingInputError: ``source`` is a folder but not a model folder.
        InvalidInputError: ``output`` is ``source``, holds it or lies inside it (after resolving symlinks;
            writing the output whole would delete the float model), or ``source`` is already ternary.
    """
    if not os.path.isdir(source):
        return  # a Hub repo id
    src, out = Path(os.path.realpath(source)), Path(os.path.realpath(output))
    if out == src or src.is_relative_to(out) or out.is_relative_to(src):
        where = "is" if out == src else ("contains" if src.is_relative_to(out) else "is inside")
        raise InvalidInputError(f"the output folder {output} {where} the source folder {source}; writing it would "
                                "delete the float model: choose an output outside the source")
    if not (src / "config.json").is_file() and not is_sentence_transformers_folder(src):
        raise MissingInputError(f"{source} is neither a transformers folder (config.json) nor a sentence-transformers "
                                "folder (modules.json)")
    if _is_ternary_folder(src):
        raise InvalidInputError(f"{source} is already a ternary model (its config.json has a ternary "
                                "quantization_config): use it as it is, or quantize the float model it came from")


def load_encoder(source: str, config: TernaryConfig | None = None, device: str = "cpu"):
    """Load ``source`` as a SentenceTransformer (a plain transformers folder gets mean pooling).

    With ``config`` the model is ternarized on the fly; a ternary folder loads as it is.
    """
    from sentence_transformers import SentenceTransformer

    model_kwargs = {"quantization_config": config} if config is not None else {}
    return SentenceTransformer(source, device=device, model_kwargs=model_kwargs)


def _auto_model(encoder) -> torch.nn.Module:
    return encoder[0].auto_model


def linear_layer_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """``(fp32 bytes, stored bytes)`` of the quantized linear layers of ``model`` (ternary, int8 and
    int4; weights and scales)."""
    fp32 = stored = 0
    for module in model.modules():
        if isinstance(module, (TernaryLinear, Int8Linear)):
            fp32 += module.in_features * module.out_features * 4
            stored += module.weight.numel() * module.weight.element_size()
            stored += module.weight_scale.numel() * module.weight_scale.element_size()
    return fp32, stored


def _mean_cosine(teacher, student, sentences: list[str], batch_size: int) -> tuple[float, float]:
    kwargs = dict(batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    a = teacher.encode(sentences, **kwargs)
    b = student.encode(sentences, **kwargs)
    cos = (a * b).sum(dim=-1)
    return float(cos.mean()), float(cos.min())


def quantize_folder(
    source: str,
    output: str | os.PathLike,
    config: TernaryConfig | None = None,
    sentences: list[str] | None = None,
    num_sentences: int = 300,
    batch_size: int = 32,
    overwrite: bool = False,
    device: str = "cpu",
    calibration_texts: int | list[str] | None = None,
    show_progress_bar: bool = True,
) -> QuantizeReport:
    """Ternarize ``source`` (a transformers or sentence-transformers folder, or a Hub repo id) into ``output``.

    Args:
        source: model folder or repo id.
        output: folder to create; it must not exist unless ``overwrite``, and must not be, hold or lie
            inside ``source``.
        config: the :class:`TernaryConfig` (defaults to ``TernaryConfig()``).
        sentences: texts for the teacher-vs-ternary cosine; by default ``num_sentences`` real
            sentences from :func:`ternary_hf.data.real_sentences` (skipped with a note if the data
            package cannot be fetched; 0 skips the check).
        batch_size: texts per forward pass (cosine check and calibration).
        overwrite: replace an existing ``output``.
        calibration_texts: ternarize each layer to preserve its outputs on real text (GPTQ on the
            ternary grid, :mod:`ternary_hf.ptq.calibration`) instead of rounding its weights: a number of
            texts from the bundled training corpora, or the texts themselves. Slower, and much closer to
            the float model.

    Returns:
        A :class:`QuantizeReport`; also written to ``output/ternary_quantize.json``.

    Raises:
        InvalidInputError: a bad count, an output that would overwrite the source, an already ternary source.
        MissingInputError: ``source`` is a folder but not a model folder.
        OutputExistsError: ``output`` exists and ``overwrite`` is not set.
    """
    config = config or TernaryConfig()
    _check_counts(num_sentences=num_sentences, batch_size=batch_size)
    check_source_and_output(source, output)
    output = check_output_folder(output, overwrite=overwrite, hint=_OVERWRITE_HINT)
    notes: list[str] = []
    calibration_summary = None
    if calibration_texts is not None:
        student, calibration_summary = _load_calibrated(source, config, device, calibration_texts, batch_size,
                                                        show_progress_bar)
    else:
        student = load_encoder(source, config, device)
    model = _auto_model(student)
    if not getattr(model, "is_quantized", False):
        raise RuntimeError(f"{source} did not load as a ternary model; is ternary_hf registered?")
    with staged_folder(output, overwrite=overwrite, hint=_OVERWRITE_HINT) as staging:
        student.save(str(staging))
        report = _report(source, output, staging, config, model, calibration_summary, notes)
        if sentences is None and num_sentences > 0:
            try:
                from ..data.corpora import real_sentences

                sentences = real_sentences(num_sentences)
            except Exception as exc:  # data package unreachable: the model is still written
                notes.append(f"teacher-vs-ternary cosine skipped: {exc}")
        if sentences:
            teacher = load_encoder(source, None, device)
            report.mean_cosine, report.min_cosine = _mean_cosine(teacher, student, sentences, batch_size)
            report.n_sentences = len(sentences)
        atomic_write_json(staging / "ternary_quantize.json", report.to_dict())
    return report


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        low = 0 if name == "num_sentences" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")


def _report(source: str, output: Path, saved: Path, config: TernaryConfig, model: torch.nn.Module,
            calibration: str | None, notes: list[str]) -> QuantizeReport:
    """The size facts of the model saved in ``saved`` (the staging folder that becomes ``output``)."""
    source_dir = source if os.path.isdir(source) else _resolved_dir(source)
    src_bytes = weight_files_bytes(source_dir) if source_dir else 0
    out_bytes = weight_files_bytes(saved)
    fp32, stored = linear_layer_bytes(model)
    return QuantizeReport(
        source=str(source), output=str(output), config=config.to_dict(),
        source_bytes=src_bytes, output_bytes=out_bytes,
        size_ratio=out_bytes / src_bytes if src_bytes else float("nan"),
        linear_fp32_bytes=fp32, linear_ternary_bytes=stored, linear_ratio=stored / fp32 if fp32 else float("nan"),
        n_linear=sum(isinstance(m, (TernaryLinear, Int8Linear)) for m in model.modules()),
        n_embedding=sum(isinstance(m, QuantizedEmbedding) for m in model.modules()),
        n_int8=sum(type(m) is Int8Linear for m in model.modules()),
        n_int4=sum(isinstance(m, Int4Linear) for m in model.modules()),
        calibration=calibration, notes=notes,
    )


def _load_calibrated(source: str, config: TernaryConfig, device: str, texts: int | list[str], batch_size: int,
                     show_progress_bar: bool):
    """``(ternary encoder, summary)``: ``source`` calibrated in float, then loaded through the quantizer.

    The calibrated float weights are ``alpha * T``, which the quantizer maps to themselves, so the
    packed model holds exactly the calibrated values (written through a temporary float folder)."""
    from .calibration import calibrate_model

    if isinstance(texts, int):
        if isinstance(texts, bool) or texts < 1:
            raise InvalidInputError(f"calibration_texts must be >= 1, got {texts}")
        from ..data.corpora import default_distillation_texts

        texts = default_distillation_texts(limit=texts)
    if not texts:
        raise InvalidInputError("calibration_texts is empty")
    encoder = load_encoder(source, None, device)
    model = _auto_model(encoder)
    tokenizer = encoder[0].tokenizer
    max_length = min(encoder.max_seq_length or 128, 128)
    ordered = sorted(texts, key=len)  # little padding per batch
    batches = [dict(tokenizer(ordered[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)) for i in range(0, len(ordered), batch_size)]
    report = calibrate_model(model, batches, config, show_progress_bar=show_progress_bar)
    with tempfile.TemporaryDirectory(prefix=".calibrated.") as tmp:
        encoder.save(tmp)
        student = load_encoder(tmp, config, device)
        # the quantizer has read everything it needs; nothing points into tmp afterwards
    return student, report.summary()


def _resolved_dir(repo_id: str) -> str | None:
    """Local snapshot folder of a Hub repo already in the cache (for the size ratio)."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:
        return None
