"""Reading a user's own text corpus: a plain text file (one text per line) or JSON Lines.

One reader for every command that takes a corpus (``distill --data``, ``search build``), so the same
file is read the same way everywhere and every problem is reported with the file, the line and the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, MissingInputError

__all__ = ["JSONL_SUFFIXES", "read_corpus"]

JSONL_SUFFIXES = frozenset({".jsonl", ".json", ".ndjson"})


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError(
                    f"{path}:{lineno}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); "
                    "give a UTF-8 text or JSON Lines file"
                ) from None


def read_corpus(path: str | os.PathLike[str], text_field: str = "text",
                id_field: str | None = None) -> Iterator[tuple[Any, str]]:
    """Yield ``(id, text)`` from a JSON Lines file (``.jsonl`` / ``.json`` / ``.ndjson``) or a text file.

    Read lazily. In a text file each line is a text. In JSON Lines each line is an object whose
    ``text_field`` holds the text (a line that is a bare JSON string is taken as the text itself). Ids are
    the ``id_field`` values, or the 1-based line number. Blank lines are skipped (they still count as
    lines, so the numbers in errors match an editor's).

    Args:
        path: the corpus file.
        text_field: the JSON field holding the text.
        id_field: an optional JSON field holding each text's id.

    Raises:
        MissingInputError: ``path`` is not a file.
        InvalidInputError: a line is not UTF-8, not valid JSON, lacks the field, or its text is not a string.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"corpus file {path} not found (give a .txt file, one text per line, or a .jsonl file)")
    is_jsonl = path.suffix.lower() in JSONL_SUFFIXES
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        if not is_jsonl:
            yield lineno, line.rstrip("\r\n")
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                    "expected one JSON object per line") from None
        if isinstance(record, str):
            yield lineno, record
            continue
        if not isinstance(record, dict):
            raise InvalidInputError(f"{path}:{lineno}: a JSON {type(record).__name__}, expected an object with a "
                                    f"{text_field!r} field (or a string)")
        if text_field not in record:
            raise InvalidInputError(f"{path}:{lineno}: no {text_field!r} field (fields: {sorted(record)}); "
                                    "choose the text field with --text-field (text_field= in Python)")
        text = record[text_field]
        if not isinstance(text, str):
            raise InvalidInputError(f"{path}:{lineno}: {text_field!r} is {json.dumps(text)}, not a string; "
                                    "fix the line or drop it")
        if id_field is not None and id_field not in record:
            raise InvalidInputError(f"{path}:{lineno}: no {id_field!r} field; "
                                    "fix --id-field (id_field= in Python) or drop it")
        yield (record[id_field] if id_field is not None else lineno), text
