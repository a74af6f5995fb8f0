"""schemathesis against a live ``rag serve``: requests generated from the server's own OpenAPI schema (valid
and invalid ones, bounded), every response checked against the schema: documented status, declared content
type, body shape, no server error. Plus the schema's own claims: limits and one error model per route."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from processes import AUTH, RagServer, write_corpus
from schemathesis.generation import GenerationMode

from rag.collection import build_index

pytestmark = pytest.mark.slow  # a server process with the bundled small LLM

DOCS = [
    {"id": "paris", "title": "France", "text": "Paris is the capital of France."},
    {"id": "berlin", "title": "Germany", "text": "Berlin is the capital of Germany."},
    {"id": "tea", "title": "Tea", "text": "Green tea is made from unoxidised leaves."},
]
LIMITS = {"RAG_MAX_K": "5", "RAG_MAX_PASSAGES": "2", "RAG_DEFAULT_K": "1", "RAG_MAX_TOKENS": "2"}
LIMITS |= {"RAG_DEFAULT_MAX_TOKENS": "2", "RAG_MAX_RERANK": "3", "RAG_MAX_QUERY_CHARS": "300"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RagServer]:
    folder = tmp_path_factory.mktemp("openapi")
    build_index(write_corpus(folder / "c.jsonl", DOCS), folder / "c", config={"show_progress": False})
    extra = ["--generator", "smollm2-135m-instruct", "--threads", "1", "--reranker", "pointwise"]
    server = RagServer({"c": folder / "c" / "dense"}, folder / "serve.log", *extra, env=LIMITS)
    yield server
    server.stop()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_every_response_matches_the_schema(server: RagServer, mode: GenerationMode) -> None:
    """Every operation of the live schema, valid (or invalid) requests, every response validated."""
    spec = schemathesis.openapi.from_dict(httpx.get(f"{server.url}/openapi.json", timeout=30).json())
    failures: list[str] = []
    operations = [result.ok() for result in spec.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(operation.as_strategy(generation_mode=mode))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=server.url, headers=AUTH)

        try:
            check()
        except Unsatisfiable:  # no input to make invalid (GET /healthz, GET /metrics)
            assert mode == GenerationMode.NEGATIVE and operation.method.upper() == "GET"
        except Exception as error:  # schemathesis' report: the checks that failed, a curl to reproduce
            failures.append(f"{operation.label}: {error}")
    assert failures == [], "\n\n".join(failures)


def test_the_schema_states_the_limits_and_the_error_model(server: RagServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    models = spec["components"]["schemas"]
    assert models["SearchRequest"]["properties"]["k"]["maximum"] == 5
    assert models["SearchRequest"]["properties"]["query"]["maxLength"] == 300
    answer = models["AnswerRequest"]["properties"]
    assert answer["k"]["anyOf"][0]["maximum"] == 2 and answer["max_tokens"]["anyOf"][0]["maximum"] == 2
    assert answer["stream"]["type"] == "boolean"
    search = spec["paths"]["/v1/search"]["post"]["responses"]
    assert set(search) == {"200", "400", "401", "404", "413", "422", "503"}
    assert search["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert chat["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    with server.client() as http:  # booleans are strict: "true" and 1 are not booleans
        for value in ("true", 1):
            body = {"collection": "c", "question": "Capital of France?", "stream": value}
            r = http.post("/v1/answer", json=body)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "stream"]
        r = http.post("/v1/search", json={"collection": "c", "query": "x", "k": 6})
        assert r.status_code == 422
        assert r.json()["detail"][0] | {"msg": ""} == {
            "type": "less_than_equal",
            "loc": ["body", "k"],
            "msg": "",
            "input": 6,
        }
