"""Dense retrieval and the on-disk index format."""

from __future__ import annotations

import json

import pytest

from rag.errors import ConfigError, EmptyQueryError, IndexFormatError
from rag.indexes import load_index
from rag.indexes.dense import DenseConfig, DenseRetriever
from rag.indexes.manifest import MANIFEST, atomic_directory
from rag.types import Document

DOCS = [
    Document("cat", "Cats purr when they are content and sometimes when stressed.", title="Cats"),
    Document("stock", "Stock markets fell sharply after the interest rate decision.", title="Markets"),
    Document(
        "volcano", "Lava flows from an erupting volcano can reach 1200 degrees Celsius.", title="Volcanoes"
    ),
    Document("bread", "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.", title="Baking"),
]
QUERIES = ["why do kittens purr", "share prices dropped", "how hot is magma", "yeast in bread dough"]


@pytest.fixture(params=["Flat", "HNSW16"])
def retriever(request, minilm) -> DenseRetriever:
    r = DenseRetriever(DenseConfig(factory=request.param, show_progress=False), encoder=minilm)
    assert r.add(DOCS) == 4
    return r


def test_each_query_finds_its_document(retriever) -> None:
    results = retriever.search(QUERIES, k=2)
    assert [hits[0].doc_id for hits in results] == ["cat", "stock", "volcano", "bread"]
    for hits in results:
        assert [h.rank for h in hits] == [1, 2]
        assert hits[0].score > hits[1].score
        assert all(h.source == "dense" for h in hits)


def test_delete_and_add_without_rebuild(retriever) -> None:
    assert retriever.delete(["cat", "not-there"]) == 1
    assert len(retriever) == 3
    for hits in retriever.search(QUERIES, k=4):
        assert "cat" not in {h.doc_id for h in hits}
        assert len(hits) == 3
    retriever.add([Document("kitten", "A kitten purrs while it drinks milk.")])
    assert retriever.search(["why do kittens purr"], k=1)[0][0].doc_id == "kitten"
    with pytest.raises(ConfigError, match="already in the index"):
        retriever.add([Document("stock", "again")])


def test_save_and_load_round_trip(retriever, tmp_path) -> None:
    retriever.delete(["bread"])
    retriever.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    assert manifest["kind"] == "dense" and manifest["doc_count"] == 3
    assert manifest["encoder"] == "minilm" and len(manifest["encoder_sha256"]) == 64
    loaded = load_index(tmp_path / "idx")
    assert [[h.doc_id for h in hits] for hits in loaded.search(QUERIES, k=3)] == [
        [h.doc_id for h in hits] for hits in retriever.search(QUERIES, k=3)
    ]


def test_empty_query_and_bad_k_are_refused(retriever) -> None:
    with pytest.raises(EmptyQueryError):
        retriever.search(["  "], k=3)
    with pytest.raises(EmptyQueryError):
        retriever.search(["cats"], k=0)


def test_bad_factory_string_is_a_config_error(minilm) -> None:
    with pytest.raises(ConfigError, match="factory"):
        DenseRetriever(DenseConfig(factory="NoSuchIndex"), encoder=minilm)


@pytest.fixture
def saved(retriever, tmp_path):
    retriever.save(tmp_path / "idx")
    return tmp_path / "idx"


def test_corrupt_manifest_is_refused(saved) -> None:
    (saved / MANIFEST).write_text("{not json")
    with pytest.raises(IndexFormatError, match="corrupt manifest"):
        load_index(saved)


def test_missing_index_and_wrong_format_version(saved, tmp_path) -> None:
    with pytest.raises(IndexFormatError, match="not found"):
        load_index(tmp_path / "nowhere")
    manifest = json.loads((saved / MANIFEST).read_text())
    (saved / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(IndexFormatError, match="format version 99"):
        load_index(saved)


def test_index_built_with_another_encoder_is_refused(saved) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    (saved / MANIFEST).write_text(json.dumps({**manifest, "encoder_sha256": "f" * 64}))
    with pytest.raises(IndexFormatError, match="encoder mismatch"):
        load_index(saved)


def test_corrupt_payload_is_refused(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    (saved / "vectors.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexFormatError, match=r"vectors.faiss does not match the checksum"):
        load_index(saved)
    monkeypatch.setenv("RAG_VERIFY_INDEX", "0")  # checksums skipped: faiss itself still refuses garbage
    with pytest.raises(IndexFormatError, match="corrupt faiss file"):
        load_index(saved)


def test_failed_write_leaves_previous_index_intact(saved) -> None:
    before = (saved / MANIFEST).read_text()
    with pytest.raises(RuntimeError), atomic_directory(saved) as work:
        (work / MANIFEST).write_text("half")
        raise RuntimeError("crash mid-build")
    assert (saved / MANIFEST).read_text() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["idx"]  # no temp folder left
    assert len(load_index(saved)) == 4
