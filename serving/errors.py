"""Every error response of the API, in one of two shapes chosen by the route.

- ragloom's routes: FastAPI's ``{"detail": "message"}``, and for 422 pydantic's list of errors,
  ``{"detail": [{"type", "loc", "msg", "input"}]}``, whether pydantic or ragloom found the problem.
- the OpenAI-compatible routes (``/v1/chat/completions``, ``/v1/models``): OpenAI's
  ``{"error": {"message", "type", "param", "code"}}``, which the ``openai`` client reads into its exceptions.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag.errors import RagError
from rag.serving.gate import QueueFullError
from rag.serving.generation import ClientGone, GenerationTimeout
from rag.serving.metrics import Metrics
from rag.serving.settings import ServeSettings
from rag.serving.sse import error_status

log = logging.getLogger(__name__)
OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    503: "server_error",
    504: "timeout_error",
}


class ErrorResponse(BaseModel):
    """A ragloom error: what went wrong, in words."""

    detail: str


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class OpenAIError(BaseModel):
    """An error of the OpenAI-compatible routes, in OpenAI's shape."""

    error: OpenAIErrorBody


class FieldError(HTTPException):
    """A 422 about one field, found by ragloom (a limit of the settings); reported as pydantic reports it."""

    def __init__(self, field: str, message: str, value: Any = None, kind: str = "value_error") -> None:
        super().__init__(422, message)
        self.errors = [{"type": kind, "loc": ["body", field], "msg": message, "input": value}]


def is_openai(request: Request) -> bool:
    return request.url.path.startswith(OPENAI_PATHS)


def openai_error(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def respond(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = openai_error(status, message) if is_openai(request) else {"detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI, settings: ServeSettings, metrics: Metrics) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = _jsonable(error.errors())
        if is_openai(request):
            first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
            param = ".".join(str(p) for p in first["loc"][1:]) or None
            return JSONResponse(openai_error(422, f"{param}: {first['msg']}", param), status_code=422)
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if isinstance(error, FieldError):
            if is_openai(request):
                field = error.errors[0]["loc"][-1]
                return JSONResponse(openai_error(422, str(error.detail), field), status_code=422)
            return JSONResponse({"detail": _jsonable(error.errors)}, status_code=422)
        return respond(request, error.status_code, str(error.detail), error.headers)

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, error: QueueFullError) -> JSONResponse:
        metrics.rejected.inc()
        message = f"{error}; retry after {settings.retry_after_s} s"
        return respond(request, 503, message, {"Retry-After": str(settings.retry_after_s)})

    @app.exception_handler(GenerationTimeout)
    async def timeout(request: Request, error: GenerationTimeout) -> JSONResponse:
        return respond(request, 504, str(error))

    @app.exception_handler(ClientGone)
    async def gone(request: Request, error: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    @app.exception_handler(RagError)
    async def rag_error(request: Request, error: RagError) -> JSONResponse:
        status = error_status(error)
        headers = {"Retry-After": str(settings.retry_after_s)} if status == 503 else None
        return respond(request, status, str(error), headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return respond(request, 500, "internal server error; the server logged it")


def _jsonable(errors: Any) -> list[dict[str, Any]]:
    """pydantic's error list as JSON can hold it: ``ctx`` values as text, NaN and infinities as text."""
    from fastapi.encoders import jsonable_encoder

    cleaned = []
    for e in errors:
        item = {k: v for k, v in e.items() if k != "ctx"}
        if "ctx" in e:
            item["ctx"] = {k: str(v) for k, v in e["ctx"].items()}
        cleaned.append(item)
    return _finite(jsonable_encoder(cleaned))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": what the client sent, in words
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
