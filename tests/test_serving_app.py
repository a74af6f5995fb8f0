"""The REST routes through FastAPI's TestClient: every route, every documented error status, live updates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rag.collection import build_index
from rag.docstore import Docstore
from rag.indexes import load_index
from rag.rerankers.lm import LMRerankerConfig, MemoryDocs
from rag.rerankers.pointwise import PointwiseReranker
from rag.serving.app import create_app
from rag.serving.settings import ServeSettings
from rag.types import Document, Hit

pytestmark = pytest.mark.slow  # loads the bundled small LLM

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOCS = [
    {"id": "paris", "title": "France", "text": "Paris is the capital of France."},
    {"id": "berlin", "title": "Germany", "text": "Berlin is the capital of Germany."},
    {"id": "cats", "title": "Cats", "text": "Cats purr when they are content."},
    {"id": "tea", "title": "Tea", "text": "Green tea is made from unoxidised leaves."},
]


def build_tiny_collection(folder: Path) -> Path:
    """Four documents indexed densely; returns the index directory."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(d) for d in DOCS) + "\n")
    build_index(corpus, folder / "tiny", config={"show_progress": False})
    return folder / "tiny" / "dense"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_collection(tmp_path_factory.mktemp("serving-app"))


@pytest.fixture(scope="module")
def client(index_dir: Path):
    settings = ServeSettings(
        collections={"tiny": str(index_dir)},
        generator="smollm2-135m-instruct",
        reranker="pointwise",
        threads=1,
        api_token=TOKEN,
        max_body_bytes=4_000,
        max_query_chars=200,
        max_k=10,
        max_rerank=4,
        max_passages=3,
        default_k=2,
        max_tokens=32,
        default_max_tokens=8,
    )
    with TestClient(create_app(settings), headers=AUTH) as c:
        yield c


def search_ids(client: TestClient, query: str, k: int = 4) -> list[str]:
    r = client.post("/v1/search", json={"collection": "tiny", "query": query, "k": k})
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["hits"]]


# --- reads -------------------------------------------------------------------------------------------------


def test_search_ranks_the_matching_document_first(client: TestClient) -> None:
    r = client.post(
        "/v1/search", json={"collection": "tiny", "query": "What is the capital of France?", "k": 2}
    )
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert [h["rank"] for h in hits] == [1, 2]
    assert hits[0]["id"] == "paris" and hits[0]["title"] == "France"
    assert hits[0]["score"] > hits[1]["score"]


def test_rerank_orders_a_fresh_search_as_the_reranker_does(client: TestClient) -> None:
    query = "Why do cats purr?"
    searched = client.post("/v1/search", json={"collection": "tiny", "query": query, "k": 4}).json()["hits"]
    r = client.post("/v1/rerank", json={"collection": "tiny", "query": query, "k": 2, "fetch_k": 4})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["reranker"] == "pointwise"  # the server's default
    assert [h["rank"] for h in out["hits"]] == [1, 2]
    top = out["hits"][0]
    assert (top["id"], top["title"], top["text"]) == ("cats", "Cats", "Cats purr when they are content.")
    # the same order and scores as the reranker run directly on the search hits, with the generator's model
    state = client.app.state.rag
    model, tokenizer = state.reranker_lm
    assert model is state.generator.model and tokenizer is state.generator.tokenizer  # shared, not reloaded
    docs = [Document(h["id"], h["text"], title=h["title"]) for h in searched]
    hits = [Hit(h["id"], h["score"], h["rank"], "dense") for h in searched]
    reranker = PointwiseReranker(
        LMRerankerConfig(model="smollm2-135m-instruct"),
        model=model,
        tokenizer=tokenizer,
        docstore=MemoryDocs(docs),
    )
    expected = reranker.rerank(query, hits, k=2)
    assert [h["id"] for h in out["hits"]] == [h.doc_id for h in expected]
    # pointwise scores a batch in one bf16 pass, whose rounding may differ between the server's worker thread
    # and this one (oneDNN blocks by thread count): within two bf16 steps of a logit near 1.5
    assert [h["score"] for h in out["hits"]] == pytest.approx([h.score for h in expected], abs=0.25)


def test_rerank_given_ids_and_texts_with_a_named_reranker(client: TestClient) -> None:
    documents = ["tea", "berlin", {"text": "Dogs bark at strangers.", "title": "Dogs"}, "cats"]
    body = {"collection": "tiny", "query": "Why do cats purr?", "documents": documents, "reranker": "icr"}
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["reranker"] == "icr"
    hits = out["hits"]
    assert sorted(h["id"] for h in hits) == ["2", "berlin", "cats", "tea"]  # a text's id is its position
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    by_id = {h["id"]: h for h in hits}
    assert by_id["2"]["title"] == "Dogs" and by_id["2"]["text"] == "Dogs bark at strangers."
    assert by_id["berlin"]["text"] == "Berlin is the capital of Germany."  # read from the collection
    assert hits[0]["id"] == "cats"


def test_answer_json_cites_retrieved_passages(client: TestClient) -> None:
    body = {"collection": "tiny", "question": "What is the capital of France?", "k": 2, "max_tokens": 8}
    r = client.post("/v1/answer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["answer"]
    assert out["passages"][0]["id"] == "paris"
    assert set(out["citations"]) <= {p["id"] for p in out["passages"]}
    assert 1 <= out["timings"]["tokens"] <= 8
    assert out["finish_reason"] == ("length" if out["timings"]["tokens"] == 8 else "stop")
    assert out["timings"]["generate_s"] >= out["timings"]["first_token_s"] > 0


def test_answer_stream_sends_tokens_then_done_with_the_same_text(client: TestClient) -> None:
    body = {"collection": "tiny", "question": "What is the capital of France?", "k": 2, "max_tokens": 8}
    plain = client.post("/v1/answer", json=body).json()
    with client.stream("POST", "/v1/answer", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(r.read().decode())
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"token"} and len(names) >= 2
    streamed = "".join(data["text"] for name, data in events if name == "token")
    done = events[-1][1]
    assert streamed.strip() == done["answer"] == plain["answer"]  # greedy: stream and JSON agree
    assert done["citations"] == plain["citations"]


def test_openai_models_and_chat_completion(client: TestClient) -> None:
    # the generator (a plain chat model) first, then the collections
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["smollm2-135m-instruct", "tiny"]
    messages = [
        {"role": "user", "content": "Tell me about cats."},
        {"role": "assistant", "content": "Cats are animals."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    r = client.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": messages, "max_tokens": 8, "k": 2}
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
    # retrieval ran on the last user message, and the answer is the /v1/answer one
    assert out["passages"][0]["id"] == "paris"
    answer = client.post(
        "/v1/answer",
        json={"collection": "tiny", "question": "What is the capital of France?", "k": 2, "max_tokens": 8},
    ).json()
    assert out["choices"][0]["message"]["content"] == answer["answer"]


def test_collections_health_and_metrics(client: TestClient) -> None:
    assert client.get("/v1/collections").json() == {
        "collections": [{"name": "tiny", "kind": "dense", "documents": len(DOCS)}]
    }
    health = client.get("/healthz", headers={}).json()
    assert health["status"] == "ok" and health["in_flight"] == 0
    client.post("/v1/search", json={"collection": "tiny", "query": "tea", "k": 1})
    text = client.get("/metrics").text
    line = next(
        x for x in text.splitlines() if x.startswith("ragloom_requests_total{") and '"/v1/search"' in x
    )
    assert float(line.split()[-1]) >= 1
    assert "ragloom_request_seconds_bucket" in text


# --- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("post", "/v1/search", {"collection": "nope", "query": "x"}, 404, "unknown collection 'nope'"),
        ("post", "/v1/answer", {"collection": "nope", "question": "x"}, 404, "unknown collection"),
        (
            "post",
            "/v1/chat/completions",
            {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            404,
            "",
        ),
        (
            "post",
            "/v1/search",
            {"collection": "tiny", "query": "x", "k": 11},
            422,
            "k=11 is above the limit of 10",
        ),
        ("post", "/v1/search", {"collection": "tiny", "query": "x", "k": 0}, 422, ""),
        ("post", "/v1/search", {"collection": "tiny", "query": "x", "k": "many"}, 422, ""),
        ("post", "/v1/search", {"collection": "tiny", "query": "   "}, 422, "the query is empty"),
        ("post", "/v1/search", {"collection": "tiny", "query": "x", "kk": 3}, 422, ""),
        (
            "post",
            "/v1/search",
            {"collection": "tiny", "query": "x" * 201},
            413,
            "201 characters; the limit is 200",
        ),
        (
            "post",
            "/v1/answer",
            {"collection": "tiny", "question": "x", "k": 4},
            422,
            "k=4 is above the limit of 3",
        ),
        (
            "post",
            "/v1/answer",
            {"collection": "tiny", "question": "x", "max_tokens": 33},
            422,
            "max_tokens=33",
        ),
        (
            "post",
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 999},
            422,
            "max_tokens=999 is above the limit of 32",
        ),
        (
            "post",
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "system", "content": "x"}]},
            422,
            "",
        ),
        ("post", "/v1/rerank", {"collection": "nope", "query": "x"}, 404, "unknown collection 'nope'"),
        ("post", "/v1/rerank", {"collection": "tiny", "query": "  "}, 422, "the query is empty"),
        ("post", "/v1/rerank", {"collection": "tiny", "query": "x", "k": 11}, 422, "k=11 is above the limit"),
        (
            "post",
            "/v1/rerank",
            {"collection": "tiny", "query": "x", "reranker": "nope"},
            422,
            "unknown reranker 'nope'; known: first, icr, listwise, pointwise",
        ),
        ("post", "/v1/rerank", {"collection": "tiny", "query": "x", "fetch_k": 5}, 422, "fetch_k=5 is above"),
        ("post", "/v1/rerank", {"collection": "tiny", "query": "x", "k": 3, "fetch_k": 2}, 422, "below k=3"),
        (
            "post",
            "/v1/rerank",
            {"collection": "tiny", "query": "x", "documents": ["tea", "cats", "paris", "berlin", "tea"]},
            422,
            "documents=5 is above the limit of 4",
        ),
        (
            "post",
            "/v1/rerank",
            {"collection": "tiny", "query": "x", "documents": ["tea", {"text": "y", "id": "tea"}]},
            422,
            "document id 'tea' appears twice",
        ),
        (
            "post",
            "/v1/rerank",
            {"collection": "tiny", "query": "x", "documents": ["tea", "ghost"]},
            404,
            "not in collection 'tiny': 'ghost'",
        ),
        (
            "post",
            "/v1/rerank",
            {"collection": "tiny", "query": "x", "documents": ["tea"], "fetch_k": 3},
            422,
            "fetch_k applies to a fresh search",
        ),
        ("post", "/v1/rerank", {"collection": "tiny", "query": "x", "documents": [{"title": "t"}]}, 422, ""),
        ("post", "/v1/collections/nope/documents", {"documents": [{"id": "a", "text": "b"}]}, 404, "unknown"),
        ("post", "/v1/collections/tiny/documents", {"documents": []}, 422, ""),
        ("delete", "/v1/collections/tiny/documents/ghost", None, 404, "'ghost' is not in collection 'tiny'"),
    ],
)
def test_bad_requests_get_the_documented_status(client, method, path, body, status, message) -> None:
    r = client.request(method.upper(), path, json=body)
    assert r.status_code == status, r.text
    body = r.json()  # OpenAI's {"error": {...}} on the OpenAI routes, {"detail": ...} elsewhere
    assert message in json.dumps(body["error"]["message"] if path.startswith("/v1/chat") else body["detail"])
    assert client.get("/healthz").status_code == 200


def test_malformed_json_and_oversize_body(client: TestClient) -> None:
    r = client.post(
        "/v1/search",
        content=b'{"collection": "tiny", "query": ',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422 and "JSON" in json.dumps(r.json()["detail"])
    big = {"documents": [{"id": "big", "text": "word " * 2000}]}
    r = client.post("/v1/collections/tiny/documents", json=big)
    assert r.status_code == 413 and "limit of 4000 bytes" in r.json()["detail"]
    assert "big" not in search_ids(client, "word word word")


@pytest.mark.parametrize(
    "headers", [{"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eA=="}]
)
def test_token_is_required(client: TestClient, headers: dict[str, str]) -> None:
    for method, path, body in [
        ("POST", "/v1/search", {"collection": "tiny", "query": "tea"}),
        ("POST", "/v1/rerank", {"collection": "tiny", "query": "tea"}),
        ("GET", "/v1/collections", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/collections/tiny/documents", {"documents": [{"id": "x", "text": "y"}]}),
        ("DELETE", "/v1/collections/tiny/documents/tea", None),
    ]:
        r = client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    assert "tea" in search_ids(client, "green tea")  # the refused delete deleted nothing


# --- live updates ------------------------------------------------------------------------------------------


def test_add_then_delete_documents_without_restart(client: TestClient, index_dir: Path) -> None:
    new = {
        "documents": [
            {"id": "rome", "title": "Italy", "text": "Rome is the capital of Italy.", "metadata": {"y": 1}}
        ]
    }
    r = client.post("/v1/collections/tiny/documents", json=new)
    assert r.status_code == 201 and r.json() == {"collection": "tiny", "added": 1, "count": len(DOCS) + 1}
    r = client.post("/v1/search", json={"collection": "tiny", "query": "capital of Italy", "k": 1})
    assert r.json()["hits"][0]["id"] == "rome" and r.json()["hits"][0]["metadata"] == {"y": 1}
    assert len(load_index(index_dir)) == len(DOCS) + 1  # saved to disk

    r = client.delete("/v1/collections/tiny/documents/rome")
    assert r.status_code == 200 and r.json()["count"] == len(DOCS)
    assert "rome" not in search_ids(client, "capital of Italy")
    reloaded = load_index(index_dir)
    assert len(reloaded) == len(DOCS)
    with Docstore(reloaded.docstore_path) as store:
        assert "rome" not in store


def test_a_conflicting_batch_adds_nothing(client: TestClient, index_dir: Path) -> None:
    batch = {
        "documents": [{"id": "new1", "text": "Oslo is in Norway."}, {"id": "paris", "text": "duplicate"}]
    }
    r = client.post("/v1/collections/tiny/documents", json=batch)
    assert r.status_code == 409 and "'paris'" in r.json()["detail"]
    repeated = {"documents": [{"id": "new2", "text": "a"}, {"id": "new2", "text": "b"}]}
    assert client.post("/v1/collections/tiny/documents", json=repeated).status_code == 409
    assert client.get("/v1/collections").json()["collections"][0]["documents"] == len(DOCS)
    assert "new1" not in search_ids(client, "Oslo Norway")
    assert len(load_index(index_dir)) == len(DOCS)


# --- a second app: token set, public reads, no generator ----------------------------------------------------


def test_public_reads_still_protect_writes_and_search_only_refuses_answers(index_dir: Path) -> None:
    settings = ServeSettings(
        collections={"tiny": str(index_dir)}, generator=None, api_token=TOKEN, public_reads=True
    )
    with TestClient(create_app(settings)) as c:
        assert (
            c.post("/v1/search", json={"collection": "tiny", "query": "tea", "k": 1}).json()["hits"][0]["id"]
            == "tea"
        )
        r = c.post("/v1/collections/tiny/documents", json={"documents": [{"id": "x", "text": "y"}]})
        assert r.status_code == 401
        r = c.post("/v1/answer", json={"collection": "tiny", "question": "tea?"})
        assert r.status_code == 503 and "without a generator" in r.json()["detail"]
        r = c.post("/v1/rerank", json={"collection": "tiny", "query": "tea", "reranker": "pointwise"})
        assert r.status_code == 503 and "no model to rerank with" in r.json()["detail"]


def test_search_only_server_reranks_with_its_own_model_when_named(index_dir: Path) -> None:
    settings = ServeSettings(
        collections={"tiny": str(index_dir)},
        generator=None,
        reranker_model="smollm2-135m-instruct",
        threads=1,
    )
    with TestClient(create_app(settings)) as c:
        body = {"collection": "tiny", "query": "How is green tea made?", "documents": ["paris", "tea"]}
        r = c.post("/v1/rerank", json=body)
        assert r.status_code == 422, r.text  # no default reranker, none named
        [error] = r.json()["detail"]  # pydantic's shape: one error, located at the field
        assert error["loc"] == ["body", "reranker"]
        assert "no reranker is configured on this server" in error["msg"]
        assert "pointwise" in error["msg"]
        r = c.post("/v1/rerank", json=body | {"reranker": "pointwise", "k": 1})
        assert r.status_code == 200, r.text
        assert [(h["id"], h["rank"]) for h in r.json()["hits"]] == [("tea", 1)]
        assert c.app.state.rag.reranker_lm is not None and c.app.state.rag.generator is None


def test_timeout_stops_generation_with_504(index_dir: Path) -> None:
    settings = ServeSettings(
        collections={"tiny": str(index_dir)},
        generator="smollm2-135m-instruct",
        threads=1,
        request_timeout_s=0.05,
    )
    with TestClient(create_app(settings)) as c:
        r = c.post(
            "/v1/answer", json={"collection": "tiny", "question": "Why do cats purr?", "max_tokens": 100}
        )
        assert r.status_code == 504 and "longer than its limit of 0.05 s" in r.json()["detail"]
        with c.stream(
            "POST", "/v1/answer", json={"collection": "tiny", "question": "Why?", "stream": True}
        ) as s:
            events = parse_sse(s.read().decode())
        name, data = events[-1]
        assert (name, data["status"]) == ("error", 504) and "limit of 0.05 s" in data["detail"]
        assert c.get("/healthz").json()["in_flight"] == 0
        metrics = c.get("/metrics").text.splitlines()
        generated = next(x for x in metrics if x.startswith("ragloom_generated_tokens_total"))
        assert float(generated.split()[-1]) < 10  # stopped, not run to the 100 + 128 tokens asked for
        assert c.post("/v1/search", json={"collection": "tiny", "query": "tea", "k": 1}).status_code == 200


def parse_sse(text: str) -> list[tuple[str, dict]]:
    """(event name, JSON data) per event; unnamed events are called "message"."""
    events = []
    for block in filter(None, text.split("\n\n")):
        name, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data += line[len("data: ") :]
        events.append((name, data if data == "[DONE]" else json.loads(data)))
    return events
