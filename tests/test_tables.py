"""ternary_hf.utils.tables: the one table renderer (text and Markdown)."""

from __future__ import annotations

import pytest

from ternary_hf.utils.tables import format_table


def test_text_table_pads_columns_and_right_aligns_numbers():
    out = format_table(["task", "metric", "score"], [["20ng", "p@10", 0.5], ["r8", "accuracy", "0.95"]], left=2)
    lines = out.split("\n")
    assert lines[0] == "task  metric    score"
    assert lines[1] == "----  --------  -----"
    assert lines[2] == "20ng  p@10        0.5"
    assert lines[3] == "r8    accuracy   0.95"


def test_markdown_table_has_a_rule_with_alignment():
    out = format_table(["model", "x"], [["a", 1]], style="markdown")
    assert out.split("\n") == ["| model | x |", "| --- | ---: |", "| a | 1 |"]


def test_rows_of_the_wrong_width_are_refused():
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        format_table(["a", "b"], [["only one"]])
    with pytest.raises(ValueError, match="style"):
        format_table(["a"], [], style="html")  # type: ignore[arg-type]
