"""``POST /v1/search``: top-k passages of one collection."""

from __future__ import annotations

import time

import anyio
from fastapi import APIRouter

from rag.serving.deps import ReadAuth, StateDep, check_at_most, check_query, find_collection
from rag.serving.schemas import Passage, SearchRequest, SearchResponse
from rag.types import Document, Hit

router = APIRouter(prefix="/v1", tags=["retrieval"], dependencies=[ReadAuth])


def passage(doc: Document, hit: Hit | None = None) -> Passage:
    return Passage(
        id=doc.id,
        title=doc.title,
        text=doc.text,
        metadata=doc.metadata,
        score=hit.score if hit else None,
        rank=hit.rank if hit else None,
    )


@router.post("/search")
async def search(body: SearchRequest, state: StateDep) -> SearchResponse:
    """The ``k`` best passages for ``query``, best first, with scores."""
    collection = find_collection(state, body.collection)
    check_query(state.settings, body.query)
    check_at_most(body.k, state.settings.max_k, "k")
    start = time.perf_counter()
    hits, docs = await anyio.to_thread.run_sync(collection.search, body.query, body.k)
    return SearchResponse(
        collection=collection.name,
        hits=[passage(d, h) for h, d in zip(hits, docs, strict=True)],
        took_s=time.perf_counter() - start,
    )
