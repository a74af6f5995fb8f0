"""The SQLite docstore: add/get/delete, insertion order, atomic batches, persistence, bad files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from rag.docstore import Docstore
from rag.errors import CorpusError, IndexFormatError
from rag.types import Document


def docs(*ids: str) -> list[Document]:
    return [Document(i, f"text of {i}", title=f"T{i}", metadata={"n": i, "tags": ["ü", 1]}) for i in ids]


@pytest.fixture
def store(tmp_path: Path):
    with Docstore.create(tmp_path / "docs.sqlite") as s:
        yield s


def test_add_get_len_contains(store: Docstore) -> None:
    assert store.add(docs("c", "a", "b")) == 3
    assert len(store) == 3
    assert store.get(["b", "c"]) == docs("b", "c")
    assert store["a"] == docs("a")[0]
    assert store["a"].metadata == {"n": "a", "tags": ["ü", 1]}
    assert "a" in store and "z" not in store and 3 not in store


def test_ids_and_documents_in_insertion_order(store: Docstore) -> None:
    store.add(docs("c", "a"))
    store.add(docs("b"))
    assert list(store.ids()) == ["c", "a", "b"]
    assert store.delete(["a"]) == 1
    store.add(docs("a"))  # a re-added id goes to the end
    assert list(store.ids()) == ["c", "b", "a"]
    assert list(store.iter_documents()) == docs("c", "b", "a")


def test_iteration_crosses_pages(store: Docstore) -> None:
    ids = [f"d{i:04d}" for i in range(1234)]
    assert store.add(docs(*ids), batch_size=100) == 1234
    assert list(store.ids()) == ids
    assert [d.id for d in store.get(ids[::-1])] == ids[::-1]


def test_get_missing_raises_key_error(store: Docstore) -> None:
    store.add(docs("a"))
    with pytest.raises(KeyError, match=r"1 document id\(s\) not in the docstore .*: 'zz'"):
        store.get(["a", "zz"])
    with pytest.raises(KeyError, match="'q'"):
        store["q"]


def test_delete_counts_only_removed(store: Docstore) -> None:
    store.add(docs("a", "b", "c"))
    assert store.delete(["a", "a", "missing", "c"]) == 2
    assert list(store.ids()) == ["b"]
    assert store.delete([]) == 0


def test_duplicate_in_batch_rolls_back_everything(store: Docstore) -> None:
    store.add(docs("a"))
    with pytest.raises(CorpusError, match=r"duplicate document id 'x' at positions 0 and 2"):
        store.add(docs("x", "y", "x"), batch_size=1)  # x and y were inserted by earlier batches
    assert list(store.ids()) == ["a"]


def test_existing_id_rolls_back_everything(store: Docstore) -> None:
    store.add(docs("a"))
    with pytest.raises(CorpusError, match=r"'a' is already in the docstore"):
        store.add(docs("p", "q", "a"), batch_size=2)
    assert list(store.ids()) == ["a"]
    assert len(store) == 1


def test_error_while_reading_input_rolls_back(store: Docstore) -> None:
    def failing():
        yield from docs("p", "q")
        raise CorpusError("bad record")

    with pytest.raises(CorpusError, match="bad record"):
        store.add(failing(), batch_size=1)
    assert len(store) == 0
    assert store.add(docs("p")) == 1  # the store is usable afterwards


def test_unserialisable_metadata(store: Docstore) -> None:
    with pytest.raises(CorpusError, match="metadata of document 'a' is not JSON-serialisable"):
        store.add([Document("a", "t", metadata={"x": object()})])
    assert len(store) == 0


def test_reopen_persists_and_second_connection_sees_writes(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    with Docstore.create(path) as writer, Docstore(path) as reader:
        writer.add(docs("a", "b"))
        assert list(reader.ids()) == ["a", "b"]  # another connection (as another process would) sees it
    with Docstore(path) as store:
        assert store.get(["b", "a"]) == docs("b", "a")
    with Docstore.create(path, exist_ok=True) as store:
        assert len(store) == 2
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_create_and_open_errors(tmp_path: Path) -> None:
    with pytest.raises(IndexFormatError, match="docstore not found"):
        Docstore(tmp_path / "missing.sqlite")
    Docstore.create(tmp_path / "d.sqlite").close()
    with pytest.raises(IndexFormatError, match="docstore already exists"):
        Docstore.create(tmp_path / "d.sqlite")


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"\x00\x01 not a database " * 100)
    with pytest.raises(IndexFormatError, match="is not a ragloom docstore"):
        Docstore(garbage)
    with pytest.raises(IndexFormatError, match="is not a ragloom docstore"):
        Docstore.create(garbage, exist_ok=True)

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
    with pytest.raises(IndexFormatError, match="is not a ragloom docstore"):
        Docstore(other)
    with pytest.raises(IndexFormatError, match="is not a ragloom docstore"):
        Docstore.create(other, exist_ok=True)  # never adds our tables to someone else's database

    newer = tmp_path / "newer.sqlite"
    Docstore.create(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    with pytest.raises(IndexFormatError, match="format version 99; this ragloom reads version 1"):
        Docstore(newer)


def test_close_is_idempotent(tmp_path: Path) -> None:
    store = Docstore.create(tmp_path / "d.sqlite")
    store.close()
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        len(store)
