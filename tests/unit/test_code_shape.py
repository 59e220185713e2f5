"""The shape the code keeps: no function in model/, export/ or service/ longer than 60 lines or rated D
or worse by radon (cyclomatic complexity over 20), unless a comment on the line above its `def` says
why it must be (`# long: ...` or `# complex: ...`). A long procedure gets parts a test can call."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from radon.complexity import cc_rank, cc_visit

from tests.conftest import REPO

PACKAGES = ("model", "export", "service")
MAX_LINES = 60
WORST_RANK = "C"  # D and worse are refused


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def excused(lines: list[str], def_line: int, word: str) -> bool:
    """A `# long: why` or `# complex: why` comment just above the def (or its decorators)."""
    index = def_line - 2
    while index >= 0 and lines[index].lstrip().startswith("@"):
        index -= 1
    return index >= 0 and lines[index].strip().startswith(f"# {word}:")


def long_functions(path: Path, root: Path = REPO) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - node.lineno + 1
            if length > MAX_LINES and not excused(lines, first, "long"):
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} is {length} lines")
    return found


def complex_functions(path: Path, root: Path = REPO) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    return [
        f"{path.relative_to(root)}:{block.lineno} {block.name} is rated {cc_rank(block.complexity)} "
        f"({block.complexity})"
        for block in cc_visit(text)
        if cc_rank(block.complexity) > WORST_RANK and not excused(lines, block.lineno, "complex")
    ]


def test_the_sources_are_found():
    assert len(sources()) > 50


@pytest.mark.parametrize("check", [long_functions, complex_functions], ids=["length", "complexity"])
def test_no_function_is_too_long_or_too_complex(check):
    problems = [problem for path in sources() for problem in check(path)]
    assert not problems, "\n".join(problems)


def test_the_checks_find_what_they_look_for_and_take_an_excuse(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    branches = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(25))
    path = tmp_path / "sample.py"
    path.write_text(f"def long():\n{body}\n\n\ndef branchy(x):\n{branches}\n    return -1\n")
    assert [p.split()[1] for p in long_functions(path, tmp_path)] == ["long"]
    assert [p.split()[1] for p in complex_functions(path, tmp_path)] == ["branchy"]
    excuses = "# long: a table read best in one place\ndef long():"
    path.write_text(
        path.read_text()
        .replace("def long():", excuses)
        .replace("def branchy(x):", "# complex: one case per value\ndef branchy(x):")
    )
    assert long_functions(path, tmp_path) == [] and complex_functions(path, tmp_path) == []
