"""The files an index keeps beside FAISS: rescoring vectors and the documents (id and text) of each row.

Why on disk: a streamed build must not hold the corpus's float vectors or texts in memory, so both are
appended to files chunk by chunk and read back by position (the vectors memory-mapped, the documents
by byte offset). Both stores are append-only; an index loaded from a folder copies them to its working
folder before the first write, so the saved folder stays as it was.
"""

from __future__ import annotations

import json
import shutil
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError

__all__ = ["DOCUMENTS_FILE", "RESCORE_DTYPES", "DocumentStore", "RescoreStore"]

DOCUMENTS_FILE = "documents.jsonl"
#: rescoring dtype -> numpy dtype of the file (little-endian, row-major)
RESCORE_DTYPES = {"float32": "<f4", "float16": "<f2", "int8": "i1"}
_RESCORE_SUFFIX = {"float32": "f32", "float16": "f16", "int8": "i8"}
_REBUILD = "the index folder is damaged; rebuild it (`ternary-hf search build` or SemanticIndex.save)"


class RescoreStore:
    """Rescoring vectors in a raw file, appended chunk by chunk and memory-mapped when read.

    int8 rows are stored as codes plus one float32 scale per row (``vector ~= codes * scale``,
    ``scale = max|v| / 127``).
    """

    def __init__(self, kind: str, dim: int, directory: Path, count: int = 0) -> None:
        self.kind, self.dim, self.directory, self.count = kind, dim, Path(directory), count
        self.dtype = np.dtype(RESCORE_DTYPES[kind])

    @property
    def filenames(self) -> list[str]:
        names = [f"rescore.{_RESCORE_SUFFIX[self.kind]}"]
        if self.kind == "int8":
            names.append("rescore_scales.f32")
        return names

    def check(self) -> None:
        """Refuse files whose size does not match ``count`` rows (a truncated or foreign file)."""
        sizes = [self.count * self.dim * self.dtype.itemsize, self.count * 4]
        for name, expected in zip(self.filenames, sizes, strict=False):
            path = self.directory / name
            actual = path.stat().st_size if path.is_file() else None
            if actual != expected:
                found = "is missing" if actual is None else f"has {actual} bytes"
                raise InvalidInputError(f"{path} {found}, expected {expected} for {self.count} rows; {_REBUILD}")

    def relocate(self, directory: Path) -> None:
        directory = Path(directory)
        for name in self.filenames:
            src = self.directory / name
            if src.exists():
                shutil.copyfile(src, directory / name)
        self.directory = directory

    def append(self, vectors: np.ndarray) -> None:
        if self.kind == "int8":
            scale = np.abs(vectors).max(axis=1) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            codes = np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8)
            with open(self.directory / self.filenames[0], "ab") as fh:
                fh.write(codes.tobytes())
            with open(self.directory / self.filenames[1], "ab") as fh:
                fh.write(scale.astype("<f4").tobytes())
        else:
            with open(self.directory / self.filenames[0], "ab") as fh:
                fh.write(vectors.astype(self.dtype).tobytes())
        self.count += len(vectors)

    def get(self, positions: np.ndarray) -> np.ndarray:
        """Float32 vectors of the given rows (sorted unique positions read best)."""
        if self.count == 0 or len(positions) == 0:
            return np.zeros((len(positions), self.dim), dtype=np.float32)
        mm = np.memmap(self.directory / self.filenames[0], dtype=self.dtype, mode="r",
                       shape=(self.count, self.dim))
        out = np.asarray(mm[positions], dtype=np.float32)
        if self.kind == "int8":
            scales = np.memmap(self.directory / self.filenames[1], dtype="<f4", mode="r", shape=(self.count,))
            out *= np.asarray(scales[positions], dtype=np.float32)[:, None]
        return out

    def rescore(self, q: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the candidate rows ``pos`` (``-1``: none) for queries ``q``; the best ``k`` of each."""
        valid = pos >= 0
        if not valid.any():  # e.g. every probed IVF list empty: nothing to rescore
            return np.full(pos.shape, -np.inf, dtype=np.float32)[:, :k], pos[:, :k]
        uniq, inv = np.unique(pos[valid], return_inverse=True)
        vecs = self.get(uniq)
        idx = np.zeros(pos.shape, dtype=np.int64)
        idx[valid] = inv
        scores = np.empty(pos.shape, dtype=np.float32)
        step = max(1, 2**22 // max(1, pos.shape[1] * q.shape[1]))
        for s in range(0, len(q), step):
            gathered = vecs[idx[s:s + step]]  # (b, kc, dim)
            scores[s:s + step] = np.einsum("bcd,bd->bc", gathered, q[s:s + step])
        scores[~valid] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(pos, order, axis=1)

    def nbytes(self) -> int:
        paths = [self.directory / n for n in self.filenames]
        return sum(p.stat().st_size for p in paths if p.exists())


class DocumentStore:
    """``documents.jsonl``: one ``{"id", "text"}`` line per FAISS row, looked up by byte offset."""

    filenames = [DOCUMENTS_FILE]

    def __init__(self, directory: Path, count: int = 0, store_texts: bool = True) -> None:
        self.directory, self.count, self.store_texts = Path(directory), count, store_texts
        self._offsets: array | None = array("q") if count == 0 else None  # lazily rebuilt after load

    @property
    def path(self) -> Path:
        return self.directory / DOCUMENTS_FILE

    def relocate(self, directory: Path) -> None:
        directory = Path(directory)
        if self.path.exists():
            shutil.copyfile(self.path, directory / DOCUMENTS_FILE)
        self.directory = directory

    def _ensure_offsets(self) -> array:
        if self._offsets is None:
            if not self.path.is_file():
                raise InvalidInputError(f"{self.path} is missing; {_REBUILD}")
            offsets, pos = array("q"), 0
            with open(self.path, "rb") as fh:
                for line in fh:
                    offsets.append(pos)
                    pos += len(line)
            if len(offsets) != self.count:
                raise InvalidInputError(
                    f"{self.path} has {len(offsets)} lines but the index has {self.count} vectors; the "
                    "folder is inconsistent, rebuild it"
                )
            self._offsets = offsets
        return self._offsets

    def append(self, ids: Sequence[Any], texts: Sequence[str | None]) -> None:
        offsets = self._ensure_offsets() if self.count else self._offsets
        assert offsets is not None
        pos = self.path.stat().st_size if self.path.exists() else 0
        lines = []
        for doc_id, text in zip(ids, texts, strict=True):
            record = {"id": doc_id, "text": text} if self.store_texts else {"id": doc_id}
            try:
                line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
            except TypeError:
                raise InvalidInputError(
                    f"document id {doc_id!r} of type {type(doc_id).__name__} cannot be stored; "
                    "use str or int ids"
                ) from None
            offsets.append(pos)
            pos += len(line)
            lines.append(line)
        with open(self.path, "ab") as fh:
            fh.write(b"".join(lines))
        self.count += len(ids)

    def get(self, positions: Iterable[int]) -> dict[int, tuple[Any, str | None]]:
        offsets = self._ensure_offsets()
        out: dict[int, tuple[Any, str | None]] = {}
        with open(self.path, "rb") as fh:
            for p in sorted(set(int(p) for p in positions)):
                fh.seek(offsets[p])
                try:
                    rec = json.loads(fh.readline())
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise InvalidInputError(f"{self.path} line {p + 1} is not JSON ({exc}); {_REBUILD}") from None
                if not isinstance(rec, dict):
                    raise InvalidInputError(f"{self.path} line {p + 1} is not a JSON object; {_REBUILD}")
                out[p] = (rec.get("id", p), rec.get("text"))
        return out

    def nbytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0
