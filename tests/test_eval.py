"""Evaluation: ir-measures scoring of a crafted run, SQuAD EM/F1 normalisation, TREC run files."""

from __future__ import annotations

import pytest

from rag.eval.citations import CitationRecord, CitationReport
from rag.eval.qa import GoldOnly, QARecord, QAReport, strip_citations
from rag.eval.retrieval import score_run, write_trec_run
from rag.eval.squad_metrics import exact_match, f1_score, normalize_answer
from rag.types import Hit


def _hits(*ids: str) -> list[Hit]:
    return [Hit(d, 1.0 / rank, rank, "test") for rank, d in enumerate(ids, start=1)]


def test_score_run_against_hand_computed_values() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}}
    run = {"q1": _hits("a", "x"), "q2": _hits("x", "b")}
    metrics = score_run(run, qrels, ["nDCG@10", "RR@10", "R@100"])
    # q1: perfect. q2: one of two relevant at rank 2: DCG = 1/log2(3), IDCG = 1 + 1/log2(3).
    ndcg_q2 = (1 / 1.5849625) / (1 + 1 / 1.5849625)
    assert metrics["nDCG@10"] == pytest.approx((1 + ndcg_q2) / 2, abs=1e-6)
    assert metrics["RR@10"] == pytest.approx((1 + 0.5) / 2)
    assert metrics["R@100"] == pytest.approx((1 + 0.5) / 2)


def test_trec_run_file(tmp_path) -> None:
    write_trec_run({"q1": _hits("a", "b")}, tmp_path / "run.txt", tag="t")
    assert (tmp_path / "run.txt").read_text().splitlines() == ["q1 Q0 a 1 1.000000 t", "q1 Q0 b 2 0.500000 t"]


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple, a day ", "apple day"),
        ("Denver Broncos.", "denver broncos"),
    ],
)
def test_squad_normalisation(text: str, normal: str) -> None:
    assert normalize_answer(text) == normal


def test_exact_match_and_f1() -> None:
    golds = ["Denver Broncos", "the Broncos"]
    assert exact_match("the denver broncos", golds) == 1.0
    assert exact_match("Broncos of Denver", golds) == 0.0
    assert f1_score("Broncos", golds) == pytest.approx(1.0)  # matches "the Broncos" fully
    assert f1_score("Denver team", golds) == pytest.approx(0.5)  # p=1/2, r=1/2 against "Denver Broncos"
    assert f1_score("nothing", golds) == 0.0


def test_strip_citations() -> None:
    assert strip_citations("Paris [1].") == "Paris."
    assert strip_citations("1200 degrees [2, 3]") == "1200 degrees"


def _record(em: float, cited: list[str], gold_only: GoldOnly | None = None) -> QARecord:
    return QARecord("q", "Who?", "x", ["x"], em, em, "gold", ["other", "gold"], cited, 1.0, gold_only)


def test_the_gold_only_scores_average_the_baseline_answers_or_are_none_without_it() -> None:
    right, wrong = GoldOnly("x", 1.0, 1.0), GoldOnly("y", 0.0, 0.5)
    report = QAReport([_record(0.0, [], right), _record(0.0, [], wrong)])
    assert (report.gold_only_em, report.gold_only_f1) == (50.0, 75.0)
    assert QAReport([_record(0.0, [], right), _record(0.0, [])]).gold_only_em is None


def test_gold_cited_when_right_counts_the_first_citation_of_exact_answers() -> None:
    report = QAReport(
        [
            _record(1.0, ["gold", "other"]),
            _record(1.0, ["other", "gold"]),  # the gold cited second does not count
            _record(1.0, []),
            _record(0.0, ["gold"]),  # a wrong answer does not count either way
        ]
    )
    assert report.gold_cited_when_right == pytest.approx(100 / 3)
    assert QAReport([_record(0.0, ["gold"])]).gold_cited_when_right is None


def test_the_citation_report_counts_first_citations_where_a_relevant_passage_was_given() -> None:
    def record(passages: list[str], cited: list[str]) -> CitationRecord:
        return CitationRecord("q", "claim", "answer", passages, cited, relevant=["r"])

    report = CitationReport(
        [
            record(["r", "x"], ["r"]),
            record(["x", "r"], ["x", "r"]),  # the relevant passage cited second does not count
            record(["r"], []),  # no citation: not counted
            record(["x"], ["x"]),  # nothing relevant given: not counted
        ]
    )
    assert len(report.answerable) == 2 and report.first_citation_relevant == 50.0
    assert (report.cited_any, report.relevant_retrieved) == (75.0, 75.0)
    assert CitationReport([record(["x"], ["x"])]).first_citation_relevant is None
