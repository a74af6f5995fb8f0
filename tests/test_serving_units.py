"""Server settings, the model gate, all-or-nothing collection updates and the ``rag serve`` flags."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from rag.cli import build_parser
from rag.cli.serve import settings_from_args
from rag.collection.updates import add_documents, delete_documents
from rag.docstore import Docstore
from rag.errors import ConfigError, CorpusError
from rag.generation.base import GenerationParams
from rag.indexes import load_index
from rag.indexes.dense import DenseConfig, DenseRetriever
from rag.serving.gate import ModelGate, QueueFullError
from rag.serving.generation import Generation
from rag.serving.settings import ServeSettings
from rag.serving.state import ServerState
from rag.types import Document

# --- settings -----------------------------------------------------------------------------------------------


def test_settings_merge_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"collections": {"a": "col/dense"}, "max_k": 7, "queue_size": 3}))
    env = {"RAG_MAX_K": "9", "RAG_PUBLIC_READS": "true", "RAG_GENERATOR": "none", "OTHER": "x"}
    s = ServeSettings.load(config, env=env, queue_size=5, port=None)
    assert s.collections == {"a": str((tmp_path / "col" / "dense").resolve())}  # relative to the file
    assert (s.max_k, s.public_reads, s.generator, s.queue_size, s.port) == (9, True, None, 5, 8000)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RAG_MAX_K": "many"}, "RAG_MAX_K='many' is not a int"),
        ({"RAG_PUBLIC_READS": "maybe"}, "RAG_PUBLIC_READS"),
        ({"RAG_COLLECTIONS": "noequals"}, "is not NAME=INDEX_DIR"),
        ({"RAG_MAX_TOKENS": "0"}, "max_tokens must be at least 1"),
        ({"RAG_MAX_PASSAGES": "2"}, "default_k=5 is above max_passages=2"),
        ({"RAG_MAX_RERANK": "0"}, "max_rerank must be at least 1"),
        ({"RAG_RERANKER": "first", "RAG_GENERATOR": "none"}, "reranker 'first' needs a model"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServeSettings.load(env=env)


def test_unknown_file_setting_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"max_kk": 3}))
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['max_kk'\]"):
        ServeSettings.load(config, env={})


def test_serve_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_COLLECTIONS", "a=/x/dense")
    monkeypatch.setenv("RAG_API_TOKEN", "from-env")
    args = build_parser().parse_args(
        ["serve", "--collection", "b=/y/dense", "--port", "9000", "--generator", "none", "--queue-size", "0"]
    )
    s = settings_from_args(args)
    assert s.collections == {"a": "/x/dense", "b": "/y/dense"}
    assert (s.port, s.generator, s.queue_size, s.api_token) == (9000, None, 0, "from-env")


def test_reranker_settings_from_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"RAG_RERANKER": "icr", "RAG_RERANKER_MODEL": "smollm2-135m-instruct", "RAG_MAX_RERANK": "8"}
    s = ServeSettings.load(env=env)
    assert (s.reranker, s.reranker_model, s.max_rerank) == ("icr", "smollm2-135m-instruct", 8)
    assert ServeSettings.load(env={"RAG_RERANKER": "none"}).reranker is None
    assert ServeSettings().reranker is None and ServeSettings().reranker_model is None  # defaults
    monkeypatch.setenv("RAG_RERANKER", "icr")
    args = ["serve", "--collection", "a=/x/dense", "--reranker", "first", "--reranker-model", "m"]
    s = settings_from_args(build_parser().parse_args(args))
    assert (s.reranker, s.reranker_model) == ("first", "m")
    s = settings_from_args(build_parser().parse_args(["serve", "--collection", "a=/x", "--reranker", "none"]))
    assert s.reranker is None


def test_an_unknown_default_reranker_stops_the_start() -> None:
    settings = {"generator": None, "reranker_model": "not-loaded"}
    with pytest.raises(ConfigError, match="unknown reranker 'nope'; known: first, icr, listwise, pointwise"):
        ServerState.load(ServeSettings(reranker="nope", **settings))
    local = "known: first, icr, listwise, pointwise"
    with pytest.raises(ConfigError, match=f"does not run on the server's model; {local}"):
        ServerState.load(ServeSettings(reranker="listwise-remote", **settings))


def test_serve_without_collections_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAG_COLLECTIONS", raising=False)
    with pytest.raises(ConfigError, match="no collection to serve"):
        settings_from_args(build_parser().parse_args(["serve"]))


# --- the gate -----------------------------------------------------------------------------------------------


def test_gate_runs_n_queues_m_and_refuses_the_rest() -> None:
    async def scenario() -> tuple[list[str], int]:
        gate = ModelGate(concurrency=1, queue_size=1)
        release = asyncio.Event()
        order: list[str] = []

        async def job(name: str) -> None:
            async with gate.slot():
                order.append(name)
                await release.wait()

        first = asyncio.create_task(job("first"))
        second = asyncio.create_task(job("second"))
        for _ in range(100):  # let both tasks run up to the slot: a few turns of the event loop
            await asyncio.sleep(0)
        assert gate.in_flight == 2 and order == ["first"]  # second waits
        with pytest.raises(QueueFullError):
            async with gate.slot():
                pass
        with pytest.raises(TimeoutError):  # a full run slot times out a waiter with a deadline
            gate.capacity += 1
            async with gate.slot(timeout=0.01):
                pass
        release.set()
        await asyncio.gather(first, second)
        return order, gate.in_flight

    assert asyncio.run(scenario()) == (["first", "second"], 0)


# --- collection updates -------------------------------------------------------------------------------------

DOCS = [
    Document("a", "Cats purr."),
    Document("b", "Stocks fell sharply."),
    Document("c", "Green tea leaves."),
]


@pytest.fixture
def collection(tmp_path: Path, minilm) -> tuple[DenseRetriever, Docstore, Path]:
    retriever = DenseRetriever(DenseConfig(show_progress=False), encoder=minilm)
    retriever.add(DOCS)
    store = Docstore.create(tmp_path / "docstore.sqlite")
    store.add(DOCS)
    retriever.docstore_path = store.path
    retriever.save(tmp_path / "dense")
    yield retriever, store, tmp_path / "dense"
    store.close()


def test_finish_reason_counts_tokens_not_text_pieces() -> None:
    generation = Generation(None, "q", GenerationParams(max_new_tokens=4), deadline=0.0)  # type: ignore[arg-type]
    generation.pieces = ["Zürich", " is", "."]  # a piece may hold several tokens
    assert generation.finish_reason == "stop"  # before the stream ends, only the pieces are known
    generation.completion_tokens = 4
    assert generation.finish_reason == "length"
    generation.completion_tokens = 3
    assert generation.finish_reason == "stop"


def test_add_and_delete_are_saved(collection) -> None:
    retriever, store, index_dir = collection
    assert add_documents(retriever, store, index_dir, [Document("d", "The stock market crashed.")]) == 1
    assert retriever.search(["market crash"], k=1)[0][0].doc_id == "d"
    assert "d" in store and len(load_index(index_dir)) == 4
    assert delete_documents(retriever, store, index_dir, ["d", "ghost"]) == 1
    assert "d" not in store and len(load_index(index_dir)) == 3 and len(retriever) == 3
    assert delete_documents(retriever, store, index_dir, ["ghost"]) == 0


def test_a_failed_save_adds_nothing(collection, tmp_path: Path) -> None:
    retriever, store, _ = collection
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the index cannot be saved below a file
    with pytest.raises(OSError):
        add_documents(retriever, store, blocked / "dense", [Document("d", "The stock market crashed.")])
    assert "d" not in store and len(store) == 3
    assert len(retriever) == 3 and all(h.doc_id != "d" for h in retriever.search(["market crash"], k=3)[0])


def test_a_failed_delete_keeps_the_document(collection, tmp_path: Path) -> None:
    retriever, store, _ = collection
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(OSError):
        delete_documents(retriever, store, blocked / "dense", ["b"])
    assert "b" in store and retriever.search(["stocks fell"], k=1)[0][0].doc_id == "b"


def test_conflicting_ids_add_nothing(collection) -> None:
    retriever, store, index_dir = collection
    with pytest.raises(CorpusError, match=r"\['a'\] already exist"):
        add_documents(retriever, store, index_dir, [Document("new", "x"), Document("a", "dup")])
    with pytest.raises(CorpusError, match="more than once"):
        add_documents(retriever, store, index_dir, [Document("z", "x"), Document("z", "y")])
    assert len(store) == len(retriever) == len(load_index(index_dir)) == 3
