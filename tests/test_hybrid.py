"""Hybrid fusion: the fusion arithmetic, a fused index's life cycle, and BM25 + MiniLM on SciFact."""

from __future__ import annotations

import json

import pytest

from rag.cli import main
from rag.corpus import read_beir
from rag.errors import ConfigError
from rag.eval.retrieval import evaluate_retrieval
from rag.indexes import load_index
from rag.indexes.bm25 import BM25Config, BM25Retriever
from rag.indexes.hybrid import HybridConfig, HybridRetriever, minmax_fuse, rrf_fuse, zscore_fuse
from rag.indexes.manifest import MANIFEST
from rag.types import Document, Hit

DOCS = [
    Document("cat", "Cats purr when they are content and sometimes when stressed.", title="Cats"),
    Document("stock", "Stock markets fell sharply after the interest rate decision.", title="Markets"),
    Document("volcano", "Lava flows from an erupting volcano reach 1200 degrees Celsius.", title="Volcanoes"),
    Document("bread", "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.", title="Baking"),
]


def test_rrf_adds_reciprocal_ranks() -> None:
    fused = rrf_fuse([[("a", 9.0), ("b", 1.0)], [("b", 0.8), ("c", 0.1)]], [1.0, 2.0], rrf_k=60)
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["b"] == pytest.approx(1 / 62 + 2 / 61)
    assert fused["c"] == pytest.approx(2 / 62)


def test_minmax_normalises_each_part() -> None:
    fused = minmax_fuse([[("a", 10.0), ("b", 6.0), ("c", 2.0)], [("c", 0.9), ("a", 0.5)]], [0.5, 0.5])
    assert fused == pytest.approx({"a": 0.5 * 1 + 0.5 * 0, "b": 0.5 * 0.5, "c": 0.5 * 0 + 0.5 * 1})
    assert minmax_fuse([[("a", 3.0)]], [1.0]) == {"a": 1.0}  # a single hit normalises to 1


def test_zscore_scales_by_spread_and_gives_missing_documents_the_lowest_score() -> None:
    # part 1: scores 10, 6, 2 -> std sqrt(32/3), min 2; part 2: scores 0.9, 0.5 -> std 0.2, min 0.5
    fused = zscore_fuse([[("a", 10.0), ("b", 6.0), ("c", 2.0)], [("c", 0.9), ("a", 0.5)]], [1.0, 2.0])
    std = (32 / 3) ** 0.5
    assert fused == pytest.approx({"a": 8 / std + 0.0, "b": 4 / std, "c": 0.0 + 2 * 0.4 / 0.2})
    # shifting or scaling one part's scores changes nothing
    assert zscore_fuse([[("a", 103.0), ("b", 101.0)], [("b", 5.0)]], [1.0, 1.0]) == pytest.approx(
        zscore_fuse([[("a", 3.0), ("b", 1.0)], [("b", 0.5)]], [1.0, 1.0])
    )
    assert zscore_fuse([[("a", 3.0)]], [1.0]) == {"a": 1.0}  # a single hit (no spread) counts 1


def test_fuse_orders_by_fused_score_and_breaks_ties_by_id() -> None:
    hybrid = HybridRetriever(HybridConfig(), parts=[BM25Retriever(), BM25Retriever()])
    hits = hybrid.fuse([[Hit("x", 5, 1, "bm25"), Hit("y", 4, 2, "bm25")], [Hit("y", 1, 1, "bm25")]], k=5)
    assert [(h.doc_id, h.rank, h.source) for h in hits] == [("y", 1, "hybrid"), ("x", 2, "hybrid")]
    assert hits[0].score == pytest.approx(1 / 62 + 1 / 61)


def test_config_errors() -> None:
    assert HybridConfig(method="zscore").method == "zscore"
    with pytest.raises(ConfigError, match="unknown fusion"):
        HybridConfig(method="max")
    with pytest.raises(ConfigError, match="at least two parts"):
        HybridRetriever(HybridConfig(), parts=[BM25Retriever()])
    with pytest.raises(ConfigError, match="1 weights for 2 parts"):
        HybridRetriever(HybridConfig(weights=(1.0,)), parts=[BM25Retriever(), BM25Retriever()])


def test_life_cycle_add_delete_save_load(tmp_path) -> None:
    config = HybridConfig(method="minmax", weights=(0.7, 0.3), part_names=("plain", "flat"))
    hybrid = HybridRetriever(config, parts=[BM25Retriever(), BM25Retriever(BM25Config(b=0.0))])
    assert hybrid.add(DOCS) == 4 and len(hybrid) == 4
    assert [h[0].doc_id for h in hybrid.search(["cats purr", "sourdough yeast"], k=2)] == ["cat", "bread"]
    assert hybrid.delete(["cat"]) == 1 and len(hybrid) == 3
    assert "cat" not in {h.doc_id for h in hybrid.search(["cats purr"], k=4)[0]}
    hybrid.save(tmp_path / "h")
    manifest = json.loads((tmp_path / "h" / MANIFEST).read_text())
    assert manifest["extra"]["parts"] == [{"kind": "bm25", "path": "plain"}, {"kind": "bm25", "path": "flat"}]
    assert manifest["doc_count"] == 3
    loaded = load_index(tmp_path / "h")
    assert isinstance(loaded, HybridRetriever) and loaded.weights == [0.7, 0.3]
    assert loaded.parts[1].config.b == 0.0
    loaded.add([Document("kitten", "A kitten purrs.")])
    assert loaded.search(["kitten"], k=1)[0][0].doc_id == "kitten"


def test_cli_builds_a_hybrid_of_fresh_parts(tmp_path) -> None:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": d.id, "text": d.text, "title": d.title}) + "\n" for d in DOCS)
    )
    parts = '[{"kind": "bm25"}, {"kind": "bm25", "k1": 1.5}]'
    argv = ["index", "build", str(corpus), str(tmp_path / "c"), "--kind", "hybrid", "--name", "hy"]
    assert main([*argv, "--set", f"parts={parts}", "--set", 'part_names=["a", "b"]']) == 0
    loaded = load_index(tmp_path / "c" / "hy")
    assert len(loaded) == 4 and loaded.parts[1].config.k1 == 1.5
    assert (
        json.loads((tmp_path / "c" / "hy" / "b" / MANIFEST).read_text())["docstore"]
        == "../../docstore.sqlite"
    )


@pytest.mark.slow
def test_bm25_plus_minilm_fusion_beats_both_on_scifact(shared_data, scifact_dense) -> None:
    scifact = shared_data / "scifact"
    bm25 = BM25Retriever()
    bm25.add(read_beir(scifact))

    def ndcg(retriever) -> float:
        return evaluate_retrieval(retriever, scifact, split="test", progress=False).metrics["nDCG@10"]

    alone = {"bm25": ndcg(bm25), "dense": ndcg(scifact_dense)}
    rrf = ndcg(HybridRetriever(HybridConfig(method="rrf"), parts=[bm25, scifact_dense]))
    minmax = ndcg(HybridRetriever(HybridConfig(method="minmax"), parts=[bm25, scifact_dense]))
    assert alone["bm25"] == pytest.approx(0.679, abs=0.003) and alone["dense"] == pytest.approx(
        0.645, abs=0.003
    )
    assert rrf == pytest.approx(0.718, abs=0.005) and rrf > max(alone.values()) + 0.02
    assert minmax == pytest.approx(0.725, abs=0.005) and minmax > max(alone.values()) + 0.02
