"""The FastAPI app: ``create_app(settings)``; the lifespan loads every collection and the generator once.

    >>> from rag.serving.settings import ServeSettings
    >>> app = create_app(ServeSettings(collections={"docs": "docs-collection/dense"}))  # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)                 # doctest: +SKIP

Routes (all under ``/v1`` except health and metrics): ``POST /search``, ``POST /rerank``,
``POST /answer`` (JSON or SSE), ``POST /chat/completions`` and ``GET /models`` (OpenAI-compatible),
``GET /collections``, ``POST /collections/{name}/documents``, ``DELETE /collections/{name}/documents/{id}``;
``GET /healthz``, ``GET /metrics``. See docs/serving.md for the status codes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from rag.errors import RagError
from rag.serving import routes_answer, routes_collections, routes_openai, routes_rerank, routes_search
from rag.serving.deps import StateDep
from rag.serving.gate import QueueFullError
from rag.serving.generation import ClientGone, GenerationTimeout
from rag.serving.metrics import Metrics
from rag.serving.middleware import BodyLimit, RequestMetrics
from rag.serving.schemas import Health
from rag.serving.settings import ServeSettings
from rag.serving.sse import error_status
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
    )
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

    _add_error_handlers(app, settings, metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: sees the 413s too
    return app


def _add_error_handlers(app: FastAPI, settings: ServeSettings, metrics: Metrics) -> None:
    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, error: QueueFullError) -> JSONResponse:
        metrics.rejected.inc()
        return JSONResponse(
            {"detail": f"{error}; retry after {settings.retry_after_s} s"},
            status_code=503,
            headers={"Retry-After": str(settings.retry_after_s)},
        )

    @app.exception_handler(GenerationTimeout)
    async def timeout(request: Request, error: GenerationTimeout) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=504)

    @app.exception_handler(ClientGone)
    async def gone(request: Request, error: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    @app.exception_handler(RagError)
    async def rag_error(request: Request, error: RagError) -> JSONResponse:
        status = error_status(error)
        headers = {"Retry-After": str(settings.retry_after_s)} if status == 503 else None
        return JSONResponse({"detail": str(error)}, status_code=status, headers=headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error; the server logged it"}, status_code=500)
