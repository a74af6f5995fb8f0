"""A real uvicorn on 127.0.0.1: SSE streaming, the official ``openai`` client, concurrency, a full queue,
client disconnects, graceful shutdown; and the LangChain adapters over the served collection."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from openai import OpenAI
from processes import wait_for
from test_serving_app import build_tiny_collection, parse_sse

from rag.generation.base import GenerationParams
from rag.serving.app import create_app
from rag.serving.langchain import PipelineRunnable, RagRetriever
from rag.serving.settings import ServeSettings
from rag.serving.state import ServerState

pytestmark = pytest.mark.slow

TOKEN = "live-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTION = "What is the capital of France?"
RAMBLE = "Write a long poem about tea, Paris and Rome."  # runs to max_tokens with SmolLM2 (int4, bf16)


class LiveServer:
    """uvicorn in a thread on a free loopback port; ``stop()`` asks it to exit gracefully and waits."""

    def __init__(self, settings: ServeSettings) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(settings), log_level="warning", timeout_graceful_shutdown=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)

    @property
    def state(self) -> ServerState:
        return self.server.config.app.state.rag

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_collection(tmp_path_factory.mktemp("serving-live"))


def settings_for(index_dir: Path, **overrides) -> ServeSettings:
    values = dict(
        collections={"tiny": str(index_dir)},
        generator="smollm2-135m-instruct",
        threads=1,
        api_token=TOKEN,
        default_k=2,
        default_max_tokens=8,
        max_tokens=256,
        model_concurrency=1,
        queue_size=1,
    )
    return ServeSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def live(index_dir: Path) -> Iterator[LiveServer]:
    server = LiveServer(settings_for(index_dir))
    yield server
    server.stop()


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=120) as client:
        yield client


def generated_tokens(http: httpx.Client) -> float:
    line = next(
        x for x in http.get("/metrics").text.splitlines() if x.startswith("ragloom_generated_tokens_total")
    )
    return float(line.split()[-1])


def test_sse_stream_arrives_token_by_token(http: httpx.Client) -> None:
    body = {"collection": "tiny", "question": QUESTION, "max_tokens": 8, "stream": True}
    chunks: list[str] = []
    with http.stream("POST", "/v1/answer", json=body) as r:
        assert r.status_code == 200
        chunks.extend(r.iter_text())
    events = parse_sse("".join(chunks))
    assert events[-1][0] == "done" and sum(name == "token" for name, _ in events) >= 2
    # not one buffered blob: the first chunk read carries a token while the answer is still being decoded
    assert "event: token" in chunks[0] and "event: done" not in chunks[0]
    plain = http.post("/v1/answer", json={**body, "stream": False}).json()
    assert events[-1][1]["answer"] == plain["answer"]


def test_openai_client_plain_and_streaming(live: LiveServer) -> None:
    client = OpenAI(base_url=f"{live.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()] == ["smollm2-135m-instruct", "tiny"]
    messages = [{"role": "user", "content": QUESTION}]
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8)
    content = plain.choices[0].message.content
    assert content and plain.choices[0].finish_reason in ("stop", "length")
    assert plain.model_extra["passages"][0]["id"] == "paris"

    pieces, last = [], None
    for chunk in client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, stream=True):
        pieces.append(chunk.choices[0].delta.content or "")
        last = chunk
    assert "".join(pieces).strip() == content  # greedy: streamed == plain
    assert last.choices[0].finish_reason == plain.choices[0].finish_reason
    assert last.model_extra["citations"] == plain.model_extra["citations"]

    wrong = OpenAI(base_url=f"{live.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(Exception, match=r"401|wrong bearer token"):
        wrong.chat.completions.create(model="tiny", messages=messages, max_tokens=4)


def test_eight_concurrent_search_clients(http: httpx.Client, live: LiveServer) -> None:
    def one(i: int) -> list[str]:
        with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as c:
            query = ["capital of France", "purring cats", "green tea leaves", "capital of Germany"][i % 4]
            r = c.post("/v1/search", json={"collection": "tiny", "query": query, "k": 1})
            assert r.status_code == 200
            return [h["id"] for h in r.json()["hits"]]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(40)))
    assert results == [[["paris"], ["cats"], ["tea"], ["berlin"]][i % 4] for i in range(40)]


def test_two_answers_queue_and_both_finish(http: httpx.Client, live: LiveServer) -> None:
    body = {"collection": "tiny", "question": QUESTION, "max_tokens": 6}
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda _: httpx.post(f"{live.url}/v1/answer", json=body, headers=AUTH, timeout=120), range(2)
            )
        )
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["answer"] == answers[1].json()["answer"]


def test_full_queue_503_then_disconnects_stop_generation(http: httpx.Client, live: LiveServer) -> None:
    # model_concurrency=1, queue_size=1: one stream runs, one waits, the third request is refused.
    whole = {"collection": "tiny", "question": RAMBLE, "max_tokens": 40}
    counted = generated_tokens(http)
    reference = http.post("/v1/answer", json=whole).json()
    assert reference["finish_reason"] == "length"  # uninterrupted, this question runs the full 40 tokens
    per_answer = generated_tokens(http) - counted  # the metric counts the text pieces streamed
    body = {"collection": "tiny", "question": RAMBLE, "max_tokens": 40, "stream": True}
    before = generated_tokens(http)
    clients = [httpx.Client(base_url=live.url, headers=AUTH, timeout=120) for _ in range(2)]
    streams = [c.stream("POST", "/v1/answer", json=body) for c in clients]
    running = streams[0].__enter__()
    lines = running.iter_lines()
    assert next(line for line in lines if line.startswith("event:")) == "event: token"
    streams[1].__enter__()
    assert wait_for(lambda: http.get("/healthz").json()["in_flight"] == 2)

    refused = http.post("/v1/answer", json={**body, "stream": False})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert "queue is full" in refused.json()["detail"]
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert http.post("/v1/chat/completions", json=chat).status_code == 503
    rerank = {"collection": "tiny", "query": "tea", "reranker": "pointwise"}
    refused = http.post("/v1/rerank", json=rerank)  # reranking waits in the same queue
    assert refused.status_code == 503 and "queue is full" in refused.json()["detail"]
    assert http.post("/v1/search", json={"collection": "tiny", "query": "tea"}).status_code == 200  # no queue

    for stream, client in zip(streams, clients, strict=True):  # both clients hang up mid-stream
        stream.__exit__(None, None, None)
        client.close()
    assert wait_for(lambda: http.get("/healthz").json()["in_flight"] == 0)
    stopped = generated_tokens(http)
    assert stopped - before < 20  # far fewer than the 40 (+40) tokens the two streams asked for
    # a whole answer later the counter has grown by that answer's pieces alone: nothing else is decoding
    assert http.post("/v1/answer", json=whole).json()["answer"] == reference["answer"]
    assert generated_tokens(http) == stopped + per_answer


def test_langchain_retriever_invoke_batch_ainvoke(live: LiveServer, http: httpx.Client) -> None:
    collection = live.state.collections["tiny"]
    retriever = RagRetriever(collection=collection, k=2)
    docs = retriever.invoke(QUESTION)
    served = http.post("/v1/search", json={"collection": "tiny", "query": QUESTION, "k": 2}).json()["hits"]
    assert [d.id for d in docs] == [h["id"] for h in served] and docs[0].id == "paris"
    assert docs[0].metadata["score"] == pytest.approx(served[0]["score"], abs=1e-5)
    assert docs[0].metadata["source"] == "dense" and docs[0].metadata["rank"] == 1
    assert docs[0].page_content == "Paris is the capital of France."
    batch = retriever.batch([QUESTION, "purring cats"])
    assert [b[0].id for b in batch] == ["paris", "cats"]
    assert [d.id for d in asyncio.run(retriever.ainvoke(QUESTION))] == [d.id for d in docs]


def test_langchain_pipeline_runnable(live: LiveServer, http: httpx.Client) -> None:
    chain = PipelineRunnable(live.state.collections["tiny"].pipeline, GenerationParams(max_new_tokens=6))
    out = chain.invoke(QUESTION)
    served = http.post(
        "/v1/answer", json={"collection": "tiny", "question": QUESTION, "max_tokens": 6}
    ).json()
    assert out["answer"] == served["answer"]  # same passages (k=2), same greedy decoding
    assert [d.id for d in out["documents"]] == [p["id"] for p in served["passages"]]
    assert out["citations"] == served["citations"]
    batch = chain.batch([QUESTION, QUESTION])
    assert [b["answer"] for b in batch] == [out["answer"]] * 2
    assert asyncio.run(chain.ainvoke(QUESTION))["answer"] == out["answer"]
    assert "".join(chain.stream(QUESTION)).strip() == out["answer"]


def test_graceful_shutdown_finishes_the_stream_in_flight(index_dir: Path) -> None:
    server = LiveServer(settings_for(index_dir))
    body = {"collection": "tiny", "question": QUESTION, "max_tokens": 12, "stream": True}
    with (
        httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c,
        c.stream("POST", "/v1/answer", json=body) as r,
    ):
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("event:")) == "event: token"
        server.server.should_exit = True  # what SIGTERM does
        rest = "\n".join(lines)
    assert "event: done" in rest
    done = json.loads(rest.split("event: done\ndata: ")[1].split("\n")[0])
    assert done["timings"]["tokens"] >= 1
    server.thread.join(timeout=60)
    assert not server.thread.is_alive()
    server.sock.close()


def test_rag_serve_command_starts_serves_and_stops_on_sigterm(index_dir: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    rag = Path(sys.executable).with_name("rag")  # the console script of this environment
    command = [str(rag), "serve", "--collection", f"tiny={index_dir}"]
    command += ["--generator", "none", "--port", str(port), "--token", TOKEN, "--log-level", "info"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=2).json()["status"] == "ok"
            except httpx.HTTPError:
                return process.poll() is not None  # stop waiting if it died

        assert wait_for(healthy, 120) and process.poll() is None, (
            process.stderr.read() if process.stderr else ""
        )
        r = httpx.post(f"{url}/v1/search", json={"collection": "tiny", "query": "tea", "k": 1}, headers=AUTH)
        assert r.json()["hits"][0]["id"] == "tea"
        assert httpx.post(f"{url}/v1/search", json={"collection": "tiny", "query": "tea"}).status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    # uvicorn finishes its graceful shutdown, then re-raises the signal it caught (exit status -SIGTERM)
    assert process.returncode in (0, -signal.SIGTERM), err
    assert "Finished server process" in err and "Traceback" not in err
    assert f"serving tiny on http://127.0.0.1:{port}" in out
