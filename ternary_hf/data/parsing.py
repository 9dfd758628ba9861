"""Reading the evaluation and distillation text files out of the cache, quirks included.

Orange ``.tab`` files have 3 header lines (names, types, flags) and a blank or empty-text row; VADER
ground-truth files are UTF-8 with CRLF line endings, ``id<TAB>score<TAB>text``; the Rotten Tomatoes CSV
holds ``plot`` rows (not reviews) and a few empty snippets. Texts repeated under another id (RT, and a
few VADER sentences) are dropped, first occurrence kept, so that no text is in both splits. Sentences
with a human score of exactly 0 are dropped from the VADER sets (their sign is undefined).
"""

from __future__ import annotations

import bz2
import csv
import io
from pathlib import Path

from .sources import DatasetError, DatasetSpec
from .splits import TextDataset, is_test_group

__all__ = ["parse_dataset", "parse_orange", "parse_vader"]


def parse_orange(path: Path) -> tuple[list[str], list[str]]:
    """(categories, texts) of an Orange ``.tab`` file; 3 header lines, empty rows skipped."""
    lines = path.read_text(encoding="utf-8").split("\n")
    header = lines[0].rstrip("\r").split("\t")
    if header[:2] != ["Category", "Text"]:
        raise DatasetError(f"{path}: unexpected header {header!r}; delete the file to re-fetch it")
    cats, texts = [], []
    for line in lines[3:]:
        parts = line.rstrip("\r").split("\t")
        if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
            continue
        cats.append(parts[0].strip())
        texts.append(" ".join(parts[1].split()))
    return cats, texts


def parse_vader(path: Path) -> list[tuple[str, float, str]]:
    """(id, score, text) rows of a VADER ground-truth file (UTF-8, CRLF, tab-separated)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t", 2)
        if len(parts) != 3 or not parts[2].strip():
            continue
        rows.append((parts[0].strip(), float(parts[1]), parts[2].strip()))
    return rows


def _orange_dataset(spec: DatasetSpec, split: str, folder: Path) -> TextDataset:
    assert isinstance(spec.files, dict)
    cats, texts = parse_orange(folder / spec.files[split])
    other = "test" if split == "train" else "train"
    label_names = sorted(set(cats) | set(parse_orange(folder / spec.files[other])[0]))
    index = {c: i for i, c in enumerate(label_names)}
    ids = [f"{split}-{i}" for i in range(len(texts))]
    return TextDataset(spec.name, split, texts, [index[c] for c in cats], label_names, None, ids, list(ids))


def _vader_dataset(spec: DatasetSpec, split: str, folder: Path) -> TextDataset:
    assert isinstance(spec.files, str)
    texts, labels, scores, ids, groups = [], [], [], [], []
    seen: set[str] = set()
    for row_id, score, text in parse_vader(folder / spec.files):
        if score == 0 or text in seen:
            continue
        seen.add(text)  # a few sentences repeat under other ids: keep the first, in one split
        group = row_id.split("_")[0] if spec.group_by_prefix else row_id
        if is_test_group(spec.name, group) != (split == "test"):
            continue
        texts.append(text)
        labels.append(int(score > 0))
        scores.append(score)
        ids.append(row_id)
        groups.append(group)
    return TextDataset(spec.name, split, texts, labels, ["negative", "positive"], scores, ids, groups)


def _rt_dataset(spec: DatasetSpec, split: str, folder: Path) -> TextDataset:
    assert isinstance(spec.files, str)
    label_names = ["rotten", "fresh"]  # columns: category fresh/rotten/plot, text, movie_name
    raw = bz2.decompress((folder / spec.files).read_bytes()).decode("utf-8")
    texts, labels, ids, groups = [], [], [], []
    seen: set[str] = set()
    for i, row in enumerate(csv.DictReader(io.StringIO(raw))):
        category, text, movie = row["category"], " ".join(row["text"].split()), row["movie_name"]
        if category not in label_names or not text or text in seen:
            continue
        seen.add(text)  # dedupe across both splits, so no snippet is in train and test
        if is_test_group(spec.name, movie) != (split == "test"):
            continue
        texts.append(text)
        labels.append(label_names.index(category))
        ids.append(str(i))
        groups.append(movie)
    return TextDataset(spec.name, split, texts, labels, label_names, None, ids, groups)


_PARSERS = {"orange": _orange_dataset, "vader": _vader_dataset, "rt": _rt_dataset}


def parse_dataset(spec: DatasetSpec, split: str, folder: Path) -> TextDataset:
    """The ``split`` of the data set ``spec``, read from its verified cache ``folder``."""
    return _PARSERS[spec.kind](spec, split, folder)
