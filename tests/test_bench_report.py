"""rag bench's Markdown: a short section per suite in benchmarks.md, the whole run in a dated design file."""

from __future__ import annotations

import time
from pathlib import Path

from rag.bench.report import Row, SuiteResult, write_section


def result(suite: str, value: float) -> SuiteResult:
    return SuiteResult(
        suite, f"Suite {suite}", "the baseline", [Row("speed", value, 1.0, "tok/s")], ["a note"], "| wide |"
    )


def test_the_section_keeps_the_table_and_links_the_whole_run(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "benchmarks.md"
    write_section(path, result("a", 2.0))
    write_section(path, result("b", 3.0))
    write_section(path, result("a", 4.0))  # replaces suite a's section, keeps b's
    text = path.read_text()
    details = f"design/{time.strftime('%Y-%m-%d')}-bench-a.md"
    assert text.count("<!-- bench:a:begin -->") == 1 and "| speed | 4.0 tok/s | 1.0 tok/s | 4.000× |" in text
    assert "3.0 tok/s" in text and "2.0 tok/s" not in text
    assert f"[{details}]({details})" in text and "a note" not in text and "| wide |" not in text
    whole = (path.parent / details).read_text()
    assert "| speed | 4.0 tok/s" in whole and "- a note" in whole and "| wide |" in whole
