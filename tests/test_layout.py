"""The package layout rules CONTRIBUTING.md states, checked on the source tree.

Imports only point down the layer list; no module imports another sub-package's private names;
modules stay small enough to read. A change that breaks a rule fails here with the place to fix.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ternary_hf"

# Lower layers never import higher ones (same-layer packages do not import each other either, except
# where listed in ALSO_ALLOWED). The top-level ``__init__`` is exempt: it re-exports the public API.
LAYERS: dict[str, int] = {
    "errors": 0,
    "utils": 1, "quant": 1,
    "kernels": 2,
    "data": 3,
    "integrations": 4,
    "ptq": 5, "search": 5, "hub": 5,
    "evaluation": 6,
    "train": 7,
    "vision": 8, "serve": 8, "demo": 8, "distill": 8,
    "commands": 9,
    "cli": 10,
}
ALSO_ALLOWED: set[tuple[str, str]] = set()
MAX_MODULE_LINES = 500
MAX_FUNCTION_BODY_LINES = 80


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def _imported_units(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported top-level unit of ternary_hf, imported names) for every import in ``path``."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    here = list(rel[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level == 0:
                if not (node.module or "").startswith("ternary_hf."):
                    continue
                target = node.module.split(".")[1:]
            else:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = [*base, *[m for m in (node.module or "").split(".") if m]]
            if not target:  # ``from . import x`` at the package root
                target = [names[0]]
            found.append((node.lineno, target[0], names))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ternary_hf."):
                    found.append((node.lineno, alias.name.split(".")[1], []))
    return found


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in _sources()} - {"__init__"}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS here and to CONTRIBUTING.md"


def test_imports_only_point_down():
    wrong = []
    for path in _sources():
        unit = _unit(path)
        if unit == "__init__":
            continue
        for line, target, _ in _imported_units(path):
            if target == unit or (unit, target) in ALSO_ALLOWED or target not in LAYERS:
                continue
            if LAYERS[target] >= LAYERS[unit]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} (layer {LAYERS[target]} "
                             f">= {unit}'s {LAYERS[unit]})")
    assert not wrong, "\n".join(wrong)


def test_no_private_names_imported_across_sub_packages():
    wrong = []
    for path in _sources():
        unit = _unit(path)
        for line, target, names in _imported_units(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if target != unit and private:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {private} from {target}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_functions_stay_small(path):
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path.name}: split it by concern (<= {MAX_MODULE_LINES} lines)"
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            first = body[0]
            docstring = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                and isinstance(first.value.value, str)
            start = (body[1].lineno if len(body) > 1 else first.end_lineno) if docstring else first.lineno
            lines = node.end_lineno - start + 1
            if lines > MAX_FUNCTION_BODY_LINES:
                long.append(f"{node.name} (line {node.lineno}): {lines} lines")
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_BODY_LINES} lines of code: {long}"
