"""SQuAD v1.1-format files (SQuAD, XQuAD): each paragraph is a document, each question a query.

Shape: ``{"data": [{"title": str, "paragraphs": [{"context": str, "qas": [...]}]}]}``. A paragraph's id is
``{title}-{article index}-{paragraph index}`` (``"Super_Bowl_50-0-3"``): stable as long as the file is, and
unique even when two articles share a title.

    >>> docs = list(read_squad("xquad.en.json"))  # doctest: +SKIP
    >>> questions = read_squad_questions("xquad.en.json")  # doctest: +SKIP
    >>> questions[0].doc_id  # the paragraph that holds the answer  # doctest: +SKIP
    'Super_Bowl_50-0-0'
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.corpus.jsonl import SeenIds
from rag.errors import CorpusError
from rag.types import Document


@dataclass(frozen=True, slots=True)
class SquadQuestion:
    """One question with its gold answers and the id of the paragraph document that holds them."""

    id: str
    question: str
    answers: list[str]
    doc_id: str


def paragraph_id(title: str, article_idx: int, para_idx: int) -> str:
    return f"{title}-{article_idx}-{para_idx}"


def read_squad(path: str | Path) -> Iterator[Document]:
    """Yield one Document per paragraph; ``title`` and ``metadata["title"]`` are the article title."""
    path = Path(path)
    for a, p, title, paragraph in _paragraphs(path):
        yield Document(
            id=paragraph_id(title, a, p),
            text=paragraph["context"],
            title=title,
            metadata={"title": title, "article": a, "paragraph": p},
        )


def read_squad_questions(path: str | Path) -> list[SquadQuestion]:
    """Read every question of the file, in file order, with its answer texts (duplicates kept once)."""
    path = Path(path)
    seen = SeenIds(path, "question id")
    questions = []
    for a, p, title, paragraph in _paragraphs(path):
        for q, qa in enumerate(paragraph.get("qas", [])):
            where = f"article {a}, paragraph {p}, question {q}"
            if not isinstance(qa, dict):
                raise CorpusError(f"{path}: {where}: expected an object")
            qid, text, answers = qa.get("id"), qa.get("question"), qa.get("answers", [])
            if not isinstance(qid, str) or not qid:
                raise CorpusError(f"{path}: {where}: missing or non-string 'id'")
            if not isinstance(text, str) or not text.strip():
                raise CorpusError(f"{path}: {where}: question {qid!r} has no 'question' text")
            if not isinstance(answers, list) or not all(
                isinstance(x, dict) and isinstance(x.get("text"), str) for x in answers
            ):
                raise CorpusError(f"{path}: {where}: 'answers' must be a list of {{\"text\": ...}} objects")
            seen.add(qid, where)
            texts = list(dict.fromkeys(x["text"] for x in answers))
            questions.append(SquadQuestion(qid, text, texts, paragraph_id(title, a, p)))
    return questions


def _paragraphs(path: Path) -> Iterator[tuple[int, int, str, dict[str, Any]]]:
    """Yield ``(article index, paragraph index, title, paragraph)`` after checking the SQuAD shape."""
    data = _load(path)
    for a, article in enumerate(data):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise CorpusError(f"{path}: article {a}: expected an object with a 'paragraphs' list")
        title = article.get("title", "")
        if not isinstance(title, str):
            raise CorpusError(f"{path}: article {a}: 'title' must be a string")
        for p, paragraph in enumerate(article["paragraphs"]):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise CorpusError(f"{path}: article {a}, paragraph {p}: expected an object with a 'context'")
            if not paragraph["context"].strip():
                raise CorpusError(f"{path}: article {a}, paragraph {p}: empty 'context'")
            yield a, p, title, paragraph


def _load(path: Path) -> list[Any]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        obj = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CorpusError(f"{path}:{line}: not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise CorpusError(
            f"{path}: not a SQuAD file: expected "
            '{"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [...]}]}]}'
        )
    return obj["data"]
