"""Third-party suites and clients against ragloom as they use it: the official ``openai`` client against a
real ``rag serve`` (usage, ``stream_options.include_usage``, ``GET /v1/models/{id}``, OpenAI-shaped errors)
and LangChain's standard ``RetrieversIntegrationTests`` on ``RagRetriever``."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests
from processes import TOKEN, RagServer, write_corpus

from rag.collection import Collection, build_index
from rag.serving.langchain import RagRetriever

pytestmark = pytest.mark.slow  # the bundled small LLM in a server process

DOCS = [
    {"id": "paris", "title": "France", "text": "Paris is the capital of France."},
    {"id": "berlin", "title": "Germany", "text": "Berlin is the capital of Germany."},
    {"id": "rome", "title": "Italy", "text": "Rome is the capital of Italy."},
    {"id": "cats", "title": "Cats", "text": "Cats purr when they are content."},
    {"id": "tea", "title": "Tea", "text": "Green tea is made from unoxidised leaves."},
]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@functools.cache
def tiny_index() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="ragloom-conformance-"))
    build_index(write_corpus(folder / "c.jsonl", DOCS), folder / "c", config={"show_progress": False})
    return folder / "c" / "dense"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RagServer]:
    log = tmp_path_factory.mktemp("conformance") / "serve.log"
    extra = ["--generator", "smollm2-135m-instruct", "--threads", "1"]
    server = RagServer({"tiny": tiny_index()}, log, *extra)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server: RagServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)


def test_usage_is_filled_and_streamed_with_include_usage(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=6)
    usage = plain.usage
    assert usage is not None and usage.prompt_tokens > 20 and 1 <= usage.completion_tokens <= 6
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=QUESTION, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-1].choices == []
    assert chunks[-1].usage == usage  # greedy: the same prompt and the same tokens as the plain request
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == plain.choices[0].message.content

    without = list(client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2, stream=True))
    assert all(c.usage is None and c.choices for c in without)  # no usage chunk unless asked


def test_models_retrieve_and_openai_shaped_errors(client: openai.OpenAI, server: RagServer) -> None:
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("nope")
    assert missing.value.type == "not_found_error" and "'nope' does not exist" in missing.value.message
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="nope", messages=QUESTION)
    assert "unknown collection 'nope'" in unknown.value.message
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        client.chat.completions.create(model="tiny", messages=QUESTION, temperature=5)
    assert invalid.value.type == "invalid_request_error" and invalid.value.param == "temperature"
    with pytest.raises(openai.UnprocessableEntityError) as too_many:
        client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=100_000)
    assert too_many.value.param == "max_tokens" and "above the limit" in too_many.value.message
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        wrong.models.list()
    assert denied.value.type == "authentication_error"
    with server.client() as http:  # ragloom's own routes keep FastAPI's shape
        body = http.post("/v1/search", json={"collection": "nope", "query": "x"}).json()
        assert body == {"detail": "unknown collection 'nope'; served: tiny"}


class TestRagRetrieverStandard(RetrieversIntegrationTests):
    """LangChain's standard retriever tests, run as LangChain runs them for its integrations."""

    @property
    def retriever_constructor(self) -> type[RagRetriever]:
        return RagRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"collection": Collection(tiny_index())}

    @property
    def retriever_query_example(self) -> str:
        return "What is the capital of France?"
