"""A streamed answer: its text piece by piece as tokens are accepted, then the whole :class:`Answer`.

``Generator.stream`` and ``Pipeline.stream`` return one. Code that only wants the text iterates it as any
``Iterator[str]``; code that also wants the citations and timings reads ``answer`` once the pieces run out:

>>> from rag.types import Answer
>>> def pieces():
...     yield "Paris"
...     yield " [1]."
...     return Answer("Paris [1].", citations=["d1"], passages=[])
>>> stream = AnswerStream(pieces())
>>> "".join(stream), stream.answer.citations
('Paris [1].', ['d1'])
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

from rag.types import Answer

# A generator that yields an answer's text pieces and then returns the finished Answer.
AnswerPieces = Generator[str, None, Answer]


class AnswerStream(Iterator[str]):
    """Iterates over the text pieces of ``pieces``; once they run out, ``answer`` is what it returned."""

    def __init__(self, pieces: AnswerPieces) -> None:
        self._pieces = pieces
        self._answer: Answer | None = None

    def __iter__(self) -> AnswerStream:
        return self

    def __next__(self) -> str:
        if self._answer is not None:
            raise StopIteration
        try:
            return next(self._pieces)
        except StopIteration as end:
            self._answer = end.value
            raise StopIteration from None

    def close(self) -> None:
        """Stop early: the decoding loop ends and frees its cache; ``answer`` stays unavailable."""
        self._pieces.close()

    @property
    def answer(self) -> Answer:
        """The whole answer (text, citations, passages, timings), once every piece has been read."""
        if self._answer is None:
            raise RuntimeError("the answer is complete only after the last piece: read the stream to the end")
        return self._answer

    def read_to_end(self) -> Answer:
        """The whole answer, reading whatever pieces are left."""
        for _ in self:
            pass
        return self.answer

    def then(self, finish: Callable[[Answer], Answer]) -> AnswerStream:
        """The same pieces, with ``finish`` applied to the final answer (the pipeline adds retrieval time)."""

        def pieces() -> AnswerPieces:
            yield from self  # closing the new stream closes this one
            return finish(self.answer)

        return AnswerStream(pieces())
