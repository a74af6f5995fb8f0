"""Several real processes on one collection: two ``rag serve`` adding and deleting at once, restarts after
SIGKILL, ``rag search`` beside them, and two ``rag index build`` runs into one index name."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
from processes import RagServer, rag, wait_for, write_corpus

from rag.collection import build_index
from rag.docstore import Docstore
from rag.indexes import load_index

pytestmark = pytest.mark.slow  # several processes, each loading MiniLM

WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper"]
BASE = [{"id": f"base{i}", "text": f"Base document {i} about {WORDS[i]}."} for i in range(4)]


def text_of(doc_id: str) -> str:
    return f"Added document {doc_id}: notes on {WORDS[hash(doc_id) % len(WORDS)]} number {doc_id[1:]}."


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    corpus = write_corpus(tmp_path / "base.jsonl", BASE)
    build_index(corpus, tmp_path / "col", config={"show_progress": False})
    return tmp_path / "col" / "dense"


def indexed_ids(index_dir: Path) -> set[str]:
    """The ids the index saved on disk returns (every one: k is above the document count)."""
    return {h.doc_id for h in load_index(index_dir).search(["document"], k=1000)[0]}


def all_ids(server: RagServer) -> set[str]:
    with server.client() as http:
        r = http.post("/v1/search", json={"collection": "c", "query": "document", "k": 100})
        assert r.status_code == 200, r.text
        return {h["id"] for h in r.json()["hits"]}


def test_two_servers_add_and_delete_in_one_collection(collection: Path, tmp_path: Path) -> None:
    servers = [RagServer({"c": collection}, tmp_path / f"server{i}.log") for i in range(2)]
    try:
        added_all = threading.Barrier(2)
        failures: list[str] = []

        def work(i: int) -> None:
            mine, theirs = "ab"[i], "ba"[i]
            with servers[i].client() as http:
                for n in range(40):  # 80 adds in all, the two servers interleaved
                    doc = {"id": f"{mine}{n}", "text": text_of(f"{mine}{n}")}
                    r = http.post("/v1/collections/c/documents", json={"documents": [doc]})
                    if r.status_code != 201:
                        failures.append(f"add {doc['id']}: {r.status_code} {r.text}")
                added_all.wait(timeout=300)
                # each server deletes 10 of its own documents and 10 that the other server added
                for doc_id in [f"{mine}{n}" for n in range(0, 40, 4)] + [
                    f"{theirs}{n}" for n in range(1, 40, 4)
                ]:
                    r = http.delete(f"/v1/collections/c/documents/{doc_id}")
                    if r.status_code != 200:
                        failures.append(f"delete {doc_id}: {r.status_code} {r.text}")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert failures == []

        deleted = {f"{p}{n}" for p in "ab" for n in range(40) if n % 4 in (0, 1)}
        expected = {d["id"] for d in BASE} | {f"{p}{n}" for p in "ab" for n in range(40)} - deleted
        assert len(expected) == 44
        assert indexed_ids(collection) == expected  # on disk: no add lost, no delete undone
        with Docstore(collection.parent / "docstore.sqlite") as store:
            assert set(store.ids()) == expected
            assert all(store[i].text == text_of(i) for i in expected - {d["id"] for d in BASE})
        assert [all_ids(s) for s in servers] == [expected, expected]  # both servers see every commit

        for s in servers:  # SIGKILL both, start again: every search answers, with the same documents
            s.kill()
        servers = [RagServer({"c": collection}, tmp_path / f"restart{i}.log") for i in range(2)]
        assert [all_ids(s) for s in servers] == [expected, expected]
        search = rag("search", str(collection), "added document", "-k", "100", "--json")
        out, err = search.communicate(timeout=300)
        assert search.returncode == 0, err
        assert {line.split('"doc_id": "')[1].split('"')[0] for line in out.splitlines()} == expected
    finally:
        for s in servers:
            if s.process.poll() is None:
                s.stop(signal.SIGKILL)


def test_concurrent_builds_into_one_index_name(tmp_path: Path) -> None:
    first = [{"id": f"x{i}", "text": f"First corpus, document {i} on {WORDS[i]}."} for i in range(6)]
    second = [{"id": f"x{i}", "text": f"Second corpus, text {i} about {WORDS[-1 - i]}."} for i in range(4, 9)]
    corpora = [write_corpus(tmp_path / "first.jsonl", first), write_corpus(tmp_path / "second.jsonl", second)]
    from rag.collection.lock import writer_lock

    folder = tmp_path / "col"
    folder.mkdir()
    logs = [tmp_path / "build0.err", tmp_path / "build1.err"]
    with writer_lock(folder):  # both builds start while the collection is locked, then race
        builds = [
            rag("index", "build", str(c), str(folder), "--name", "dense", stderr=log)
            for c, log in zip(corpora, logs, strict=True)
        ]
        assert wait_for(lambda: all("another process is writing" in log.read_text() for log in logs), 240)
    codes = [b.wait(timeout=300) for b in builds]
    errors = [log.read_text() for log in logs]
    assert sorted(codes) == [0, 4], errors  # one build wins; the other is refused, not silently overwritten
    loser = codes.index(4)
    assert "was changed by another process while this build ran; nothing was written" in errors[loser]
    winner = [first, second][1 - loser]
    assert indexed_ids(folder / "dense") == {d["id"] for d in winner}
    with Docstore(folder / "docstore.sqlite") as store:
        assert {d.id: d.text for d in store.iter_documents()} == {d["id"]: d["text"] for d in winner}
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.is_dir()) == []
