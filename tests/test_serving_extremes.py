"""Property: no value of any numeric field of any route gives a 500, however extreme (tiny, huge, negative,
NaN, infinite): each request is answered, or refused with a 4xx. The bodies are raw JSON, so ``NaN`` and
``Infinity`` literals reach the server as a client could send them."""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from processes import write_corpus

from rag.collection import build_index
from rag.serving.app import create_app
from rag.serving.settings import ServeSettings

pytestmark = pytest.mark.slow  # generates with the bundled small LLM

FLOATS = [0.0, -0.0, 5e-324, 1e-300, 1e-45, 1e-7, 0.5, 1.0, 1.0000001, 2.0, 2.5, 1e308, -1e-300, -1.0]
FLOATS += [math.nan, math.inf, -math.inf]
INTS = [-(2**64), -(2**63) - 1, -(2**63), -1, 0, 1, 2, 3, 2**31 - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64]
INTS += [10**30]
NUMBERS = st.sampled_from(FLOATS + INTS)
ROUTES = {  # route -> (fixed fields, numeric fields)
    "/v1/search": ({"collection": "c", "query": "capital of France"}, ["k"]),
    "/v1/rerank": ({"collection": "c", "query": "capital of France"}, ["k", "fetch_k"]),
    "/v1/answer": (
        {"collection": "c", "question": "What is the capital of France?"},
        ["k", "max_tokens", "temperature", "top_p", "seed"],
    ),
    "/v1/chat/completions": (
        {"model": "c", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
        ["k", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n"],
    ),
}
DOCS = [
    {"id": "paris", "title": "France", "text": "Paris is the capital of France."},
    {"id": "berlin", "title": "Germany", "text": "Berlin is the capital of Germany."},
    {"id": "tea", "title": "Tea", "text": "Green tea is made from unoxidised leaves."},
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("extremes")
    build_index(write_corpus(folder / "c.jsonl", DOCS), folder / "c", config={"show_progress": False})
    limits = dict(max_k=3, max_passages=2, default_k=1, max_rerank=3, max_tokens=3, default_max_tokens=2)
    settings_ = ServeSettings(
        collections={"c": str(folder / "c" / "dense")},
        generator="smollm2-135m-instruct",
        reranker="pointwise",
        threads=1,
        api_token="t",
        **limits,
    )
    with TestClient(create_app(settings_), headers={"Authorization": "Bearer t"}) as c:
        yield c


def post(client: TestClient, route: str, body: dict) -> tuple[int, dict]:
    raw = json.dumps(body, allow_nan=True)  # NaN and Infinity as the literals a client can send
    r = client.post(route, content=raw, headers={"Content-Type": "application/json"})
    return r.status_code, r.json()


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_extreme_numbers_never_give_a_500(client: TestClient, route: str) -> None:
    fixed, fields = ROUTES[route]

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.fixed_dictionaries({}, optional={f: NUMBERS for f in fields}))
    def check(numbers: dict) -> None:
        status, body = post(client, route, {**fixed, **numbers})
        assert status in (200, 422), (numbers, status, body)
        if status == 200 and route == "/v1/answer":
            assert body["finish_reason"] in ("stop", "length") and body["timings"]["tokens"] >= 1

    check()


@pytest.mark.parametrize("route", ["/v1/answer", "/v1/chat/completions"])
def test_every_accepted_sampling_extreme_answers(client: TestClient, route: str) -> None:
    """Temperatures and top_p the schema accepts, down to the smallest double: sampled answers, no 500."""
    fixed = ROUTES[route][0]
    temperatures = [t for t in FLOATS if 0 < t <= 2]  # 5e-324 ... 2.0
    for temperature in temperatures:
        for top_p in (5e-324, 1e-7, 1.0):
            numbers = {"temperature": temperature, "top_p": top_p, "seed": 2**53 - 1, "max_tokens": 3}
            status, body = post(client, route, {**fixed, **numbers})
            assert status == 200, (numbers, body)


@given(value=st.sampled_from(FLOATS + INTS))
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_extreme_numbers_in_document_metadata(client: TestClient, value: float) -> None:
    doc = {"id": "meta", "text": "Lisbon is the capital of Portugal.", "metadata": {"v": value}}
    status, body = post(client, "/v1/collections/c/documents", {"documents": [doc]})
    assert status in (201, 422), body
    if status == 201:  # the stored number comes back in search results as valid JSON
        status, body = post(client, "/v1/search", {"collection": "c", "query": "Portugal", "k": 3})
        assert status == 200 and any(h["id"] == "meta" for h in body["hits"]), body
        assert client.delete("/v1/collections/c/documents/meta").status_code == 200


def test_generation_params_refuse_non_finite_values() -> None:
    from rag.errors import ConfigError
    from rag.generation.base import GenerationParams

    for bad in ({"temperature": math.nan}, {"temperature": math.inf}, {"top_p": math.nan}, {"seed": 2**64}):
        with pytest.raises(ConfigError):
            GenerationParams(**bad)
