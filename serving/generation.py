"""Run one generation for a request: retrieval, then tokens pulled from a worker thread one at a time.

Answers go through the collection's :class:`~rag.pipeline.Pipeline`, as ``rag ask`` and LangChain's do:
``retrieve`` when the request arrives, ``generate`` once it has a slot at the model.

Between two tokens the loop checks the request's deadline and whether the client is still connected, so a
timeout or a disconnect stops the model within one token. Every route that generates (``/v1/answer``, JSON or
SSE, and ``/v1/chat/completions``, with passages or as a plain chat with the served model) goes through
:func:`stream_tokens`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import anyio
from starlette.requests import Request

from rag.errors import ConfigError
from rag.generation.answer_stream import AnswerStream
from rag.generation.attribution import attribute
from rag.generation.base import ChatParams, GenerationParams, Generator
from rag.generation.prompt import ANSWER_REMINDER, SYSTEM_PROMPT, build_messages
from rag.pipeline import Retrieval
from rag.serving.state import ServedCollection, ServerState
from rag.types import Answer, Document, Hit, TokenLogprob

_END = object()


class GenerationTimeout(Exception):
    """The request's deadline passed before the answer was complete (HTTP 504)."""


class ClientGone(Exception):
    """The client disconnected; generation stopped."""


@dataclass
class Generation:
    """One request's retrieval and, once streamed, its answer; or a plain chat reply (``messages``)."""

    collection: ServedCollection | None  # None: a plain chat with the served model, no retrieval
    question: str
    params: GenerationParams | ChatParams  # a chat's when ``messages`` is set
    deadline: float  # time.monotonic() value
    hits: list[Hit] = field(default_factory=list)
    passages: list[Document] = field(default_factory=list)
    retrieve_s: float = 0.0
    pieces: list[str] = field(default_factory=list)
    first_token_s: float = 0.0
    generate_s: float = 0.0
    prompt_tokens: int = 0  # the chat prompt (instruction, passages, question), as the model reads it
    completion_tokens: int = 0  # tokens generated (a piece of text may hold several)
    messages: list[dict[str, str]] | None = None  # a plain chat's conversation, sent to the model as is
    logprobs: list[TokenLogprob] | None = None  # filled in when the generation ends, if asked
    retrieval: Retrieval | None = None  # what the collection's pipeline retrieved (None: a plain chat)

    @property
    def usage(self) -> dict[str, int]:
        """OpenAI's ``usage`` object."""
        total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }

    @property
    def text(self) -> str:
        return "".join(self.pieces).strip()

    @property
    def citations(self) -> list[str]:
        return attribute(self.text, self.passages, self.question).citations

    @property
    def tokens(self) -> int:
        """Tokens generated: as the finished stream counts them, else the pieces so far (one or more each)."""
        return max(self.completion_tokens, len(self.pieces))

    @property
    def finish_reason(self) -> str:
        """``length`` when the answer ran to ``max_new_tokens`` tokens."""
        return "length" if self.tokens >= self.params.max_new_tokens else "stop"


def request_params(
    state: ServerState, max_tokens: int, temperature: float, top_p: float, seed: int | None
) -> GenerationParams:
    """The generator's own defaults (e.g. keep 1 passage locally, all of them remotely) with what a request
    may set."""
    assert state.generator is not None
    defaults = state.generator.default_params()
    return dataclasses.replace(
        defaults, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed
    )


async def prepare(
    state: ServerState, collection: ServedCollection, question: str, k: int, params: GenerationParams
) -> Generation:
    """Retrieve the passages (in a worker thread); the deadline starts now."""
    if collection.pipeline is None:
        raise ConfigError("this server has no generator: it serves search only")
    generation = Generation(collection, question, params, time.monotonic() + state.settings.request_timeout_s)
    retrieval = await anyio.to_thread.run_sync(collection.pipeline.retrieve, question, k)
    generation.retrieval = retrieval
    generation.hits, generation.passages = retrieval.hits, retrieval.passages
    generation.retrieve_s = retrieval.timings.retrieve_s
    generation.prompt_tokens = await anyio.to_thread.run_sync(
        prompt_tokens, state.generator, question, generation.passages
    )
    return generation


async def prepare_chat(
    state: ServerState,
    messages: list[dict[str, str]],
    params: ChatParams,
) -> Generation:
    """A plain chat with the served model: no retrieval; the deadline starts now."""
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    deadline = time.monotonic() + state.settings.request_timeout_s
    generation = Generation(None, question, params, deadline, messages=messages)
    generation.prompt_tokens = await anyio.to_thread.run_sync(chat_tokens, state.generator, messages)
    return generation


def prompt_tokens(generator: Generator | None, question: str, passages: list[Document]) -> int:
    """How many tokens the generator's chat prompt for this question and these passages has (0: unknown)."""
    config = getattr(generator, "config", None)
    system = getattr(config, "system_prompt", SYSTEM_PROMPT)
    reminder = getattr(config, "reminder", ANSWER_REMINDER)
    return chat_tokens(generator, build_messages(question, passages, system, reminder))


def chat_tokens(generator: Generator | None, messages: Sequence[dict[str, str]]) -> int:
    """How many tokens ``messages`` take under the generator's chat template (0: unknown, e.g. remote)."""
    tokenizer = getattr(generator, "tokenizer", None)
    if tokenizer is None:
        return 0
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # a BatchEncoding
        ids = ids["input_ids"]
    return len(ids)


async def stream_tokens(state: ServerState, generation: Generation, request: Request) -> AsyncIterator[str]:
    """Yield answer pieces; raise ``QueueFullError``, ``GenerationTimeout`` or ``ClientGone`` on the way."""
    assert state.generator is not None
    remaining = generation.deadline - time.monotonic()
    try:
        async with state.gate.slot(timeout=max(remaining, 0.0)):
            state.metrics.in_flight.set(state.gate.in_flight)
            start = time.perf_counter()
            pieces: Iterator[str] = await anyio.to_thread.run_sync(_start, state.generator, generation)
            try:
                while True:
                    if time.monotonic() > generation.deadline:
                        raise GenerationTimeout(_timeout_message(state, "while generating"))
                    if await request.is_disconnected():
                        raise ClientGone("the client disconnected")
                    piece = await anyio.to_thread.run_sync(next, pieces, _END)
                    if piece is _END:
                        answer = _answer_of(pieces)
                        tokens = answer.timings.new_tokens if answer else 0
                        generation.completion_tokens = tokens or len(generation.pieces)
                        generation.logprobs = answer.logprobs if answer else None
                        break
                    if not generation.pieces:
                        generation.first_token_s = time.perf_counter() - start
                    generation.pieces.append(piece)
                    state.metrics.generated.inc()
                    yield piece
            finally:
                generation.generate_s = time.perf_counter() - start
                _close(pieces)
    except TimeoutError:
        raise GenerationTimeout(_timeout_message(state, "waiting for the model")) from None
    finally:
        state.metrics.in_flight.set(state.gate.in_flight)


async def run_to_end(state: ServerState, generation: Generation, request: Request) -> Generation:
    async for _ in stream_tokens(state, generation, request):
        pass
    return generation


def _start(generator: Generator, generation: Generation) -> Iterator[str]:
    if isinstance(generation.params, ChatParams):
        assert generation.messages is not None  # prepare_chat() sets both
        return generator.chat(generation.messages, generation.params)
    assert generation.collection is not None and generation.retrieval is not None  # prepare() retrieved
    pipeline = generation.collection.pipeline
    assert pipeline is not None  # prepare() refuses a collection without one
    return pipeline.generate(generation.question, generation.retrieval, generation.params)


def _timeout_message(state: ServerState, where: str) -> str:
    return f"the request took longer than its limit of {state.settings.request_timeout_s:g} s ({where})"


def _answer_of(pieces: Iterator[str]) -> Answer | None:
    """The finished stream's Answer (its token count: a text piece may hold several tokens; its logprobs)."""
    return pieces.answer if isinstance(pieces, AnswerStream) else None


def _close(pieces: Iterator[str]) -> None:
    """Stop the decode loop (its KV cache is freed); a generator still running in a thread ends on its own."""
    close = getattr(pieces, "close", None)
    if close is None:
        return
    with contextlib.suppress(ValueError):  # "generator already executing": a cancelled thread holds it
        close()
