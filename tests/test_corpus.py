"""Corpus readers: every format, auto-detection, chunking and every bad-input message."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from rag.corpus import (
    chunk_text,
    detect_format,
    read_beir_qrels,
    read_beir_queries,
    read_corpus,
    read_squad_questions,
)
from rag.errors import ConfigError, CorpusError
from rag.settings import data_dir
from rag.types import Document


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def squad_file(path: Path) -> Path:
    data = {
        "version": "1.1",
        "data": [
            {
                "title": "Cats",
                "paragraphs": [
                    {
                        "context": "Cats purr.",
                        "qas": [{"id": "q1", "question": "What do cats do?", "answers": [{"text": "purr"}]}],
                    },
                    {
                        "context": "Cats sleep a lot.",
                        "qas": [
                            {
                                "id": "q2",
                                "question": "How much do cats sleep?",
                                "answers": [{"text": "a lot", "answer_start": 11}, {"text": "a lot"}],
                            }
                        ],
                    },
                ],
            },
            {"title": "Dogs", "paragraphs": [{"context": "Dogs bark.", "qas": []}]},
        ],
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def beir_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(
        folder / "corpus.jsonl",
        [
            {"_id": "d1", "title": "T1", "text": "first", "metadata": {"year": 2001}},
            {"_id": "d2", "title": "", "text": "second", "metadata": {}},
        ],
    )
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "what?"}, {"_id": "q2", "text": "why?"}])
    (folder / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq1\td2\t2\r\n")
    return folder


# --- readers ---------------------------------------------------------------------------------------------


def test_beir_reader(beir_dir: Path) -> None:
    docs = list(read_corpus(beir_dir))
    assert docs == [
        Document("d1", "first", "T1", {"year": 2001}),
        Document("d2", "second", "", {}),
    ]
    assert read_beir_queries(beir_dir) == {"q1": "what?", "q2": "why?"}
    assert read_beir_qrels(beir_dir, "test") == {"q1": {"d1": 1, "d2": 2}}


def test_jsonl_reader_fields_and_metadata(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": "a", "contents": "alpha", "year": 1999},
            {"_id": "b", "title": "Bee", "text": "", "metadata": {"x": 1}, "lang": "en"},
        ],
    )
    (tmp_path / "c.jsonl").write_text(path.read_text() + "\n", encoding="utf-8")  # trailing blank line is ok
    assert list(read_corpus(path)) == [
        Document("a", "alpha", "", {"year": 1999}),
        Document("b", "", "Bee", {"x": 1, "lang": "en"}),
    ]


def test_squad_reader_and_questions(tmp_path: Path) -> None:
    path = squad_file(tmp_path / "s.json")
    docs = list(read_corpus(path))
    assert [d.id for d in docs] == ["Cats-0-0", "Cats-0-1", "Dogs-1-0"]
    metadata = {"title": "Cats", "article": 0, "paragraph": 1}
    assert docs[1] == Document("Cats-0-1", "Cats sleep a lot.", "Cats", metadata)
    questions = read_squad_questions(path)
    assert [(q.id, q.answers, q.doc_id) for q in questions] == [
        ("q1", ["purr"], "Cats-0-0"),
        ("q2", ["a lot"], "Cats-0-1"),
    ]
    assert questions[1].question == "How much do cats sleep?"


def test_textdir_reader(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("intro\n\n# Guide\n\none two three four five", encoding="utf-8")
    (tmp_path / "a.txt").write_text("# not a heading in txt\nhello", encoding="utf-8")
    (tmp_path / "c.rst").write_text("   \n", encoding="utf-8")  # no tokens: no chunks
    (tmp_path / "skip.py").write_text("print()", encoding="utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.md").write_text("secret", encoding="utf-8")
    docs = list(read_corpus(tmp_path, chunk_tokens=4, chunk_overlap=1))
    assert [(d.id, d.title, d.text) for d in docs] == [
        ("a.txt#0", "a", "# not a heading"),
        ("a.txt#1", "a", "heading in txt\nhello"),
        ("sub/b.md#0", "Guide", "intro\n\n# Guide"),
        ("sub/b.md#1", "Guide", "Guide\n\none two three"),
        ("sub/b.md#2", "Guide", "three four five"),
    ]
    assert docs[3].metadata == {"path": "sub/b.md", "chunk": 1}


def test_detect_format(tmp_path: Path, beir_dir: Path) -> None:
    assert detect_format(beir_dir) == "beir"
    assert detect_format(tmp_path / "beir" / "qrels") == "text"
    assert detect_format(tmp_path / "x.jsonl") == "jsonl"
    assert detect_format(tmp_path / "x.json") == "squad"
    with pytest.raises(CorpusError, match="cannot tell the corpus format"):
        detect_format(tmp_path / "x.csv")


def test_explicit_format_overrides_detection(beir_dir: Path) -> None:
    assert [d.id for d in read_corpus(beir_dir / "corpus.jsonl", "jsonl")] == ["d1", "d2"]
    expected = r"unknown corpus format 'csv'; known formats: beir, jsonl, squad, text$"
    with pytest.raises(CorpusError, match=expected):
        read_corpus(beir_dir, "csv")


def test_missing_corpus(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"corpus not found: .*nope"):
        read_corpus(tmp_path / "nope")


# --- chunking --------------------------------------------------------------------------------------------


def test_chunk_boundaries_with_overlap() -> None:
    text = " ".join(f"w{i}" for i in range(10))
    assert chunk_text(text, chunk_tokens=4, chunk_overlap=1) == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert chunk_text(text, chunk_tokens=4, chunk_overlap=2) == [
        "w0 w1 w2 w3",
        "w2 w3 w4 w5",
        "w4 w5 w6 w7",
        "w6 w7 w8 w9",
    ]
    assert chunk_text(text, chunk_tokens=4, chunk_overlap=0) == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]
    assert chunk_text(text, chunk_tokens=10, chunk_overlap=3) == [text]
    assert chunk_text(" \n\t ", 4, 1) == []


def test_chunk_prefers_paragraph_boundary() -> None:
    text = "a b c\n\nd e f g h i"
    # The window a..f would cut paragraph 2; it ends before "d" (in the window's second half) instead.
    assert chunk_text(text, chunk_tokens=6, chunk_overlap=1) == ["a b c", "c\n\nd e f g h", "h i"]
    # A paragraph start in the first half of the window is ignored (no tiny chunks).
    assert chunk_text("a\n\nb c d e f", chunk_tokens=4, chunk_overlap=0) == ["a\n\nb c d", "e f"]


@pytest.mark.parametrize("tokens, overlap", [(4, 4), (4, 5), (4, -1), (0, 0)])
def test_chunk_rejects_bad_sizes(tokens: int, overlap: int) -> None:
    with pytest.raises(ConfigError, match="chunk_"):
        chunk_text("a b c", tokens, overlap)


def test_every_chunk_is_bounded_and_covers_the_text() -> None:
    text = "\n\n".join(" ".join(f"p{p}w{i}" for i in range(p % 7 + 1)) for p in range(30))
    words = text.split()
    chunks = chunk_text(text, chunk_tokens=8, chunk_overlap=3)
    assert all(len(c.split()) <= 8 for c in chunks)
    rebuilt = chunks[0].split()
    for prev, chunk in pairwise(chunks):
        assert chunk.split()[:3] == prev.split()[-3:]  # exactly the overlap is repeated
        rebuilt += chunk.split()[3:]
    assert rebuilt == words


# --- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "x", "text": ', r"c\.jsonl:2: invalid JSON"),
        ('["a list"]', r"c\.jsonl:2: expected a JSON object"),
        ('{"text": "no id"}', r"c\.jsonl:2: missing id"),
        ('{"id": 7, "text": "int id"}', r"c\.jsonl:2: id must be a string, got int"),
        ('{"id": "x", "title": "no text key"}', r"c\.jsonl:2: document 'x' has no text"),
        ('{"id": "x", "text": "  ", "title": ""}', r"c\.jsonl:2: document 'x' has neither text nor title"),
        ('{"id": "x", "text": 3}', r"c\.jsonl:2: text of 'x' must be a string"),
        ('{"id": "ok", "text": "dup"}', r"c\.jsonl: duplicate document id 'ok' at line 2 \(first at line 1"),
    ],
)
def test_jsonl_bad_record_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "ok", "text": "fine"}\n' + line + "\n", encoding="utf-8")
    docs = read_corpus(path)
    assert next(docs).id == "ok"  # a generator: the first record is read before the bad one
    with pytest.raises(CorpusError, match=message):
        next(docs)


def test_non_utf8_files(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "\xff"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: not valid UTF-8"):
        list(read_corpus(tmp_path / "c.jsonl"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_bytes(b"fine\n\xe9t\xe9\n")
    with pytest.raises(CorpusError, match=r"a\.md:2: not valid UTF-8"):
        list(read_corpus(tmp_path / "docs"))
    (tmp_path / "s.json").write_bytes(b'{"data": "\xff"}')
    with pytest.raises(CorpusError, match=r"s\.json:1: not valid UTF-8"):
        list(read_corpus(tmp_path / "s.json"))


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"data": [}', r"s\.json:1: invalid JSON"),
        ('{"version": "1.1"}', r"s\.json: not a SQuAD file"),
        ('{"data": [{"title": "T"}]}', r"article 0: expected an object with a 'paragraphs' list"),
        ('{"data": [{"title": "T", "paragraphs": [{"qas": []}]}]}', r"article 0, paragraph 0: expected"),
    ],
)
def test_squad_bad_shape(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match=message):
        list(read_corpus(path))


def test_squad_duplicate_question_id(tmp_path: Path) -> None:
    qa = {"id": "q", "question": "Why?", "answers": [{"text": "because"}]}
    paragraphs = [{"context": "one", "qas": [qa]}, {"context": "two", "qas": [qa]}]
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"data": [{"title": "T", "paragraphs": paragraphs}]}), encoding="utf-8")
    with pytest.raises(CorpusError, match=r"duplicate question id 'q' at article 0, paragraph 1, question 0"):
        read_squad_questions(path)


def test_beir_bad_files(beir_dir: Path) -> None:
    (beir_dir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"test\.tsv:2: expected 3 tab-separated fields, got 2"):
        read_beir_qrels(beir_dir)
    (beir_dir / "qrels" / "test.tsv").write_text("q1\td1\thigh\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"test\.tsv:1: relevance must be an integer, got 'high'"):
        read_beir_qrels(beir_dir)
    with pytest.raises(CorpusError, match=r"corpus not found: .*dev\.tsv"):
        read_beir_qrels(beir_dir, "dev")
    write_jsonl(beir_dir / "queries.jsonl", [{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}])
    with pytest.raises(CorpusError, match=r"duplicate query id 'q1' at line 2 \(first at line 1\)"):
        read_beir_queries(beir_dir)


def test_textdir_without_text_files(tmp_path: Path) -> None:
    (tmp_path / "x.py").write_text("pass", encoding="utf-8")
    with pytest.raises(CorpusError, match="no text files"):
        read_corpus(tmp_path)


# --- real data (golden numbers) --------------------------------------------------------------------------


def _real_data(name: str) -> Path:
    path = data_dir() / name
    if not path.exists():
        pytest.fail(f"evaluation data not found at {path}; set RAG_DATA_DIR")
    return path


def test_scifact_counts() -> None:
    folder = _real_data("scifact")
    ids = [d.id for d in read_corpus(folder)]
    assert len(ids) == len(set(ids)) == 5183
    queries, qrels = read_beir_queries(folder), read_beir_qrels(folder, "test")
    assert len(queries) == 1109
    assert len(qrels) == 300 and set(qrels) <= set(queries)
    assert sum(len(judged) for judged in qrels.values()) == 339
    assert {doc_id for judged in qrels.values() for doc_id in judged} <= set(ids)


def test_xquad_counts() -> None:
    path = _real_data("xquad-en") / "xquad.en.json"
    docs = list(read_corpus(path))
    questions = read_squad_questions(path)
    assert len(docs) == 240 and len(questions) == 1190
    texts = {d.id: d.text for d in docs}
    # every gold answer is a span of the paragraph it points to
    assert all(answer in texts[q.doc_id] for q in questions for answer in q.answers)
