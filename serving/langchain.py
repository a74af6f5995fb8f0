"""LangChain adapters: a ``BaseRetriever`` over a ragloom collection, the whole pipeline as a ``Runnable``.

    >>> retriever = RagRetriever.from_index("my-collection/dense", k=3)               # doctest: +SKIP
    >>> retriever.invoke("what is ragloom?")[0].metadata["score"]                      # doctest: +SKIP
    0.71
    >>> chain = PipelineRunnable(pipeline)                                             # doctest: +SKIP
    >>> chain.invoke("what is ragloom?")["citations"]                                 # doctest: +SKIP
    ['readme-0']

Documents carry ``id`` (the ragloom document id, also in ``metadata["id"]``) and ``score``, ``rank`` and
``source`` (the retriever that scored it) in their metadata, next to the document's own metadata and title.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import ConfigDict, Field

from rag.collection import Collection
from rag.generation.base import GenerationParams
from rag.pipeline import Pipeline
from rag.types import Answer, Document, Hit


def to_langchain(doc: Document, hit: Hit | None = None) -> LCDocument:
    metadata: dict[str, Any] = {**doc.metadata, "id": doc.id, "title": doc.title}
    if hit is not None:
        metadata.update(score=hit.score, rank=hit.rank, source=hit.source)
    return LCDocument(id=doc.id, page_content=doc.text, metadata=metadata)


class RagRetriever(BaseRetriever):
    """Top-``k`` documents of a ragloom collection; ``ainvoke`` runs the search in a worker thread."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    collection: Collection
    k: int = Field(default=5, ge=1)

    @classmethod
    def from_index(cls, index_dir: str | Path, k: int = 5) -> RagRetriever:
        return cls(collection=Collection(index_dir), k=k)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[LCDocument]:
        """The top ``k`` documents (``invoke(query, k=3)``; default: the retriever's ``k``)."""
        hits, docs = self.collection.search(query, k=self.k if k is None else k)  # one committed state
        return [to_langchain(d, h) for h, d in zip(hits, docs, strict=True)]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[LCDocument]:
        return await asyncio.to_thread(
            self._get_relevant_documents, query, run_manager=run_manager.get_sync(), k=k
        )


class PipelineRunnable(Runnable[str, dict[str, Any]]):
    """``question -> {"answer", "citations", "documents", "timings"}``; ``stream`` yields answer text pieces.

    ``batch`` and ``ainvoke`` come from ``Runnable`` (a thread pool / a worker thread).
    """

    def __init__(self, pipeline: Pipeline, params: GenerationParams | None = None) -> None:
        self.pipeline = pipeline
        self.params = params

    def invoke(self, input: str, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        return self._call_with_config(self._answer, input, config)

    def _answer(self, question: str) -> dict[str, Any]:
        return _as_dict(self.pipeline.answer(question, self.params))

    def stream(self, input: str, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[str]:  # type: ignore[override]
        yield from self.pipeline.stream(input, self.params)


def _as_dict(answer: Answer) -> dict[str, Any]:
    t = answer.timings
    return {
        "answer": answer.text,
        "citations": answer.citations,
        "documents": [to_langchain(d) for d in answer.passages],
        "timings": {"retrieve_s": t.retrieve_s, "prefill_s": t.prefill_s, "decode_s": t.decode_s},
    }
