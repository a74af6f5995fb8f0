"""The Collection service: build, open, search with documents, add, delete; what front ends share."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import write_corpus

from rag.cli import search as search_command
from rag.collection import Collection
from rag.errors import ConfigError, CorpusError
from rag.registry import build
from rag.types import Document

pytestmark = pytest.mark.slow  # MiniLM

TEXTS = {
    "paris": "Paris is the capital of France.",
    "cats": "Cats purr when they are content.",
    "rome": "Rome is the capital of Italy.",
}


@pytest.fixture
def collection(tmp_path: Path) -> Iterator[Collection]:
    corpus = write_corpus(tmp_path / "c.jsonl", [{"id": i, "text": t} for i, t in TEXTS.items()])
    with Collection.build(corpus, tmp_path / "col", config={"show_progress": False}) as opened:
        yield opened


def test_search_returns_hits_with_their_documents(collection: Collection) -> None:
    hits, docs = collection.search("What is the capital of France?", k=2)
    assert [h.doc_id for h in hits] == [d.id for d in docs] and hits[0].doc_id == "paris"
    assert docs[0].text == TEXTS["paris"] and collection.kind == "dense" and len(collection) == 3
    many = collection.search_many(["capital of Italy", "purring"], k=1)
    assert [hits[0].doc_id for hits, _ in many] == ["rome", "cats"]


def test_changes_are_seen_by_another_opening_of_the_same_index(collection: Collection) -> None:
    assert collection.add([Document("berlin", "Berlin is the capital of Germany.")]) == 1
    with Collection(collection.index_dir) as other:  # as another process opens it
        assert other.search("capital of Germany", k=1)[0][0].doc_id == "berlin"
        assert other.delete(["cats", "never-added"]) == 1
    assert len(collection) == 3 and "cats" not in {h.doc_id for h in collection.search("purr", k=3)[0]}
    with pytest.raises(CorpusError, match="already exist"):
        collection.add([Document("paris", "Another text.")])
    found, missing = collection.documents(["rome", "nope"])
    assert found == [] and missing == ["nope"]
    assert [d.id for d in collection.documents(["rome"])[0]] == ["rome"]


def test_an_index_saved_without_a_docstore_is_refused(tmp_path: Path) -> None:
    retriever = build("retriever", "dense", {"show_progress": False})
    retriever.add([Document("a", "A text.")])
    retriever.save(tmp_path / "alone")
    with pytest.raises(ConfigError, match="records no docstore"):
        Collection(tmp_path / "alone")


def test_rag_search_reads_through_the_collection(collection: Collection, capsys) -> None:
    args = argparse.Namespace(index=str(collection.index_dir), queries=["capital of Italy"], k=1, json=False)
    assert search_command.run(args) == 0
    assert "rome" in capsys.readouterr().out
