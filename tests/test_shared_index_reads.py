"""Opening or refreshing a shared index while another writer commits reads one committed version.

A commit swaps the index folder with two renames; a reader that loads across it saw the old manifest with the
new payload ("manifest says 79 documents ..., payload has 90") and served the collection as damaged (503),
for good when it happened as a server started (found with two Ray Serve replicas, one restarted mid-run).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from processes import write_corpus

from rag.collection import build_index
from rag.collection.commit import index_key
from rag.collection.shared_index import SharedIndex, read_committed
from rag.errors import IndexFormatError
from rag.indexes import load_index
from rag.types import Document

pytestmark = pytest.mark.slow  # MiniLM


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    corpus = write_corpus(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": f"Document {i}."} for i in range(3)])
    build_index(corpus, tmp_path / "col", config={"show_progress": False})
    return tmp_path / "col" / "dense"


def test_a_read_that_spans_a_commit_is_read_again(index_dir: Path) -> None:
    writer = SharedIndex(index_dir)
    calls = []

    def load():
        calls.append(1)
        if len(calls) == 1:
            stale = load_index(index_dir)
            writer.add([Document("new", "Committed while the reader was reading.")])
            return stale  # a whole read, of a version that is no longer the index
        return load_index(index_dir)

    key, retriever = read_committed(index_dir, load)
    assert len(calls) == 2 and "new" in retriever.doc_ids() and key == index_key(index_dir)


def test_a_torn_read_is_read_again(index_dir: Path) -> None:
    writer = SharedIndex(index_dir)
    calls = []

    def load():
        calls.append(1)
        if len(calls) == 1:
            writer.add([Document("new", "Committed mid-read.")])
            raise IndexFormatError("manifest says 3 documents of dimension 384, payload has 4")
        return load_index(index_dir)

    _, retriever = read_committed(index_dir, load)
    assert len(calls) == 2 and len(retriever) == 4


def test_a_damaged_index_that_stays_damaged_raises_at_once(index_dir: Path) -> None:
    (index_dir / "vectors.faiss").write_bytes(b"not faiss")
    calls = []

    def load():
        calls.append(1)
        return load_index(index_dir)

    with pytest.raises(IndexFormatError, match=r"checksum|corrupt"):
        read_committed(index_dir, load)
    assert len(calls) == 1  # not retried: nothing is committing


def test_a_reader_follows_commits_of_another_writer(index_dir: Path) -> None:
    reader, writer = SharedIndex(index_dir), SharedIndex(index_dir)
    for i in range(3):
        writer.add([Document(f"n{i}", f"New document {i} about lighthouses.")])
        assert f"n{i}" in reader.doc_ids()


def test_a_missing_index_raises_at_once_unless_a_swap_is_under_way(index_dir: Path) -> None:
    calls = []

    def load():
        calls.append(1)
        return load_index(index_dir)

    missing = index_dir.with_name("never-built")
    with pytest.raises(IndexFormatError, match="not found"):
        read_committed(missing, lambda: (calls.append(1), load_index(missing))[1])
    assert len(calls) == 1
    # between a writer's two renames: the old folder moved aside, the new one about to land
    aside = index_dir.with_name(f".{index_dir.name}.old-test")
    index_dir.rename(aside)
    staged = index_dir.with_name(f".{index_dir.name}.tmp-test")

    def load_then_land():
        if len(calls) == 2:  # the read before this one failed: no folder, only the old one moved aside
            shutil.copytree(aside, staged)
            staged.rename(index_dir)  # the writer's second rename
        return load()

    _, retriever = read_committed(index_dir, load_then_land)
    assert len(calls) == 4 and len(retriever) == 3  # failed, landed (read again: the key changed), stable
