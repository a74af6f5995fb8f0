"""The curl examples of docs/serving.md run as written (only the port is changed) against ``rag serve``
started as that page starts it, with real curl on loopback."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from processes import RagServer, write_corpus

from rag.collection import build_index

pytestmark = pytest.mark.slow  # a server process with the bundled small LLM

SERVING_MD = Path(__file__).resolve().parent.parent / "docs" / "serving.md"
DOCS = [
    {"id": "docstore", "text": "Documents are stored in an SQLite docstore inside the collection folder."},
    {"id": "index", "text": "Each index is a folder with a manifest and its payload files."},
    {"id": "tea", "text": "Green tea is made from unoxidised leaves."},
]


def curl_examples() -> list[str]:
    """Every ``curl`` command of the page's shell blocks, continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", SERVING_MD.read_text(), flags=re.S)
    commands = [c.strip() for block in blocks for c in block.replace("\\\n", " ").splitlines()]
    return [c for c in commands if c.startswith("curl ")]


def test_the_page_has_its_three_curl_examples() -> None:
    assert len(curl_examples()) == 3 and all("Content-Type: application/json" in c for c in curl_examples())


def test_the_curl_examples_run_as_written(tmp_path: Path) -> None:
    build_index(write_corpus(tmp_path / "c.jsonl", DOCS), tmp_path / "my-collection", name="dense")
    extra = ["--generator", "smollm2-135m-instruct", "--reranker", "first", "--threads", "1"]
    env = {"RAG_DEFAULT_MAX_TOKENS": "12"}  # short answers; everything else as the page starts it
    collections = {"docs": tmp_path / "my-collection" / "dense"}
    server = RagServer(collections, tmp_path / "serve.log", *extra, env=env, token="s3cret")
    try:
        outputs = []
        for command in curl_examples():
            command = command.replace("localhost:8000", f"localhost:{server.port}")
            run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr
            outputs.append(run.stdout)
    finally:
        server.stop()
    search, rerank, answer = outputs
    assert json.loads(search)["hits"][0]["id"] == "docstore"
    reranked = json.loads(rerank)
    assert reranked["reranker"] == "first" and len(reranked["hits"]) == 3
    assert "event: token" in answer and "event: done" in answer


def test_the_docs_page_works_offline(tmp_path: Path) -> None:
    """/docs names no other host: its script and styles come from this server."""
    from fastapi.testclient import TestClient

    from rag.serving.app import create_app
    from rag.serving.settings import ServeSettings

    build_index(write_corpus(tmp_path / "c.jsonl", DOCS), tmp_path / "c", config={"show_progress": False})
    app = create_app(ServeSettings(collections={"docs": str(tmp_path / "c" / "dense")}, generator=None))
    with TestClient(app) as client:
        page = client.get("/docs").text
        assert "swagger-ui-bundle.js" in page and not re.search(r"https?://", page), page
        for asset in re.findall(r"""(?:src|href)=['"](/[^'"]+)['"]""", page):
            r = client.get(asset)
            assert r.status_code == 200 and len(r.content) > 100, asset
        assert client.get("/openapi.json").json()["info"]["title"] == "ragloom"
