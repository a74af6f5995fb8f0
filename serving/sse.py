"""Server-Sent Events framing and the error payload shared by the streaming routes."""

from __future__ import annotations

import json
from typing import Any

from rag.errors import CollectionBusyError, CorpusError, IndexFormatError, RagError, RemoteError
from rag.serving.gate import QueueFullError
from rag.serving.generation import GenerationTimeout

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: Any, event: str | None = None) -> str:
    """One event: an optional ``event: NAME`` line and one ``data:`` line (JSON, or a raw string: [DONE])."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def error_status(error: BaseException) -> int:
    """The HTTP status a failure maps to (also reported inside a stream that has already started)."""
    if isinstance(error, QueueFullError | IndexFormatError | CollectionBusyError):
        return 503  # a full queue; a damaged collection; one another process keeps locked
    if isinstance(error, GenerationTimeout):
        return 504
    if isinstance(error, RemoteError):
        return 502  # the generator's own server failed
    if isinstance(error, CorpusError):
        return 409
    if isinstance(error, RagError):
        return 400
    return 500


def error_detail(error: BaseException) -> str:
    return (
        str(error)
        if error_status(error) < 500 or isinstance(error, QueueFullError | GenerationTimeout | RagError)
        else ("internal error while generating; the server logged it")
    )
