"""The FastAPI app: ``create_app(settings)``; the lifespan loads every collection and the generator once.

    >>> from rag.serving.settings import ServeSettings
    >>> app = create_app(ServeSettings(collections={"docs": "docs-collection/dense"}))  # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)                 # doctest: +SKIP

Routes (all under ``/v1`` except health and metrics): ``POST /search``, ``POST /rerank``,
``POST /answer`` (JSON or SSE), ``POST /chat/completions`` and ``GET /models`` (OpenAI-compatible),
``GET /collections``, ``POST /collections/{name}/documents``, ``DELETE /collections/{name}/documents/{id}``;
``GET /healthz``, ``GET /metrics``; ``GET /`` is a page to ask questions in a browser (``web_page``). See
docs/serving.md for the status codes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.responses import Response

from rag.serving import (
    docs_page,
    openapi,
    routes_answer,
    routes_collections,
    routes_openai,
    routes_rerank,
    routes_search,
    web_page,
)
from rag.serving.deps import StateDep
from rag.serving.errors import add_error_handlers
from rag.serving.metrics import Metrics
from rag.serving.middleware import BodyLimit, RequestMetrics
from rag.serving.schemas import Health
from rag.serving.settings import ServeSettings
from rag.serving.state import ServerState

log = logging.getLogger(__name__)


def create_app(settings: ServeSettings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await anyio.to_thread.run_sync(ServerState.load, settings, metrics)
        app.state.rag = state
        log.info("serving %d collection(s): %s", len(state.collections), ", ".join(state.collections))
        try:
            yield
        finally:  # uvicorn has finished the in-flight requests (graceful shutdown) before this runs
            state.close()

    app = FastAPI(
        title="ragloom",
        version="1",
        summary="Retrieval-augmented generation with citations: search, answer, OpenAI-compatible chat.",
        lifespan=lifespan,
        docs_url=None,  # docs_page: the same Swagger UI, from local files
        redoc_url=None,  # ReDoc needs a CDN
    )
    docs_page.install(app)
    web_page.install(app)
    for module in (routes_search, routes_rerank, routes_answer, routes_openai, routes_collections):
        app.include_router(module.router)  # each module's router carries the /v1 prefix

    @app.get("/healthz", tags=["operations"])
    async def healthz(state: StateDep) -> Health:
        return Health(
            status="ok",
            collections=len(state.collections),
            unavailable=sorted(state.unavailable),
            generator=settings.generator,
            in_flight=state.gate.in_flight,
        )

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    add_error_handlers(app, settings, metrics)
    openapi.install(app, settings)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: sees the 413s too
    return app
