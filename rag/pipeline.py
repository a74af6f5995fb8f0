"""The RAG pipeline: retrieve, optionally rerank, then generate a cited answer.

>>> pipeline = Pipeline.from_config("pipeline.json")          # doctest: +SKIP
>>> pipeline = Pipeline(Collection("my-collection/dense"), CausalLMGenerator())  # doctest: +SKIP
>>> answer = pipeline.answer("What does ragloom run on?")     # doctest: +SKIP
>>> answer.text, answer.citations, answer.timings.total_s     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.collection import Collection
from rag.docstore import Docstore
from rag.errors import ConfigError, EmptyQueryError
from rag.generation.answer_stream import AnswerStream
from rag.generation.base import GenerationParams, Generator
from rag.indexes import Retriever
from rag.registry import build, make_config
from rag.rerankers.base import Reranker
from rag.types import Answer, Document, Hit, Timings


@dataclass(frozen=True)
class PipelineConfig:
    """What ``Pipeline.from_config`` reads: an index directory and named, configured components."""

    index: str
    k: int = 5  # passages given to the generator
    fetch_k: int = 20  # hits retrieved before reranking (used only with a reranker)
    generator: dict[str, Any] = field(default_factory=lambda: {"name": "causal-lm"})
    reranker: dict[str, Any] | None = None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")


class Pipeline:
    """Answers questions from ``retriever``: a :class:`~rag.collection.Collection` (an index opened with its
    docstore, safe beside other processes' writers), or a :class:`Retriever` built in Python with the
    ``docstore`` its hits come from (default: the one it was built with)."""

    def __init__(
        self,
        retriever: Collection | Retriever,
        generator: Generator,
        reranker: Reranker | None = None,
        *,
        docstore: Docstore | None = None,
        k: int = 5,
        fetch_k: int = 20,
    ):
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        self.retriever = retriever
        self.generator = generator
        self.reranker = reranker
        self.docstore = docstore or _docstore_of(retriever)
        if reranker is not None and getattr(reranker, "docstore", False) is None:
            reranker.docstore = self.docstore  # type: ignore[attr-defined]  # LLM rerankers read passage text
        self.k = k
        self.fetch_k = max(fetch_k, k)

    @classmethod
    def from_config(cls, path: str | Path) -> Pipeline:
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"pipeline config not found: {path}") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"invalid JSON in pipeline config {path}: {error}") from None
        config = make_config(PipelineConfig, raw)
        index = Path(config.index)
        if not index.is_absolute():
            index = Path(path).resolve().parent / index
        return cls(
            Collection(index),
            _build_named("generator", config.generator),
            _build_named("reranker", config.reranker) if config.reranker else None,
            k=config.k,
            fetch_k=config.fetch_k,
        )

    def retrieve(self, question: str, k: int | None = None) -> Retrieval:
        """The ``k`` (default: the pipeline's) hits given to the generator, their documents, and the seconds
        spent retrieving and reranking them."""
        if not question or not question.strip():
            raise EmptyQueryError("the question is empty")
        k = k or self.k
        start = time.perf_counter()
        hits, documents = self._search(question, max(self.fetch_k, k) if self.reranker else k)
        rerank_s = 0.0
        if self.reranker is not None:
            reranking = time.perf_counter()
            hits = self.reranker.rerank(question, hits, k=k)
            rerank_s = time.perf_counter() - reranking
        by_id = {d.id: d for d in documents}
        passages = [by_id[h.doc_id] for h in hits]
        spent = Timings(retrieve_s=time.perf_counter() - start - rerank_s, rerank_s=rerank_s)
        return Retrieval(hits, passages, spent)

    def answer(self, question: str, params: GenerationParams | None = None) -> Answer:
        retrieval = self.retrieve(question)
        return _with_retrieval(self.generator.answer(question, retrieval.passages, params), retrieval.timings)

    def stream(self, question: str, params: GenerationParams | None = None) -> AnswerStream:
        """Answer text as tokens are accepted; after the last piece, ``.answer`` is what ``answer`` returns.

        >>> stream = pipeline.stream("What does ragloom run on?")  # doctest: +SKIP
        >>> for piece in stream:  # doctest: +SKIP
        ...     print(piece, end="", flush=True)
        >>> stream.answer.citations, stream.answer.timings.total_s  # doctest: +SKIP
        """
        return self.generate(question, self.retrieve(question), params)

    def generate(
        self, question: str, retrieval: Retrieval, params: GenerationParams | None = None
    ) -> AnswerStream:
        """The answer to ``question`` from what :meth:`retrieve` found, as a stream; its Answer carries the
        retrieval's timings. ``answer`` and ``stream`` are this after ``retrieve``; a server calls the two
        apart, to retrieve before it waits for the model."""
        pieces = self.generator.stream(question, retrieval.passages, params)
        return pieces.then(lambda answer: _with_retrieval(answer, retrieval.timings))

    def _search(self, question: str, k: int) -> tuple[list[Hit], list[Document]]:
        """Hits and their documents; from a collection as one read consistent with other writers."""
        if isinstance(self.retriever, Collection):
            return self.retriever.search(question, k)
        hits = self.retriever.search([question], k=k)[0]
        return hits, self.docstore.get([h.doc_id for h in hits])


@dataclass(frozen=True)
class Retrieval:
    """What the generator is given: the hits, their documents in rank order, and the time they took."""

    hits: list[Hit]
    passages: list[Document]
    timings: Timings  # retrieve_s and rerank_s


def _with_retrieval(answer: Answer, spent: Timings) -> Answer:
    timings = dataclasses.replace(answer.timings, retrieve_s=spent.retrieve_s, rerank_s=spent.rerank_s)
    return dataclasses.replace(answer, timings=timings)


def _docstore_of(retriever: Collection | Retriever) -> Docstore:
    if isinstance(retriever, Collection):
        return retriever.docstore
    path = retriever.docstore_path
    if path is None:
        raise ConfigError("the retriever has no docstore; pass docstore= or load an index built by rag")
    return Docstore(path)


def _build_named(kind: str, spec: dict[str, Any]) -> Any:
    values = dict(spec)
    name = values.pop("name", None)
    if not name:
        raise ConfigError(f"pipeline config: the {kind} needs a 'name'")
    return build(kind, name, values)
