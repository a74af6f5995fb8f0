"""PQ-compressed dense retrieval: factory strings, compression ratio, recall against exact search on
synthetic clustered vectors, and the index life cycle for PQ, OPQ+PQ and IVF-PQ."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from rag.errors import ConfigError
from rag.indexes import load_index
from rag.indexes.manifest import MANIFEST
from rag.indexes.pq import IVFPQRetriever, OPQRetriever, PQConfig, PQRetriever
from rag.types import Document

pytestmark = pytest.mark.slow  # builds on the bundled MiniLM encoder
KINDS = [PQRetriever, OPQRetriever, IVFPQRetriever]


def clustered(n: int, dim: int = 384, clusters: int = 16, seed: int = 0) -> np.ndarray:
    """[n, dim] unit vectors around ``clusters`` random centres (a SyntheticDataset in the faiss spirit)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build(cls, minilm, n: int = 300, **options) -> PQRetriever:
    """A trained index of ``n`` clustered vectors; 4-bit codes keep faiss training to seconds."""
    config = PQConfig(show_progress=False, nbits=4, nlist=8, nprobe=8, opq_niter=2, **options)
    retriever = cls(config, encoder=minilm)
    retriever.add_vectors([f"v{i}" for i in range(n)], clustered(n))
    return retriever


def test_factory_strings_and_compression_ratio(minilm) -> None:
    config = PQConfig(bytes_per_vector=24, show_progress=False)
    assert PQRetriever(config, encoder=minilm).factory() == "PQ24x8"
    assert OPQRetriever(config, encoder=minilm).factory() == "OPQ24,PQ24x8"
    assert IVFPQRetriever(config, encoder=minilm).factory() == "IVF64,PQ24x8"
    assert PQRetriever(config, encoder=minilm).compression_ratio == 64.0
    assert PQRetriever(PQConfig(bytes_per_vector=12, nbits=4), encoder=minilm).factory() == "PQ24x4"
    with pytest.raises(ConfigError, match="multiple of the number of subquantizers"):
        PQRetriever(PQConfig(bytes_per_vector=10), encoder=minilm)
    with pytest.raises(ConfigError, match="multiple of nbits"):
        PQConfig(bytes_per_vector=3, nbits=5)
    with pytest.raises(ConfigError, match="at least 256 documents"):  # 2^8 centroids per sub-quantizer
        PQRetriever(config, encoder=minilm).add([Document("a", "too few to train")])


def test_more_bytes_give_better_recall(minilm) -> None:
    base, queries = clustered(300), clustered(50, seed=1)
    exact = faiss.IndexFlatIP(384)
    exact.add(base)
    _, truth = exact.search(queries, 10)  # [50, 10]

    def recall(bytes_per_vector: int) -> float:
        """recall@10 against exact search (faiss seeds its k-means: the figures are reproducible)"""
        hits = build(PQRetriever, minilm, bytes_per_vector=bytes_per_vector).search_vectors(queries, 10)
        found = [{int(h.doc_id[1:]) for h in row} for row in hits]
        return float(np.mean([len(f & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]))

    coarse, fine = recall(2), recall(16)  # 4 and 32 sub-quantizers of 16 centroids
    assert fine > coarse + 0.04 and coarse > 0.2, (coarse, fine)  # measured: 0.346 -> 0.406


@pytest.mark.parametrize("cls", KINDS)
def test_add_delete_save_load(cls, minilm, tmp_path) -> None:
    retriever = build(cls, minilm, n=400, bytes_per_vector=4)  # 8 sub-quantizers: 1536 / 4 = 384x
    retriever.add(
        [Document("lava", "Lava from a volcano reaches 1200 degrees."), Document("cat", "Cats purr.")]
    )
    assert "lava" in {h.doc_id for h in retriever.search(["how hot is volcanic lava"], k=3)[0]}
    assert retriever.delete(["lava", "v0", "nope"]) == 2 and len(retriever) == 400
    assert {"lava", "v0"}.isdisjoint(
        h.doc_id for h in retriever.search(["how hot is volcanic lava"], k=20)[0]
    )
    retriever.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / MANIFEST).read_text())
    assert manifest["kind"] == cls.kind and manifest["doc_count"] == 400
    assert manifest["extra"]["compression_ratio"] == 384.0 and manifest["extra"]["bytes_per_vector"] == 4
    assert manifest["extra"]["index_bytes"] > 400 * 4  # the codes, codebooks (and OPQ's 384x384 rotation)
    loaded = load_index(tmp_path / "ix")
    assert type(loaded) is cls and len(loaded) == 400
    assert [h.doc_id for h in loaded.search(["do cats purr"], k=5)[0]] == [
        h.doc_id for h in retriever.search(["do cats purr"], k=5)[0]
    ]


@pytest.mark.parametrize("cls", KINDS)
def test_delete_keeps_the_other_documents_and_their_scores(cls, minilm) -> None:
    """After a delete, search returns what it returned before, less the deleted documents (IVF lists too)."""
    retriever = build(cls, minilm, n=400, bytes_per_vector=8)
    queries = clustered(5, seed=2)
    before = retriever.search_vectors(queries, 60)
    deleted = {f"v{i}" for i in range(0, 400, 4)}
    assert retriever.delete(deleted) == 100
    retriever.add_vectors(["new"], clustered(1, seed=3))  # inner ids handed out after the delete stay apart
    after = retriever.search_vectors(queries, 30)
    for old, new in zip(before, after, strict=True):
        kept = [h for h in old if h.doc_id not in deleted]
        found = [h for h in new if h.doc_id != "new"][:20]
        # the same scores in the same order, each under the id that had it before (equal codes tie)
        assert [round(h.score, 4) for h in found] == [round(h.score, 4) for h in kept[:20]]
        old_scores = {h.doc_id: round(h.score, 4) for h in kept}
        assert all(old_scores.get(h.doc_id) == round(h.score, 4) for h in found)
