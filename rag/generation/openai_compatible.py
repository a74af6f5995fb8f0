"""A generator on any OpenAI-compatible ``/v1/chat/completions`` server: vLLM, SGLang, llama.cpp's server,
Ollama, a hosted API, or another ``rag serve``.

The prompt is the local generator's (instruction, numbered passages, question, reminder), sent as chat
messages; citations come from attribution (:mod:`rag.generation.attribution`) as for the local generator.
Requests go through the official ``openai`` client, whose retries back off exponentially on connection
errors, 408, 409, 429 and 5xx. The key is read from the environment variable ``api_key_env`` (local servers
usually accept any key). Every request streams, so that ``prefill_s`` is the real time to the first token.

>>> config = OpenAICompatibleConfig(base_url="http://127.0.0.1:8080/v1", model="qwen2.5-coder-1.5b-instruct")
>>> generator = OpenAICompatibleGenerator(config)  # doctest: +SKIP
>>> generator.answer("When was the Swiss Confederation founded?", passages).text  # doctest: +SKIP
'The Swiss Confederation was founded in 1291 [1].'

Decoding techniques that need the model's logits or its KV cache (context-aware decoding, drafting, parallel
contexts, passage pruning, the citation constraint) cannot run on a remote server: asking for one raises a
``ConfigError`` rather than answering without it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rag.errors import ConfigError, EmptyQueryError, RemoteError
from rag.generation.answer_stream import AnswerPieces, AnswerStream
from rag.generation.attribution import attribute
from rag.generation.base import ChatParams, GenerationParams, Generator, SamplingParams
from rag.generation.prompt import ANSWER_REMINDER, SYSTEM_PROMPT, build_messages
from rag.registry import register
from rag.types import Answer, Document, Timings, TokenLogprob

REMOTE_GENERATOR = "openai-compatible"  # the generator's registered name, as CLI flags and configs give it


@dataclass(frozen=True)
class OpenAICompatibleConfig:
    """Where the server is, which of its models answers, and the default decoding of every request."""

    base_url: str = ""  # e.g. http://127.0.0.1:8080/v1 (the path up to /chat/completions)
    model: str | None = None  # the server's model id; None: the first one its GET /models lists
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key; unset: "none" is sent
    timeout_s: float = 120.0  # per request (connect, and each read while streaming)
    max_retries: int = 2  # retries after the first try, with the client's exponential backoff
    # how a request that passes no parameters is decoded: all passages in the prompt, since choosing one
    # (keep_passages) needs the model's likelihoods
    defaults: GenerationParams = field(default_factory=lambda: GenerationParams(keep_passages=0))
    system_prompt: str = SYSTEM_PROMPT
    reminder: str = ANSWER_REMINDER

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"base_url must be an http(s) URL such as http://127.0.0.1:8080/v1, got {self.base_url!r}"
            )
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.model is not None and not self.model.strip():
            raise ConfigError("model is empty; name one of the server's models, or None for its first")
        _check_remote(self.defaults, self.defaults.keep_passages + 1)  # as if more passages than it keeps


@register("generator", REMOTE_GENERATOR, OpenAICompatibleConfig)
class OpenAICompatibleGenerator(Generator):
    """Answers through a remote chat-completions server; see the module docstring."""

    def __init__(self, config: OpenAICompatibleConfig) -> None:
        from openai import OpenAI

        self.config = config
        self.client = OpenAI(
            base_url=config.base_url,
            api_key=os.environ.get(config.api_key_env) or "none",
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )
        self._model = config.model

    @property
    def model(self) -> str:
        """The server's model id that answers (asked from the server on first use when not configured)."""
        if self._model is None:
            listed = [m.id for m in self._call(self.client.models.list).data]
            if not listed:
                raise RemoteError(f"the server at {self.config.base_url} lists no models")
            self._model = listed[0]
        return self._model

    def default_params(self) -> GenerationParams:
        return self.config.defaults

    def answer(
        self, question: str, passages: Sequence[Document], params: GenerationParams | None = None
    ) -> Answer:
        return self.stream(question, passages, params).read_to_end()

    def stream(
        self, question: str, passages: Sequence[Document], params: GenerationParams | None = None
    ) -> AnswerStream:
        if not question or not question.strip():
            raise EmptyQueryError("the question is empty")
        params = params or self.default_params()
        _check_remote(params, len(passages))
        messages = build_messages(question, passages, self.config.system_prompt, self.config.reminder)
        return AnswerStream(self._pieces(messages, params, question, passages))

    def chat(self, messages: Sequence[dict[str, str]], params: ChatParams | None = None) -> AnswerStream:
        """The server's reply to ``messages``; a last ``assistant`` message is sent for the server to
        continue (vLLM's ``continue_final_message``; llama.cpp's server and ``rag serve`` continue it as
        is). ``TokenLogprobs`` steps ask the server for logprobs (OpenAI allows at most 20)."""
        params = params or ChatParams.like(self.default_params())
        _check_remote(params, 0)
        top = params.logprobs.top if params.logprobs is not None else None
        return AnswerStream(self._pieces(list(messages), params, "", [], top))

    def _pieces(
        self,
        messages: list[dict[str, str]],
        params: SamplingParams,
        question: str,
        passages: Sequence[Document],
        top_logprobs: int | None = None,
    ) -> AnswerPieces:
        start = time.perf_counter()
        request = self._request(messages, params, top_logprobs)
        chunks = self._call(self.client.chat.completions.create, **request)
        first_token_at = start
        text = ""
        counted, reported = 0, 0  # content chunks; completion tokens the server reports, if it does
        logprobs: list[TokenLogprob] = []
        try:
            for chunk in _chunks(chunks, self.config.base_url):
                if chunk.usage is not None:
                    reported = chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
                    logprobs += [_token_logprob(entry) for entry in chunk.choices[0].logprobs.content]
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if not piece:
                    continue
                if not text:
                    first_token_at = time.perf_counter()
                    piece = piece.lstrip()
                    if not piece:
                        continue
                counted += 1
                text += piece
                yield piece
        finally:
            chunks.close()
        end = time.perf_counter()
        text = text.strip()
        timings = Timings(
            prefill_s=first_token_at - start, decode_s=end - first_token_at, new_tokens=reported or counted
        )
        cited = attribute(text, passages, question).citations if passages else []
        asked = logprobs if top_logprobs is not None else None
        return Answer(text, citations=cited, passages=list(passages), timings=timings, logprobs=asked)

    def _request(
        self, messages: list[dict[str, str]], params: SamplingParams, top_logprobs: int | None = None
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.seed is not None:
            request["seed"] = params.seed
        if top_logprobs is not None:
            request |= {"logprobs": True, "top_logprobs": top_logprobs}
        if params.logit_bias:
            request["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
        extra: dict[str, Any] = {}  # not OpenAI fields; vLLM, SGLang and llama.cpp's server read them
        if params.top_k > 0:
            extra["top_k"] = params.top_k
        if messages and messages[-1]["role"] == "assistant":
            extra |= {"continue_final_message": True, "add_generation_prompt": False}
        if extra:
            request["extra_body"] = extra
        return request

    def _call(self, method: Any, **kwargs: Any) -> Any:
        """``method(**kwargs)``, with the client's errors turned into ``RemoteError``s that say what to do."""
        try:
            return method(**kwargs)
        except Exception as error:
            raise _remote_error(error, self.config) from error


def _chunks(chunks: Any, base_url: str) -> Iterator[Any]:
    """The stream's chunks; a connection lost or an error event mid-stream becomes a ``RemoteError``."""
    try:
        yield from chunks
    except Exception as error:
        raise RemoteError(f"the answer stream from {base_url} broke off: {error}") from error


def _token_logprob(entry: Any) -> TokenLogprob:
    """An OpenAI ``ChatCompletionTokenLogprob`` as a :class:`TokenLogprob`."""
    top = [(t.token, float(t.logprob)) for t in entry.top_logprobs or ()]
    return TokenLogprob(entry.token, float(entry.logprob), top)


def _check_remote(params: GenerationParams | ChatParams, passages: int) -> None:
    """Refuse what needs the model's logits or KV cache: a remote server gives neither."""
    needs = {"drafting": params.drafting is not None, "min_new_tokens > 0": params.min_new_tokens > 0}
    if isinstance(params, GenerationParams):
        needs |= {
            "context-aware decoding (cad)": params.cad is not None,
            "parallel contexts": params.parallel is not None,
            f"passage pruning (keep_passages={params.keep_passages} of {passages}; pass 0)": params.prunes(
                passages
            ),
            "the citation constraint (require_citation)": params.require_citation,
        }
    refused = [name for name, asked in needs.items() if asked]
    if refused:
        raise ConfigError(
            f"an OpenAI-compatible server cannot run {', '.join(refused)}: it needs the model's logits or "
            "KV cache; use a local generator for it"
        )


def _remote_error(error: Exception, config: OpenAICompatibleConfig) -> RemoteError:
    import openai

    where = config.base_url
    if isinstance(error, openai.APITimeoutError):
        return RemoteError(f"the server at {where} did not answer within {config.timeout_s:g} s")
    if isinstance(error, openai.APIConnectionError):
        return RemoteError(f"cannot reach the server at {where}: is it running, and is the URL right?")
    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
        return RemoteError(f"the server at {where} refused the API key: set {config.api_key_env}")
    if isinstance(error, openai.NotFoundError):
        return RemoteError(f"the server at {where} has no model {config.model!r} (404): {_message(error)}")
    if isinstance(error, openai.APIStatusError):
        return RemoteError(f"the server at {where} answered {error.status_code}: {_message(error)}")
    return RemoteError(f"the request to {where} failed: {error}")


def _message(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        detail = body.get("error", body)
        if isinstance(detail, dict) and "message" in detail:
            return str(detail["message"])
        return str(detail)
    return str(error)
