"""A dense index split into shards searches as the unsharded index does."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from rag.errors import ConfigError, IndexFormatError
from rag.indexes import load_index
from rag.indexes.dense import DenseConfig, DenseRetriever
from rag.indexes.manifest import MANIFEST
from rag.indexes.sharded_dense import ShardedDenseConfig, ShardedDenseRetriever
from rag.types import Document

TOPICS = ["cats purr", "stock markets fell", "lava from volcanoes", "sourdough bread rises", "whales sing"]
DOCS = [
    Document(f"d{i:02d}", f"Note {i} on {TOPICS[i % len(TOPICS)]}, detail {i * 7 % 11}.") for i in range(23)
]
QUERIES = ["why do kittens purr", "share prices dropped", "how hot is magma", "yeast in bread", "whale song"]


@pytest.fixture
def unsharded(minilm) -> DenseRetriever:
    retriever = DenseRetriever(DenseConfig(show_progress=False), encoder=minilm)
    retriever.add(DOCS)
    return retriever


@pytest.fixture
def sharded(minilm) -> ShardedDenseRetriever:
    retriever = ShardedDenseRetriever(ShardedDenseConfig(shards=3, show_progress=False), encoder=minilm)
    assert retriever.add(DOCS) == len(DOCS)
    return retriever


def ranked(results) -> list[list[tuple[str, float]]]:
    return [[(h.doc_id, round(h.score, 5)) for h in hits] for hits in results]


def test_shards_split_evenly_and_search_as_one_index(sharded, unsharded) -> None:
    assert sorted(len(shard) for shard in sharded.shards) == [7, 8, 8]
    assert set().union(*(s.doc_ids() for s in sharded.shards)) == {d.id for d in DOCS}
    for k in (1, 5, len(DOCS) + 3):
        assert ranked(sharded.search(QUERIES, k=k)) == ranked(unsharded.search(QUERIES, k=k))
    hits = sharded.search(QUERIES, k=5)[0]
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and {h.source for h in hits} == {"dense-sharded"}


def test_delete_and_add_reach_every_shard(sharded, unsharded) -> None:
    gone = ["d00", "d08", "d22", "missing"]
    assert sharded.delete(gone) == unsharded.delete(gone) == 3
    extra = [Document("new", "A kitten purrs on the warm windowsill.")]
    sharded.add(extra)
    unsharded.add(extra)
    assert len(sharded) == len(unsharded) == len(DOCS) - 2
    assert ranked(sharded.search(QUERIES, k=6)) == ranked(unsharded.search(QUERIES, k=6))
    with pytest.raises(ConfigError, match="already in the index"):
        sharded.add([Document("d05", "again")])
    with pytest.raises(ConfigError, match="repeat"):
        sharded.add([Document("x", "one"), Document("x", "two")])


def test_save_and_load_round_trip(sharded, tmp_path) -> None:
    sharded.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    assert manifest["kind"] == "dense-sharded" and manifest["doc_count"] == len(DOCS)
    assert manifest["extra"]["shards"] == ["shard-000", "shard-001", "shard-002"]
    loaded = load_index(tmp_path / "idx")
    assert isinstance(loaded, ShardedDenseRetriever) and loaded.config == sharded.config
    assert ranked(loaded.search(QUERIES, k=4)) == ranked(sharded.search(QUERIES, k=4))
    again = sharded.reload(tmp_path / "idx")
    assert again.encoder is sharded.encoder  # the loaded encoder is reused


def test_a_missing_shard_is_a_format_error(sharded, tmp_path) -> None:
    sharded.save(tmp_path / "idx")
    manifest_path = tmp_path / "idx" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["extra"]["shards"] = manifest["extra"]["shards"][:2]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="lists 2 shards"):
        ShardedDenseRetriever.load(tmp_path / "idx")


def test_vectors_added_directly_land_in_order(minilm) -> None:
    """``add_vectors`` (what a Ray build calls) keeps each id with its own vector."""
    retriever = ShardedDenseRetriever(ShardedDenseConfig(shards=2, show_progress=False), encoder=minilm)
    vectors = retriever.shards[0].encode_documents(DOCS)
    retriever.add_vectors([d.id for d in DOCS], vectors)
    for shard in retriever.shards:
        flat = faiss.downcast_index(shard.index.index)
        stored = flat.reconstruct_n(0, flat.ntotal)
        rows = [int(doc_id[1:]) for doc_id in shard.ids_of_labels(faiss.vector_to_array(shard.index.id_map))]
        np.testing.assert_array_equal(stored, vectors[rows])


def test_shards_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="shards must be at least 1"):
        ShardedDenseConfig(shards=0)
