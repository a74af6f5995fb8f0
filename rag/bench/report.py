"""Benchmark results as Markdown: one short section per suite in docs/benchmarks.md, replaced on each run.

The section holds the suite's measures table; the run's notes and its wider tables go into a dated file of the
design notebook beside it (``docs/design/DATE-bench-SUITE.md``), which the section links to.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from rag.cpu import cpu_description


@dataclass(frozen=True)
class Row:
    measure: str
    ragloom: float
    baseline: float
    unit: str
    target: str = ""  # e.g. ">= 0.90x"

    @property
    def ratio(self) -> float:
        return self.ragloom / self.baseline if self.baseline else float("nan")


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    title: str
    baseline: str  # what the baseline column is
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    appendix: str = ""  # more Markdown after the notes, e.g. a table with other columns

    def markdown(self) -> str:
        """The whole result: the measures table, the notes and the appendix."""
        lines = self._table()
        lines += [""] + [f"- {note}" for note in self.notes]
        if self.appendix:
            lines += ["", self.appendix.rstrip()]
        return "\n".join(lines).rstrip() + "\n"

    def summary(self, details: str) -> str:
        """The measures table and a link to ``details``, where :meth:`markdown` is kept."""
        lines = [
            *self._table(),
            "",
            f"How it was measured, notes and every figure of the run: [{details}]({details}).",
        ]
        return "\n".join(lines) + "\n"

    def _table(self) -> list[str]:
        lines = [
            f"## {self.title}",
            "",
            f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {cpu_description()}, "
            f"{_cpu_count()} CPU threads, by `rag bench {self.suite}`. Baseline: {self.baseline}.",
            "",
            "| measure | ragloom | baseline | ratio | target |",
            "|---|---:|---:|---:|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.measure} | {r.ragloom:,.1f} {r.unit} | {r.baseline:,.1f} {r.unit} "
                f"| {r.ratio:.3f}× | {r.target} |"
            )
        return lines


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_HEADER = (
    "# Benchmarks\n\n"
    "Figures written by `rag bench`; every ratio compares runs made side by side in one process.\n"
)


def write_section(path: str | Path, result: SuiteResult) -> None:
    """Insert or replace the suite's section, marked by HTML comments, keeping the other suites' sections; the
    whole result goes to the dated design file the section links to."""
    path = Path(path)
    details = Path("design") / f"{time.strftime('%Y-%m-%d')}-bench-{result.suite}.md"
    (path.parent / details).parent.mkdir(parents=True, exist_ok=True)
    (path.parent / details).write_text(result.markdown())
    text = path.read_text() if path.exists() else _HEADER
    begin, end = f"<!-- bench:{result.suite}:begin -->", f"<!-- bench:{result.suite}:end -->"
    section = f"{begin}\n{result.summary(details.as_posix())}{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
