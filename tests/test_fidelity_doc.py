"""docs/fidelity.md: every protocol row names a test, and every named test exists.

The table's last column holds one or more ``tests/PATH.py::test_name`` references (``test_name`` may
carry a ``[param]`` suffix). This test parses the table, and for each reference checks that the file
exists and defines that test function at module level, so the documentation cannot cite a test that
was renamed or deleted.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "fidelity.md"
REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)(?:\[[^\]]*\])?")


def table_rows(text: str) -> list[list[str]]:
    """Body rows of every markdown table in ``text`` (a header is the row just above a ``|---|`` line)."""
    lines = [line.strip() for line in text.splitlines()]
    is_table = [line.startswith("|") for line in lines]
    is_rule = [t and set(line.replace("|", "").strip()) <= {"-", ":", " "} for t, line in zip(is_table, lines)]
    rows = []
    for i, line in enumerate(lines):
        if not is_table[i] or is_rule[i] or (i + 1 < len(lines) and is_rule[i + 1]):
            continue
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_row_names_an_existing_test():
    rows = table_rows(DOC.read_text(encoding="utf-8"))
    assert len(rows) >= 30, f"docs/fidelity.md has only {len(rows)} rows"
    missing = []
    for cells in rows:
        refs = REF.findall(cells[-1])
        assert refs, f"row without a test reference: {cells[0]!r}"
        for file, name in refs:
            path = REPO / file
            if not path.is_file() or name not in defined_tests(path):
                missing.append(f"{cells[0]}: {file}::{name}")
    assert not missing, "docs/fidelity.md cites tests that do not exist:\n" + "\n".join(missing)


def test_parser_rejects_a_bad_reference(tmp_path):
    """The check itself can fail: a reference to a test that is not defined is reported."""
    fake = tmp_path / "t.py"
    fake.write_text("def test_real():\n    pass\n")
    assert "test_real" in defined_tests(fake) and "test_ghost" not in defined_tests(fake)
    rows = table_rows("| a | b |\n|---|---|\n| x | tests/t.py::test_ghost |\n\n| c | d |\n|---|---|\n| y | z |\n")
    assert rows == [["x", "tests/t.py::test_ghost"], ["y", "z"]]
    assert REF.findall(rows[0][-1]) == [("tests/t.py", "test_ghost")]
