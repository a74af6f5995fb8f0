"""``POST /v1/rerank``: an LLM reranker over a fresh search, or over documents given in the request.

The reranker runs on the server's causal LM (the generator's, unless ``reranker_model`` names another) and
waits for the model in the same bounded queue as the generations: 503 + Retry-After when it is full, 504 when
no slot frees up within ``request_timeout_s``. A reranking that has started runs to its end.
"""

from __future__ import annotations

import time
from collections import Counter

import anyio
from fastapi import APIRouter, HTTPException, status

from rag.errors import ConfigError
from rag.serving.deps import ReadAuth, StateDep, check_at_most, check_query, find_collection
from rag.serving.errors import FieldError
from rag.serving.gate import QueueFullError
from rag.serving.generation import GenerationTimeout
from rag.serving.routes_search import passage
from rag.serving.schemas import RerankDocument, RerankRequest, RerankResponse
from rag.serving.state import ServedCollection, ServerState, check_reranker, local_rerankers
from rag.types import Document, Hit

router = APIRouter(prefix="/v1", tags=["retrieval"], dependencies=[ReadAuth])

DEFAULT_FETCH_K = 20  # candidates retrieved when the request names neither fetch_k nor documents


@router.post("/rerank")
async def rerank(body: RerankRequest, state: StateDep) -> RerankResponse:
    """The ``k`` best of ``fetch_k`` retrieved hits (or of ``documents``) as the LLM reranker orders them."""
    settings = state.settings
    collection = find_collection(state, body.collection)
    check_query(settings, body.query)
    check_at_most(body.k, settings.max_k, "k")
    name = reranker_name(state, body.reranker)
    if state.gate.full:  # refuse before any work, as /v1/answer does; the slot is taken to rerank
        raise QueueFullError(f"the model queue is full ({state.gate.capacity} requests running or waiting)")
    start = time.perf_counter()
    if body.documents is None:
        fetch_k = fetch_depth(body.k, body.fetch_k, settings.max_rerank)
        hits, docs = await anyio.to_thread.run_sync(collection.search, body.query, fetch_k)
    else:
        if body.fetch_k is not None:
            raise FieldError(
                "fetch_k", "fetch_k applies to a fresh search; documents were given", body.fetch_k
            )
        check_at_most(len(body.documents), settings.max_rerank, "documents")
        docs = await given_documents(collection, body.documents)
        hits = [Hit(d.id, 0.0, rank, "request") for rank, d in enumerate(docs, start=1)]
    reranked = await run_reranker(state, name, body.query, hits, docs, body.k)
    by_id = {d.id: d for d in docs}
    return RerankResponse(
        collection=collection.name,
        reranker=name,
        hits=[passage(by_id[h.doc_id], h) for h in reranked],
        took_s=time.perf_counter() - start,
    )


def reranker_name(state: ServerState, requested: str | None) -> str:
    """The reranker of this request: the one named, else the server's default; 4xx/503 when there is none."""
    if state.reranker_lm is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "this server has no model to rerank with: start it with a generator or --reranker-model",
        )
    known = local_rerankers()
    name = requested or state.settings.reranker
    if name is None:
        raise FieldError(
            "reranker",
            "no reranker is configured on this server (--reranker); "
            f"name one in the request's 'reranker': {', '.join(known)}",
        )
    try:
        check_reranker(name)
    except ConfigError as error:
        raise FieldError("reranker", str(error), name) from None
    return name


def fetch_depth(k: int, fetch_k: int | None, limit: int) -> int:
    """Candidates to retrieve: ``fetch_k`` (at least ``k``, at most ``limit``), by default ``max(k, 20)``."""
    if fetch_k is None:
        return min(max(k, DEFAULT_FETCH_K), limit)
    check_at_most(fetch_k, limit, "fetch_k")
    if fetch_k < k:
        raise FieldError("fetch_k", f"fetch_k={fetch_k} is below k={k}: rerank at least k hits", fetch_k)
    return fetch_k


async def given_documents(collection: ServedCollection, items: list[str | RerankDocument]) -> list[Document]:
    """The request's documents: ids read from the collection (404 if absent), texts as they are."""
    ids = [item if isinstance(item, str) else item.id or str(n) for n, item in enumerate(items)]
    repeated = [i for i, count in Counter(ids).items() if count > 1]
    if repeated:
        raise FieldError("documents", f"document id {repeated[0]!r} appears twice in documents", repeated[0])
    stored, missing = await anyio.to_thread.run_sync(
        collection.documents, [item for item in items if isinstance(item, str)]
    )
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (" …" if len(missing) > 5 else "")
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"not in collection {collection.name!r}: {shown}")
    from_store = iter(stored)
    return [
        next(from_store) if isinstance(item, str) else Document(doc_id, item.text, title=item.title)
        for doc_id, item in zip(ids, items, strict=True)
    ]


async def run_reranker(
    state: ServerState, name: str, query: str, hits: list[Hit], docs: list[Document], k: int
) -> list[Hit]:
    """Rerank in a worker thread while holding a model slot (``QueueFullError``/``GenerationTimeout``)."""
    reranker = state.reranker(name, docs)
    timeout = state.settings.request_timeout_s
    try:
        async with state.gate.slot(timeout=timeout):
            state.metrics.in_flight.set(state.gate.in_flight)
            return await anyio.to_thread.run_sync(reranker.rerank, query, hits, k)
    except TimeoutError:
        raise GenerationTimeout(
            f"the request took longer than its limit of {timeout:g} s (waiting for the model)"
        ) from None
    finally:
        state.metrics.in_flight.set(state.gate.in_flight)
