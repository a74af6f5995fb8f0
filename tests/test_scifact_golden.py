"""Golden number on real data: all-MiniLM-L6-v2 + exact inner product on BEIR SciFact (test split).

The reference figure measured with plain sentence-transformers + faiss IndexFlatIP here is nDCG@10 = 0.6451.
Encoding the 5,183 abstracts takes about 4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import pytest
from rag.indexes.dense import DenseConfig, DenseRetriever

from rag.corpus import read_beir
from rag.eval.retrieval import evaluate_retrieval


@pytest.mark.slow
def test_minilm_flat_ndcg_on_scifact(shared_data, minilm) -> None:
    scifact = shared_data / "scifact"
    retriever = DenseRetriever(DenseConfig(encoder="minilm", factory="Flat"), encoder=minilm)
    assert retriever.add(read_beir(scifact)) == 5183
    report = evaluate_retrieval(retriever, scifact, split="test", progress=False)
    assert report.queries == 300
    assert round(report.metrics["nDCG@10"], 3) == 0.645
    assert report.metrics["R@100"] == pytest.approx(0.925, abs=0.01)
