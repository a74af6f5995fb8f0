"""Suite ``serve``: a bounded load run against ``rag serve`` on loopback, beside the same work in-process.

A uvicorn server runs in a thread of this process over a small SciFact collection; N client threads send a
fixed number of requests to ``/v1/search`` and ``/v1/answer`` (SmolLM2, short answers). The baseline column is
the same retrieval (or answer) called directly in Python, one call at a time: the ratio shows what HTTP,
JSON and queueing cost or, for concurrent searches, gain.
"""

from __future__ import annotations

import itertools
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tempfile import TemporaryDirectory

from rag.bench.report import Row, SuiteResult
from rag.corpus import read_beir, read_beir_qrels, read_beir_queries
from rag.generation.base import GenerationParams
from rag.settings import data_dir


def _percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


def _load(url: str, path: str, bodies: list[dict], clients: int) -> tuple[float, list[float], int]:
    """Send every body once with ``clients`` threads; (requests/s, latencies in s, error count)."""
    import httpx

    local = threading.local()

    def one(body: dict) -> tuple[float, bool]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=300)
        start = time.perf_counter()
        try:
            ok = local.client.post(path, json=body).status_code == 200
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - start, ok

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, bodies))
    elapsed = time.perf_counter() - start
    return len(bodies) / elapsed, [r[0] for r in results], sum(not r[1] for r in results)


def _direct(fn: Callable[[str], object], items: list[str]) -> tuple[float, list[float]]:
    latencies = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        latencies.append(time.perf_counter() - start)
    return len(items) / sum(latencies), latencies


def run(
    docs: int = 200,
    clients: int = 8,
    search_requests: int = 200,
    answer_clients: int = 2,
    answer_requests: int = 4,
    answer_k: int = 1,
    max_tokens: int = 8,
    generator: str = "smollm2-135m-instruct",
) -> SuiteResult:
    import uvicorn

    from rag.collection import build_index
    from rag.serving.app import create_app
    from rag.serving.settings import ServeSettings

    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    scifact = data_dir() / "scifact"
    queries_by_id = read_beir_queries(scifact)
    queries = [queries_by_id[q] for q in read_beir_qrels(scifact, "test")]
    with TemporaryDirectory(prefix="ragloom-bench-serve-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        _write_jsonl(corpus, itertools.islice(read_beir(scifact), docs))
        build_index(corpus, Path(tmp) / "scifact", config={"show_progress": False})
        settings = ServeSettings(
            collections={"scifact": str(Path(tmp) / "scifact" / "dense")},
            generator=generator,
            threads=1,
            queue_size=max(answer_clients, 1),
            default_max_tokens=max_tokens,
        )
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            state = server.config.app.state.rag
            collection = state.collections["scifact"]
            search_q = [queries[i % len(queries)] for i in range(search_requests)]
            answer_q = [queries[i % len(queries)] for i in range(answer_requests)]
            # warm-up, then the load runs, then the in-process baselines
            _load(
                url, "/v1/search", [{"collection": "scifact", "query": q, "k": 10} for q in queries[:16]], 2
            )
            s_rate, s_lat, s_err = _load(
                url, "/v1/search", [{"collection": "scifact", "query": q, "k": 10} for q in search_q], clients
            )
            a_rate, a_lat, a_err = _load(
                url,
                "/v1/answer",
                [{"collection": "scifact", "question": q, "k": answer_k} for q in answer_q],
                answer_clients,
            )
            bs_rate, bs_lat = _direct(lambda q: collection.search(q, 10), search_q)
            params = GenerationParams(max_new_tokens=max_tokens)

            def answer(q: str) -> object:
                _, passages = collection.search(q, answer_k)
                return state.generator.answer(q, passages, params)

            ba_rate, ba_lat = _direct(answer, answer_q)
        finally:
            server.should_exit = True
            thread.join(timeout=60)
            sock.close()

    def rows(route: str, n: int, c: int, rate: float, lat: list[float], b_rate: float, b_lat: list[float]):
        per, unit = (60, "req/min") if route == "/v1/answer" else (1, "req/s")
        return [
            Row(f"{route}: throughput ({n} requests, {c} clients)", per * rate, per * b_rate, unit),
            Row(
                f"{route}: p50 latency", 1000 * statistics.median(lat), 1000 * statistics.median(b_lat), "ms"
            ),
            Row(f"{route}: p95 latency", 1000 * _percentile(lat, 95), 1000 * _percentile(b_lat, 95), "ms"),
        ]

    return SuiteResult(
        suite="serve",
        title="Serving: `rag serve` under a bounded load on loopback",
        baseline="the same search (or retrieve + generate) called in-process, one call at a time",
        rows=[
            *rows("/v1/search", search_requests, clients, s_rate, s_lat, bs_rate, bs_lat),
            *rows("/v1/answer", answer_requests, answer_clients, a_rate, a_lat, ba_rate, ba_lat),
        ],
        notes=[
            f"Errors: /v1/search {s_err} of {search_requests}, /v1/answer {a_err} of {answer_requests} "
            f"(target: 0 at {clients} concurrent search clients).",
            f"Collection: the first {docs} SciFact abstracts, MiniLM + faiss Flat, k=10; test queries.",
            f"/v1/answer: {generator}, k={answer_k}, max_tokens={max_tokens}, greedy, model_concurrency=1 "
            "(answers queue for the one model slot, so their latency includes the wait).",
            "Server and clients share one process and its CPU cores (uvicorn in a thread, httpx threads); "
            f"1-minute load average when the run started: {load_at_start:.1f}.",
        ],
    )


def _write_jsonl(path: Path, docs) -> None:
    import json

    with path.open("w") as out:
        for d in docs:
            out.write(
                json.dumps({"id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata}) + "\n"
            )
