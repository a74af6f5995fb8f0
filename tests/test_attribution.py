"""Span-overlap attribution: which passages an answer cites, with or without the model's ``[n]`` markers."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from rag.corpus import read_squad, read_squad_questions
from rag.generation.attribution import Statement, attribute, marked, split_statements
from rag.types import Document

BRONCOS = Document("broncos", "The Denver Broncos defeated the Carolina Panthers 24-10 to win Super Bowl 50.")
PANTHERS = Document("panthers", "The Carolina Panthers finished the regular season with a 15-1 record.")
LEVI = Document("levi", "Super Bowl 50 was played at Levi's Stadium in Santa Clara, California.")
# "Santa Clara" in two passages: only the second is about where the game was played.
UNIVERSITY = Document("scu", "Santa Clara University is a Jesuit university founded in 1851.")
VENUE = Document("venue", "The game was held in Santa Clara, at the home stadium of the San Francisco 49ers.")


def test_a_verbatim_answer_cites_the_passage_that_holds_it() -> None:
    result = attribute("Denver Broncos", [PANTHERS, BRONCOS, LEVI], "Who won Super Bowl 50?")
    assert result.citations == ["broncos"]
    assert result.statements == (Statement(0, 14, (2,)),)


def test_the_question_decides_between_passages_holding_the_same_string() -> None:
    passages = [UNIVERSITY, VENUE]
    assert attribute("Santa Clara", passages, "Where was the game held?").citations == ["venue"]
    assert attribute("Santa Clara", passages, "Which Jesuit university was founded in 1851?").citations == [
        "scu"
    ]


def test_a_tie_without_context_goes_to_the_higher_ranked_passage() -> None:
    assert attribute("Santa Clara", [UNIVERSITY, VENUE]).citations == ["scu"]
    assert attribute("Santa Clara", [VENUE, UNIVERSITY]).citations == ["venue"]


def test_a_marker_breaks_a_tie_the_passages_leave() -> None:
    assert attribute("Santa Clara [2]", [UNIVERSITY, VENUE]).citations == ["venue"]
    assert attribute("Santa Clara [1]", [VENUE, UNIVERSITY]).citations == ["venue"]


def test_a_marker_on_a_passage_with_less_context_is_overruled() -> None:
    result = attribute("Santa Clara [1]", [UNIVERSITY, VENUE], "Where was the game held?")
    assert result.citations == ["venue"]


def test_a_marker_that_points_to_a_passage_without_the_answer_is_replaced() -> None:
    result = attribute("Denver Broncos [1]", [PANTHERS, BRONCOS], "Who won Super Bowl 50?")
    assert result.citations == ["broncos"]
    assert result.statements[0].passages == (2,)


def test_a_multi_sentence_answer_cites_a_passage_per_statement() -> None:
    text = "The Denver Broncos won the game 24-10. It was played at Levi's Stadium."
    result = attribute(text, [PANTHERS, BRONCOS, LEVI], "Who won Super Bowl 50 and where?")
    assert result.citations == ["broncos", "levi"]
    assert [(text[s.start : s.end], s.passages) for s in result.statements] == [
        ("The Denver Broncos won the game 24-10.", (2,)),
        ("It was played at Levi's Stadium.", (3,)),
    ]


def test_a_statement_drawing_on_two_passages_cites_both() -> None:
    text = "The Broncos won at Levi's Stadium."
    result = attribute(text, [BRONCOS, PANTHERS, LEVI], "Who won Super Bowl 50?")
    assert result.citations == ["levi", "broncos"]  # the stadium is most of what the statement adds


@pytest.mark.parametrize(
    "text",
    [
        "The Green Bay Packers",  # no passage holds it
        "I do not know [1].",  # an abstention cites nothing, marker or not
        "The passages do not mention the winner.",
        "",
    ],
)
def test_no_support_means_no_citation(text: str) -> None:
    result = attribute(text, [BRONCOS, PANTHERS], "Who won Super Bowl 50?")
    assert result.citations == []
    assert all(s.passages == () for s in result.statements)


def test_half_of_the_new_content_words_is_enough_support() -> None:
    passages = [BRONCOS]
    assert attribute("24 points", passages, "How many points?").citations == ["broncos"]
    assert attribute("24 yards rushing", passages, "How many?").citations == []  # 1 of 3 words


def test_markers_out_of_range_are_ignored() -> None:
    assert attribute("Denver Broncos [7]", [PANTHERS, BRONCOS]).citations == ["broncos"]


def test_no_passages_cites_nothing() -> None:
    assert attribute("Denver Broncos [1]", [], "Who won?").citations == []


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Denver Broncos [2]", "Denver Broncos [2]"),  # the model's marker agrees: kept
        ("Denver Broncos [1]", "Denver Broncos [2]"),  # it does not: the supporting passage instead
        ("Denver Broncos", "Denver Broncos [2]"),  # no marker: the supporting passage
        ("The Green Bay Packers [1].", "The Green Bay Packers."),  # no support: no marker
        (
            "The Broncos won 24-10. [1] It was at Levi's Stadium [2]; Nobody knows why.",
            "The Broncos won 24-10 [2]. It was at Levi's Stadium [3]; Nobody knows why.",
        ),
    ],
)
def test_marked_shows_the_attributed_markers(text: str, shown: str) -> None:
    assert marked(text, attribute(text, [PANTHERS, BRONCOS, LEVI], "Who won Super Bowl 50?")) == shown


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("Luke Kuechly [3]", ["Luke Kuechly [3]"]),
        ("He won. [1] Then he left [2].", ["He won. [1]", "Then he left [2]."]),
        ("The U.S. Army won in 1990. It rained.", ["The U.S. Army won in 1990.", "It rained."]),
        ("First; second\n\n- third", ["First;", "second", "- third"]),
        ("[1] [2]", []),
    ],
)
def test_split_statements(text: str, pieces: list[str]) -> None:
    assert [text[a:b] for a, b in split_statements(text)] == pieces


def test_threshold_must_be_a_share() -> None:
    with pytest.raises(ValueError, match="threshold"):
        attribute("x", [BRONCOS], threshold=0)


# -- real data: XQuAD ---------------------------------------------------------------------------------


def test_xquad_gold_answers_cite_their_paragraph_among_the_articles_paragraphs(shared_data: Path) -> None:
    """Each gold answer string, attributed over all five paragraphs of its article (the gold one last, so
    that rank breaks no tie in its favour): the same string in several paragraphs is common (dates,
    names), and the question's words near it must pick the right one."""
    path = shared_data / "xquad-en" / "xquad.en.json"
    articles: dict[str, list[Document]] = defaultdict(list)
    for doc in read_squad(path):
        articles[doc.title].append(doc)
    questions = read_squad_questions(path)
    first_cited = []
    for q in questions:
        passages = articles[q.doc_id.rsplit("-", 2)[0]]
        passages = [p for p in passages if p.id != q.doc_id] + [p for p in passages if p.id == q.doc_id]
        assert len(passages) == 5
        cited = attribute(q.answers[0], passages, q.question).citations
        first_cited.append(cited[:1] == [q.doc_id])
    assert len(first_cited) == 1190
    assert sum(first_cited) == 1166  # 98.0%


@pytest.mark.slow
def test_xquad_right_answers_of_the_default_generator_cite_the_gold_paragraph(shared_data, minilm) -> None:
    """The ``rag eval qa`` pipeline (MiniLM top 5 of the paragraphs, its QA prompt, the default LLM) on the
    first 12 XQuAD questions: every exactly right answer cites the gold paragraph first, whether or not the
    model wrote a marker (all 37 right answers of the first 99 questions;
    docs/design/2026-11-27-generation-notebook.md)."""
    from rag.eval.qa import QA_REMINDER, QA_SYSTEM_PROMPT, strip_citations
    from rag.eval.squad_metrics import exact_match
    from rag.generation import CausalLMConfig, CausalLMGenerator, GenerationParams
    from rag.indexes.dense import DenseConfig, DenseRetriever

    path = shared_data / "xquad-en" / "xquad.en.json"
    docs = {d.id: d for d in read_squad(path)}
    retriever = DenseRetriever(DenseConfig(encoder="minilm", show_progress=False), encoder=minilm)
    retriever.add(list(docs.values()))
    generator = CausalLMGenerator(CausalLMConfig(system_prompt=QA_SYSTEM_PROMPT, reminder=QA_REMINDER))
    questions = read_squad_questions(path)[:12]
    hits = retriever.search([q.question for q in questions], k=5)
    right = []
    for q, q_hits in zip(questions, hits, strict=True):
        answer = generator.answer(q.question, [docs[h.doc_id] for h in q_hits], GenerationParams(32))
        if exact_match(strip_citations(answer.text), q.answers):
            right.append(answer.citations[:1] == [q.doc_id])
    assert len(right) >= 3  # 4 when measured
    assert all(right)
