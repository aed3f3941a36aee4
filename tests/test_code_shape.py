"""The library stays readable: no module over 300 lines, no function over 60 (split by idea when one grows)."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent.parent / "labelbudget"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 300, 60


def test_no_library_module_is_over_300_lines():
    long = {str(f.relative_to(LIBRARY)): n for f in LIBRARY.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules by idea: {long}"


def test_no_library_function_is_over_60_lines():
    long = {}
    for f in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{f.relative_to(LIBRARY)}:{node.name}"] = n
    assert not long, f"split these functions into steps of one job each: {long}"
