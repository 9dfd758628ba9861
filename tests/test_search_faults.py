"""`ternary-hf search` under faults: foreign output folders, a kill mid-rebuild, damaged index files.

The index folder follows the rules of every ternary-hf output: a folder that is not an index is refused
(unless --overwrite), an index is built beside its target and swapped in whole, nothing is written to
/tmp, and a damaged file gives one line naming it, never a traceback. Uses the tiny random BERT of
conftest.py (32 dimensions), so the whole file runs in seconds apart from the one subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ternary_hf.cli import main
from ternary_hf.search import SemanticIndex

OLD_DOCS = ["the cat sat", "a dog and a car", "stock market price", "music film night"]
NEW_DOCS = [f"new text {w}" for w in ("one two", "red blue", "happy sad", "buy sell", "fast slow", "old new")]


def write_corpus(path: Path, texts: list[str]) -> Path:
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


def build(model: str, corpus: Path, out: Path, *extra: str) -> int:
    return main(["search", "build", model, str(corpus), str(out), "--no-progress", *extra])


@pytest.fixture
def index_dir(tiny_st_dir, tmp_path, capsys) -> Path:
    out = tmp_path / "idx"
    assert build(tiny_st_dir, write_corpus(tmp_path / "old.txt", OLD_DOCS), out, "--index", "binary") == 0
    capsys.readouterr()
    return out


def one_line_error(capsys, *must_contain: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]  # (model loading draws bars too)
    assert len(lines) == 1, err
    for text in must_contain:
        assert text in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------ foreign folders
def test_build_refuses_a_folder_it_did_not_create_and_replaces_it_only_with_overwrite(tiny_st_dir, tmp_path,
                                                                                       capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metadata.json").write_text('{"owner": "me", "photos": 12}\n')
    (out / "notes.txt").write_text("keep me")
    corpus = write_corpus(tmp_path / "c.txt", OLD_DOCS)
    assert build(tiny_st_dir, corpus, out) == 1
    one_line_error(capsys, str(out), "--overwrite")
    assert json.loads((out / "metadata.json").read_text()) == {"owner": "me", "photos": 12}
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "notes.txt"]

    assert build(tiny_st_dir, corpus, out, "--overwrite") == 0
    assert not (out / "notes.txt").exists() and SemanticIndex.load(out).ntotal == len(OLD_DOCS)


def test_an_index_folder_is_rebuilt_in_place_without_overwrite(index_dir, tiny_st_dir, tmp_path):
    assert build(tiny_st_dir, write_corpus(tmp_path / "new.txt", NEW_DOCS), index_dir) == 0
    assert SemanticIndex.load(index_dir).ntotal == len(NEW_DOCS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "new.txt", "old.txt"]  # no staging left


def test_save_refuses_a_foreign_folder_too(tmp_path):
    import numpy as np

    index = SemanticIndex.from_embeddings(np.eye(8, dtype=np.float32))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("a,b\n")
    with pytest.raises(FileExistsError, match="not a ternary-hf index"):
        index.save(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["data.csv"]
    index.save(tmp_path / "mine", overwrite=True)
    assert SemanticIndex.load(tmp_path / "mine").ntotal == 8


def test_build_onto_a_file_is_one_clear_line(tiny_st_dir, tmp_path, capsys):
    target = tmp_path / "index.txt"
    target.write_text("not a folder")
    assert build(tiny_st_dir, write_corpus(tmp_path / "c.txt", OLD_DOCS), target) == 1
    one_line_error(capsys, str(target), "is a file")
    assert target.read_text() == "not a folder"


# ----------------------------------------------------------------------------------- kill mid-rebuild
_KILL_AFTER_INDEX_WRITE = """
import os, signal, sys
import faiss
from ternary_hf.cli import main

def write_then_die(index, path, _write=faiss.write_index_binary):
    _write(index, path)
    os.kill(os.getpid(), signal.SIGKILL)  # as if the machine went down between two files of the index

faiss.write_index_binary = write_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_during_a_rebuild_leaves_the_old_index_answering_and_nothing_in_tmp(index_dir, tiny_st_dir,
                                                                                   tmp_path):
    before = {p.name: p.read_bytes() for p in index_dir.iterdir()}
    scratch = tmp_path / "TMPDIR"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", _KILL_AFTER_INDEX_WRITE, "search", "build", tiny_st_dir,
           str(write_corpus(tmp_path / "new.txt", NEW_DOCS)), str(index_dir), "--index", "binary", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    assert {p.name: p.read_bytes() for p in index_dir.iterdir()} == before  # the old index, untouched
    old = SemanticIndex.load(index_dir)
    assert old.ntotal == len(OLD_DOCS)
    assert [d for _, d in old.get_documents(range(len(OLD_DOCS)))] == OLD_DOCS
    assert list(scratch.iterdir()) == []  # nothing was written to the temporary folder
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".idx.")]
    assert leftovers, "the killed build assembles its index beside the target"

    # the next build removes what the killed one left and swaps its own index in
    assert build(tiny_st_dir, tmp_path / "new.txt", index_dir, "--index", "binary") == 0
    assert SemanticIndex.load(index_dir).ntotal == len(NEW_DOCS)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx.")]


# -------------------------------------------------------------------------------------- damaged files
def query(index_dir: Path) -> int:
    return main(["search", "query", str(index_dir), "a dog", "-k", "10"])  # every document: each line is read


def test_query_works_on_the_intact_index(index_dir, capsys):
    assert query(index_dir) == 0
    assert "query: a dog" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_index_faiss_is_one_line_naming_it(index_dir, capsys, damage):
    path = index_dir / "index.faiss"
    data = path.read_bytes()
    path.write_bytes({"garbage": b"\x00not faiss" * 20, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    assert query(index_dir) == 1
    one_line_error(capsys, str(path), "rebuild")
    with pytest.raises(ValueError, match="index.faiss"):
        SemanticIndex.load(index_dir)


@pytest.mark.parametrize(("content", "why"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not an object"),
    ('{"format": "ternary-hf-semantic-index", "format_version": 1}', "lacks"),
    ('{"format": "something-else"}', "format 'something-else'"),
])
def test_a_damaged_metadata_json_is_one_line_naming_it(index_dir, capsys, content, why):
    path = index_dir / "metadata.json"
    path.write_text(content)
    assert query(index_dir) == 1
    one_line_error(capsys, str(path), why)
    with pytest.raises(ValueError, match="metadata.json"):
        SemanticIndex.load(index_dir)


def test_a_metadata_json_with_a_bad_setting_is_one_line_naming_it(index_dir, capsys):
    path = index_dir / "metadata.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "rescore": "int3"}))
    assert query(index_dir) == 1
    one_line_error(capsys, str(path), "int3")


@pytest.mark.parametrize("name", ["documents.jsonl", "rescore.i8"])
def test_truncated_side_files_are_one_line_naming_them(index_dir, capsys, name):
    path = index_dir / name
    path.write_bytes(path.read_bytes()[:-7])
    assert query(index_dir) == 1
    one_line_error(capsys, str(path))


def test_a_folder_without_an_index_is_one_line(tmp_path, capsys):
    assert query(tmp_path) == 1
    one_line_error(capsys, "not a saved SemanticIndex folder", "search build")
