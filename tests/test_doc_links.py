"""The documentation's cross-references resolve: every relative markdown link in README.md and docs/,
and every ``docs/<name>.md`` cited in code, configs and docs, names a file of the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")  # [text](target#anchor)
CITED = re.compile(r"\bdocs/[\w.-]+\.md\b")


def relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # skip http:, mailto:


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / line for line in out.splitlines() if line.endswith((".md", ".py", ".yaml", ".yml", ".toml"))]


def test_markdown_links_resolve():
    broken = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in relative_links(doc.read_text(encoding="utf-8")):
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_cited_docs_exist_and_methods_md_is_in_the_repository():
    """`docs/methods.md` is the method reference; nothing cites a METHODS.md outside the repository."""
    assert (REPO / "docs" / "methods.md").is_file()
    missing, outside = [], []
    for path in tracked_files():
        if not path.is_file():  # deleted in the working tree, not yet in the index
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        missing += [f"{path.relative_to(REPO)}: {c}" for c in CITED.findall(text) if not (REPO / c).is_file()]
        if "METHODS.md" in text and path != Path(__file__).resolve():
            outside.append(str(path.relative_to(REPO)))
    assert not missing, "cited docs that do not exist:\n" + "\n".join(missing)
    assert not outside, f"files citing METHODS.md (not in the repository; use docs/methods.md): {outside}"


def test_link_parser_finds_relative_targets_only():
    text = "[a](methods.md) [b](../README.md#usage) [c](https://x.org/y.md) [d](fidelity.md#table)"
    assert relative_links(text) == ["methods.md", "../README.md", "fidelity.md"]
