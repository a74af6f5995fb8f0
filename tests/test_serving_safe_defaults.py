"""Safe defaults: without a token, writes are refused unless open writes are asked for (and ``rag serve`` says
which at start-up); document ids with ``/`` can be deleted as they were added; ``rag ask`` and ``rag search``
refuse questions and queries above the server's length limit before loading anything."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from processes import RagServer, write_corpus

from rag.cli import main
from rag.collection import build_index
from rag.limits import MAX_QUERY_CHARS
from rag.serving.app import create_app
from rag.serving.settings import ServeSettings

DOCS = [
    {"id": "paris", "text": "Paris is the capital of France."},
    {"id": "tea", "text": "Green tea is made from unoxidised leaves."},
]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("safe-defaults")
    build_index(write_corpus(folder / "c.jsonl", DOCS), folder / "c", config={"show_progress": False})
    return folder / "c" / "dense"


def app(index_dir: Path, **settings) -> TestClient:
    settings_ = ServeSettings(collections={"c": str(index_dir)}, generator=None, **settings)
    return TestClient(create_app(settings_))


def test_without_a_token_writes_are_closed_unless_opened(index_dir: Path) -> None:
    doc = {"documents": [{"id": "new", "text": "Lisbon is the capital of Portugal."}]}
    with app(index_dir) as client:
        r = client.post("/v1/collections/c/documents", json=doc)
        assert r.status_code == 403 and "--open-writes" in r.json()["detail"]
        assert client.delete("/v1/collections/c/documents/paris").status_code == 403
        assert client.post("/v1/search", json={"collection": "c", "query": "tea"}).status_code == 200
    with app(index_dir, open_writes=True) as client:
        assert client.post("/v1/collections/c/documents", json=doc).status_code == 201
        assert client.delete("/v1/collections/c/documents/new").status_code == 200


@pytest.mark.slow  # a server process
def test_rag_serve_says_how_writes_are_allowed(index_dir: Path, tmp_path: Path) -> None:
    for extra, said in (([], "writes: closed (403)"), (["--open-writes"], "writes: OPEN")):
        server = RagServer({"c": index_dir}, tmp_path / "serve.log", *extra, token=None)
        server.stop()
        out = server.process.stdout.read() if server.process.stdout else ""
        assert said in out, out


def test_ids_with_slashes_are_deleted_as_they_were_added(index_dir: Path) -> None:
    ids = ["docs/guide.md#0", "a/b/c", "x y/z"]
    with app(index_dir, api_token="t") as client:
        client.headers["Authorization"] = "Bearer t"
        docs = [{"id": i, "text": f"Slash document {n} about trains."} for n, i in enumerate(ids)]
        assert client.post("/v1/collections/c/documents", json={"documents": docs}).status_code == 201
        for doc_id, encoded in zip(ids, [quote(ids[0], safe=""), ids[1], quote(ids[2])], strict=True):
            r = client.delete(f"/v1/collections/c/documents/{encoded}")
            assert r.status_code == 200 and r.json()["deleted"] == doc_id, r.text
        hits = client.post("/v1/search", json={"collection": "c", "query": "trains", "k": 5}).json()["hits"]
        assert {h["id"] for h in hits} == {"paris", "tea"}


@pytest.mark.parametrize("command", ["ask", "search"])
def test_the_command_line_has_the_servers_length_limit(
    command: str, index_dir: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_loading(*args: object) -> None:
        raise AssertionError("the index (and its models) loaded before the length was checked")

    monkeypatch.setattr(f"rag.cli.{command}.Collection", no_loading)  # how both commands open the index
    if command == "search":
        monkeypatch.setattr("rag.cli.search.load_index", no_loading)  # an index saved without a docstore
    text = "why? " * 22_400  # 112,000 characters: minutes of prefill before this limit
    argv = ["ask", text, "--index", str(index_dir)] if command == "ask" else ["search", str(index_dir), text]
    assert main(argv) == 2  # refused before any model loads
    what = "question" if command == "ask" else "query"
    assert f"the {what} has 112000 characters; the limit is {MAX_QUERY_CHARS}" in capsys.readouterr().err
