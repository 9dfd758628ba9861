"""ternary_hf.data.texts: one corpus reader, every bad line reported with file, line and fix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ternary_hf.data.texts import read_corpus
from ternary_hf.errors import InvalidInputError, MissingInputError, TernaryHfError


def _jsonl(path, *lines: str):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_text_and_jsonl_files_give_ids_and_texts(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\r\n", encoding="utf-8")
    assert list(read_corpus(tmp_path / "a.txt")) == [(1, "one"), (3, "two")]
    path = _jsonl(tmp_path / "a.jsonl", json.dumps({"id": "x", "body": "hello"}), "", json.dumps("bare string"))
    assert list(read_corpus(path, "body")) == [(1, "hello"), (3, "bare string")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": null}', r"c\.jsonl:2: 'text' is null, not a string"),
        ('{"text": 42}', r"c\.jsonl:2: 'text' is 42, not a string"),
        ('{"text": "ok"', r"c\.jsonl:2: not valid JSON"),
        ("[1, 2]", r"c\.jsonl:2: a JSON list, expected an object"),
        ('{"body": "x"}', r"c\.jsonl:2: no 'text' field .* --text-field"),
    ],
)
def test_bad_jsonl_lines_name_file_line_and_fix(tmp_path, line, message):
    path = _jsonl(tmp_path / "c.jsonl", json.dumps({"text": "fine"}), line)
    with pytest.raises(InvalidInputError, match=message):
        list(read_corpus(path))


def test_malformed_json_after_blank_lines_reports_the_editor_line_number(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", json.dumps({"text": "a"}), "", "", "{oops")
    with pytest.raises(InvalidInputError, match=r"c\.jsonl:4:"):
        list(read_corpus(path))


def test_binary_file_is_refused_with_its_name_and_line(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"fine line\n\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(InvalidInputError, match=r"model\.bin:2: not UTF-8"):
        list(read_corpus(path))


def test_missing_file_is_a_missing_input_error(tmp_path):
    with pytest.raises(MissingInputError, match="not found"):
        list(read_corpus(tmp_path / "nope.txt"))


def test_cli_prints_a_bad_corpus_once_without_a_traceback(tmp_path, tiny_st_dir):
    corpus = _jsonl(tmp_path / "c.jsonl", json.dumps({"text": "fine"}), json.dumps({"text": None}))
    proc = subprocess.run([sys.executable, "-m", "ternary_hf.cli", "search", "build", tiny_st_dir,
                           str(corpus), str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "c.jsonl:2: 'text' is null" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_errors_share_one_base():
    assert issubclass(InvalidInputError, TernaryHfError) and issubclass(InvalidInputError, ValueError)
    assert issubclass(MissingInputError, FileNotFoundError)
