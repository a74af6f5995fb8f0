"""The demo: its corpus ships in the package, the default LLM answers ``make demo``'s question and cites the
passage that states the answer, and the README's Python snippet runs as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rag.cli import build_parser
from rag.cli.ask import make_pipeline
from rag.cli.generation_options import generation_params
from rag.collection import build_index
from rag.demo import DEMO_ANSWER, DEMO_PASSAGE_ID, DEMO_QUESTION, corpus_path
from rag.eval.squad_metrics import normalize_answer

ROOT = Path(__file__).resolve().parent.parent


def test_the_corpus_ships_with_its_attribution_and_states_the_answer_once() -> None:
    rows = [json.loads(line) for line in corpus_path().read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 82
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["title"] and len(r["text"].split()) >= 40 for r in rows)
    assert [r["id"] for r in rows if DEMO_ANSWER in r["text"]] == [DEMO_PASSAGE_ID]
    attribution = (corpus_path().parent / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "The World Factbook" in attribution and "public domain" in attribution


def test_make_demo_indexes_the_corpus_and_asks_the_demo_question() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert f"\nDEMO_QUESTION ?= {DEMO_QUESTION}\n" in makefile
    corpus = re.search(r"^DEMO_CORPUS := (\S+)$", makefile, re.MULTILINE)
    assert corpus and (ROOT / corpus.group(1)).read_bytes() == corpus_path().read_bytes()


@pytest.mark.slow
def test_the_default_model_answers_the_demo_question_citing_its_passage(tmp_path) -> None:
    build_index(corpus_path(), tmp_path, name="dense")
    args = build_parser().parse_args(["ask", DEMO_QUESTION, "--index", str(tmp_path / "dense")])
    answer = make_pipeline(args).answer(DEMO_QUESTION, generation_params(args))  # what `make demo` runs
    assert answer.passages[0].id == DEMO_PASSAGE_ID
    assert normalize_answer(DEMO_ANSWER) in normalize_answer(answer.text), answer.text
    assert answer.citations[:1] == [DEMO_PASSAGE_ID], (answer.text, answer.citations)


@pytest.mark.slow
def test_the_readme_snippet_runs_from_any_folder_and_leaves_the_checkout_alone(tmp_path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"^```python\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert snippet, "README.md has no ```python block"
    before = _git_status()
    run = subprocess.run(
        [sys.executable, "-c", snippet.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=1800
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert DEMO_ANSWER in run.stdout and repr(DEMO_PASSAGE_ID) in run.stdout, run.stdout
    assert "\ncited: [" in run.stdout  # the streamed answer, then its citations
    assert _git_status() - before == set()  # no file of the checkout written or changed
    assert list(tmp_path.iterdir()) == []  # nothing left in the working folder either


def _git_status() -> set[str]:
    """The lines of ``git status --porcelain`` (a set: work committed meanwhile only removes lines)."""
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(status.stdout.splitlines())
