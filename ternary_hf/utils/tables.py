"""One table renderer for everything ternary-hf prints: fixed-width text for terminals, Markdown for docs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["format_table"]


def format_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], *, style: Literal["text", "markdown"] = "text",
                 left: int = 1) -> str:
    """Render ``rows`` under ``header``.

    Args:
        header: column titles.
        rows: one sequence of cells per row, as many as ``header``; cells are turned into ``str``.
        style: ``"text"`` (columns padded to their widest cell, two spaces apart, a dashed rule under the
            header) or ``"markdown"`` (a pipe table).
        left: how many leading columns are left-aligned (labels); the rest are right-aligned (numbers).
    """
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    if any(len(row) != len(cells[0]) for row in cells):
        raise ValueError(f"every row needs {len(cells[0])} cells: {[len(r) for r in cells]}")
    if style == "markdown":
        rule = ["---" if i < left else "---:" for i in range(len(cells[0]))]
        return "\n".join("| " + " | ".join(row) + " |" for row in [cells[0], rule, *cells[1:]])
    if style != "text":
        raise ValueError(f"style must be 'text' or 'markdown', got {style!r}")
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]

    def line(row: list[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])
