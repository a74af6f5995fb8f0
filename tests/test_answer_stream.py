"""AnswerStream: text pieces first, then the finished Answer; ``then`` and ``close`` pass through."""

from __future__ import annotations

import dataclasses

import pytest

from rag.generation.answer_stream import AnswerPieces, AnswerStream
from rag.types import Answer, Timings


def pieces(log: list[str]) -> AnswerPieces:
    try:
        yield "Paris"
        yield " [1]."
        return Answer("Paris [1].", citations=["d1"], passages=[], timings=Timings(new_tokens=3))
    finally:
        log.append("closed")


def test_pieces_then_the_answer() -> None:
    stream = AnswerStream(pieces([]))
    assert next(stream) == "Paris"
    with pytest.raises(RuntimeError, match="read the stream to the end"):
        _ = stream.answer
    assert list(stream) == [" [1]."]
    assert stream.answer.text == "Paris [1]." and stream.answer.citations == ["d1"]
    assert list(stream) == [] and stream.answer.citations == ["d1"]  # exhausted; the answer stays


def test_then_changes_only_the_final_answer() -> None:
    def add_retrieval(answer: Answer) -> Answer:
        return dataclasses.replace(answer, timings=dataclasses.replace(answer.timings, retrieve_s=0.5))

    stream = AnswerStream(pieces([])).then(add_retrieval)
    assert "".join(stream) == "Paris [1]."
    assert stream.answer.timings == Timings(retrieve_s=0.5, new_tokens=3)


def test_closing_stops_the_producer_and_leaves_no_answer() -> None:
    log: list[str] = []
    stream = AnswerStream(pieces(log)).then(lambda answer: answer)
    assert next(stream) == "Paris"
    stream.close()
    assert log == ["closed"]
    assert list(stream) == []
    with pytest.raises(RuntimeError):
        _ = stream.answer
