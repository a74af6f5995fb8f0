"""OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models``; a model is a collection, or the
served generator itself.

With a collection as the model, retrieval runs on the last user message and the answer is generated from the
retrieved passages (earlier turns are not sent to the model). Responses carry two extra fields, ``citations``
(cited document ids) and ``passages`` (the retrieved passages); in a stream they come with the last chunk.
With the generator's name as the model (listed first, before the collections), the whole conversation goes
to the model under its chat template, with no retrieval: the server is then a plain LLM endpoint, e.g. the
remote of another ragloom's ``openai-compatible`` generator. Works with the ``openai`` client as is::

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="TOKEN-or-anything")
    client.chat.completions.create(model="docs", messages=[{"role": "user", "content": "..."}])
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import StreamingResponse

from rag.generation.base import ChatParams, GenerationParams, TokenLogprobs
from rag.serving.deps import ReadAuth, StateDep, find_collection
from rag.serving.errors import FieldError, openai_error
from rag.serving.gate import QueueFullError
from rag.serving.generation import (
    ClientGone,
    Generation,
    prepare,
    prepare_chat,
    request_params,
    run_to_end,
    stream_tokens,
)
from rag.serving.routes_answer import check_generation_request, check_model_request
from rag.serving.routes_search import passage
from rag.serving.schemas import ChatCompletionRequest, ModelCard, ModelList
from rag.serving.sse import SSE_HEADERS, error_detail, error_status, sse
from rag.serving.state import ServerState

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[ReadAuth])
_STARTED = int(time.time())


@router.get("/models")
async def models(state: StateDep) -> ModelList:
    """The served generator first (a plain chat model: what a client naming no model should get), then one
    model per served collection."""
    ids = ([state.chat_model] if state.chat_model else []) + sorted(state.collections)
    return ModelList(data=[ModelCard(id=name, created=_STARTED) for name in ids])


@router.get("/models/{model_id}")
async def model(model_id: str, state: StateDep) -> ModelCard:
    """A served collection or the generator, as OpenAI's ``GET /v1/models/{model}``; 404 for others."""
    known = model_id in state.collections or model_id in state.unavailable or model_id == state.chat_model
    if not known:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"the model {model_id!r} does not exist")
    return ModelCard(id=model_id, created=_STARTED)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, state: StateDep, request: Request
) -> dict[str, Any] | StreamingResponse:
    max_tokens = body.max_completion_tokens or body.max_tokens
    if _is_chat_model(state, body.model):
        logprobs = _logprobs_asked(body)
        max_tokens = check_model_request(state, state.settings, max_tokens)  # the model checks its context
        messages = [{"role": _chat_role(m.role), "content": m.text()} for m in body.messages]
        sampling = dataclasses.replace(_params(state, body, max_tokens), logit_bias=_logit_bias(body))
        generation = await prepare_chat(state, messages, ChatParams.like(sampling, logprobs))
    else:
        collection = find_collection(state, body.model)
        question = next((m.text() for m in reversed(body.messages) if m.role == "user"), "")
        if not question.strip():
            raise FieldError("messages", "the messages hold no user message with text")
        if body.logprobs or body.top_logprobs is not None:
            raise FieldError("logprobs", "logprobs come with plain chats with the generator, not answers")
        if body.logit_bias:
            raise FieldError("logit_bias", "logit_bias applies to plain chats with the generator only")
        k, max_tokens = check_generation_request(state, state.settings, question, body.k, max_tokens)
        generation = await prepare(state, collection, question, k, _params(state, body, max_tokens))
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _chunks(state, generation, request, completion_id, body.model, include_usage),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    await run_to_end(state, generation, request)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": generation.text},
                "finish_reason": generation.finish_reason,
                "logprobs": _logprobs(generation),
            }
        ],
        "usage": generation.usage,
        **_extras(generation),
    }


def _logprobs_asked(body: ChatCompletionRequest) -> TokenLogprobs | None:
    """The logprobs asked, with how many alternatives each token lists (None: no logprobs asked)."""
    if body.top_logprobs is not None and not body.logprobs:
        raise FieldError("top_logprobs", "top_logprobs needs logprobs: true")
    return TokenLogprobs(body.top_logprobs or 0) if body.logprobs else None


def _logit_bias(body: ChatCompletionRequest) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``logit_bias`` map as (token id, bias) pairs; 422 for a key that is not a token id."""
    pairs = []
    for key, bias in (body.logit_bias or {}).items():
        if not (key.isascii() and key.isdigit()) or not -100 <= bias <= 100:
            raise FieldError("logit_bias", f"expected token id -> bias in [-100, 100], got {key!r}: {bias}")
        pairs.append((int(key), float(bias)))
    return tuple(pairs)


def _logprobs(g: Generation) -> dict[str, Any] | None:
    """OpenAI's ``logprobs`` object of a choice, or None when none were asked."""
    if g.logprobs is None:
        return None

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    content = [entry(t.token, t.logprob) | {"top_logprobs": [entry(*a) for a in t.top]} for t in g.logprobs]
    return {"content": content, "refusal": None}


def _is_chat_model(state: ServerState, model: str) -> bool:
    """Whether ``model`` names the served generator rather than a collection (a collection wins a tie)."""
    return model == state.chat_model and model not in state.collections and model not in state.unavailable


def _chat_role(role: str) -> str:
    """OpenAI's newer role names as chat templates know them."""
    return {"developer": "system", "function": "tool"}.get(role, role)


def _params(state: ServerState, body: ChatCompletionRequest, max_tokens: int) -> GenerationParams:
    return request_params(state, max_tokens, body.temperature or 0.0, body.top_p or 1.0, body.seed)


def _extras(g: Generation) -> dict[str, Any]:
    if g.collection is None:  # a plain chat: nothing retrieved, nothing to cite
        return {}
    return {
        "citations": g.citations,
        "passages": [passage(d, h).model_dump() for h, d in zip(g.hits, g.passages, strict=True)],
    }


async def _chunks(
    state: ServerState,
    generation: Generation,
    request: Request,
    completion_id: str,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    created = int(time.time())
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
    usage = {"usage": None} if include_usage else {}  # OpenAI: null on every chunk but the last

    def chunk(
        delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None, **extra: Any
    ) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}
        return sse({**body, "choices": [choice], **usage, **extra})

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for piece in stream_tokens(state, generation, request):
            yield chunk({"content": piece})
    except ClientGone:
        return
    except Exception as error:  # the openai client raises APIError on a chunk with an "error" field
        if error_status(error) >= 500 and not isinstance(error, QueueFullError):
            log.exception("chat completion stream failed")
        yield sse(openai_error(error_status(error), error_detail(error)))
        return
    # the logprobs of every token come with the last chunk: text pieces and tokens do not map one to one
    yield chunk({}, generation.finish_reason, _logprobs(generation), **_extras(generation))
    if include_usage:  # one more chunk, with no choices, carrying the usage of the whole request
        yield sse({**body, "choices": [], "usage": generation.usage})
    yield sse("[DONE]")
