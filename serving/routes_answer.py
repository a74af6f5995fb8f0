"""``POST /v1/answer``: a cited answer as JSON, or as Server-Sent Events with ``"stream": true``.

The stream sends ``event: token`` events (``{"text": "..."}``) as tokens are accepted, then one
``event: done`` event with the whole answer, its citations, passages and timings (the JSON response's body),
or one ``event: error`` event (``{"status": 504, "detail": "..."}``) if generation fails after the start.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from rag.serving.deps import (
    ReadAuth,
    StateDep,
    check_at_most,
    check_query,
    find_collection,
    require_generator,
)
from rag.serving.gate import QueueFullError
from rag.serving.generation import ClientGone, Generation, prepare, request_params, run_to_end, stream_tokens
from rag.serving.routes_search import passage
from rag.serving.schemas import AnswerRequest, AnswerResponse, TimingsOut
from rag.serving.settings import ServeSettings
from rag.serving.sse import SSE_HEADERS, error_detail, error_status, sse
from rag.serving.state import ServerState

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["generation"], dependencies=[ReadAuth])


def check_generation_request(
    state: ServerState, settings: ServeSettings, question: str, k: int | None, max_tokens: int | None
) -> tuple[int, int]:
    """Validate a generating request before any work; returns (k, max_tokens) with defaults filled in."""
    require_generator(state)
    check_query(settings, question, "question")
    k = k or settings.default_k
    check_at_most(k, settings.max_passages, "k")
    return k, check_model_request(state, settings, max_tokens)


def check_model_request(state: ServerState, settings: ServeSettings, max_tokens: int | None) -> int:
    """Validate what any request to the model asks; returns max_tokens with its default filled in."""
    require_generator(state)
    max_tokens = max_tokens or settings.default_max_tokens
    check_at_most(max_tokens, settings.max_tokens, "max_tokens")
    if state.gate.full:  # refuse before retrieval; the slot itself is taken when generation starts
        raise QueueFullError(f"the model queue is full ({state.gate.capacity} requests running or waiting)")
    return max_tokens


@router.post(
    "/answer",
    response_model=AnswerResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with stream=true"}},
)
async def answer(
    body: AnswerRequest, state: StateDep, request: Request
) -> AnswerResponse | StreamingResponse:
    """Retrieve ``k`` passages and answer ``question`` from them, citing passages by id."""
    collection = find_collection(state, body.collection)
    k, max_tokens = check_generation_request(state, state.settings, body.question, body.k, body.max_tokens)
    params = request_params(state, max_tokens, body.temperature, body.top_p, body.seed)
    generation = await prepare(state, collection, body.question, k, params)
    if body.stream:
        return StreamingResponse(
            _events(state, generation, request), media_type="text/event-stream", headers=SSE_HEADERS
        )
    await run_to_end(state, generation, request)
    return answer_response(generation)


def answer_response(g: Generation) -> AnswerResponse:
    assert g.collection is not None  # an answer is always over a collection
    return AnswerResponse(
        collection=g.collection.name,
        answer=g.text,
        citations=g.citations,
        passages=[passage(d, h) for h, d in zip(g.hits, g.passages, strict=True)],
        finish_reason=g.finish_reason,  # type: ignore[arg-type]
        timings=TimingsOut(
            retrieve_s=g.retrieve_s,
            first_token_s=g.first_token_s,
            generate_s=g.generate_s,
            tokens=g.tokens,
        ),
    )


async def _events(state: ServerState, generation: Generation, request: Request) -> AsyncIterator[str]:
    try:
        async for piece in stream_tokens(state, generation, request):
            yield sse({"text": piece}, "token")
    except ClientGone:
        return
    except Exception as error:  # the status line is sent: report the failure as an event
        if error_status(error) >= 500 and not isinstance(error, QueueFullError):
            log.exception("answer stream failed")
        yield sse({"status": error_status(error), "detail": error_detail(error)}, "error")
        return
    yield sse(answer_response(generation).model_dump(), "done")
