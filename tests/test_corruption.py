"""Real byte damage to an index's payload or its SQLite docstore is found and reported, never served:
``rag search`` and ``rag index check`` exit 4 with a message, and ``rag serve`` answers 503 for the damaged
collection while it serves the others."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from processes import RagServer, rag, write_corpus

from rag.collection import build_index

pytestmark = pytest.mark.slow  # real processes, each loading MiniLM

TOPICS = ["rivers", "mountains", "deserts", "forests", "glaciers", "islands"]
DOCS = [
    {"id": f"d{i}", "text": f"Document {i} is about {TOPICS[i % 6]}. " + "Filler sentence for size. " * 40}
    for i in range(60)
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corruption")
    build_index(write_corpus(folder / "corpus.jsonl", DOCS), folder / "col", config={"show_progress": False})
    return folder / "col"


def copy_of(pristine: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / name)) / "dense"


def garble(path: Path, offset: int, length: int = 64) -> None:
    """Flip every bit of ``length`` bytes at ``offset`` (negative: from the end), in place."""
    data = bytearray(path.read_bytes())
    start = offset if offset >= 0 else len(data) + offset
    data[start : start + length] = bytes(b ^ 0xFF for b in data[start : start + length])
    path.write_bytes(bytes(data))


def damage_docstore(index_dir: Path) -> None:
    """Overwrite the second half of the docstore's pages (documents and their id index) with noise."""
    path = index_dir.parent / "docstore.sqlite"
    with closing(sqlite3.connect(path)) as conn:  # the last connection to close checkpoints the WAL
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    assert pages > 10 and not Path(f"{path}-wal").exists()
    data = bytearray(path.read_bytes())
    for page in range(pages // 2, pages):
        data[page * page_size : (page + 1) * page_size] = os.urandom(page_size)
    path.write_bytes(bytes(data))


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = rag(*args, env=env)
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def test_garbled_vectors_and_a_shuffled_id_table_are_refused(pristine: Path, tmp_path: Path) -> None:
    vectors = copy_of(pristine, tmp_path, "vectors")
    garble(vectors / "vectors.faiss", -4096)  # inside the stored vectors: faiss still reads the file
    code, out, err = run("search", str(vectors), "rivers", "-k", "3")
    assert code == 4 and "vectors.faiss does not match the checksum" in err, (code, out, err)
    assert "Traceback" not in err and out == ""
    code, out, _ = run("search", str(vectors), "rivers", "-k", "3", env={"RAG_VERIFY_INDEX": "0"})
    assert code == 0 and out  # the documented way to skip verification: the damage is then not seen

    ids = copy_of(pristine, tmp_path, "ids")
    table = json.loads((ids / "ids.json").read_text())
    table["ids"] = table["ids"][::-1]  # same ids, shuffled: every hit would name the wrong document
    (ids / "ids.json").write_text(json.dumps(table))
    code, _, err = run("search", str(ids), "rivers")
    assert code == 4 and "ids.json does not match the checksum" in err, err
    code, out, _ = run("index", "check", str(ids))
    assert code == 4 and "problem:" in out and "ids.json" in out, out


def test_a_damaged_docstore_is_exit_4_and_a_503_for_that_collection_only(
    pristine: Path, tmp_path: Path
) -> None:
    damaged = copy_of(pristine, tmp_path, "damaged")
    damage_docstore(damaged)
    code, out, err = run("search", str(damaged), "rivers")
    assert code == 4 and "docstore" in err and "damaged" in err and "Traceback" not in err, (code, err)
    code, out, err = run("index", "check", str(damaged))
    assert code == 4 and "problem: the docstore" in out and "damaged" in out, (out, err)

    healthy = copy_of(pristine, tmp_path, "healthy")
    garbled = copy_of(pristine, tmp_path, "garbled")
    garble(garbled / "vectors.faiss", -4096)
    server = RagServer({"ok": healthy, "bad": damaged, "garbled": garbled}, tmp_path / "serve.log")
    try:
        with server.client() as http:
            good = http.post("/v1/search", json={"collection": "ok", "query": "rivers", "k": 3})
            assert good.status_code == 200 and len(good.json()["hits"]) == 3
            bad = http.post("/v1/search", json={"collection": "bad", "query": "rivers", "k": 3})
            assert bad.status_code == 503 and "damaged" in bad.json()["detail"], bad.text
            gone = http.post("/v1/search", json={"collection": "garbled", "query": "rivers", "k": 3})
            assert gone.status_code == 503 and "checksum" in gone.json()["detail"], gone.text
            unavailable = http.get("/healthz").json()["unavailable"]  # found at start-up
            assert "garbled" in unavailable and "ok" not in unavailable
            assert http.post("/v1/search", json={"collection": "ok", "query": "deserts"}).status_code == 200
    finally:
        server.kill()
    assert "Traceback" not in server.log.read_text()
