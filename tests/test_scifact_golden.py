"""Golden number on real data: all-MiniLM-L6-v2 + exact inner product on BEIR SciFact (test split).

The reference figure measured with plain sentence-transformers + faiss IndexFlatIP here is nDCG@10 = 0.6451.
"""

from __future__ import annotations

import pytest

from rag.eval.retrieval import evaluate_retrieval


@pytest.mark.slow
def test_minilm_flat_ndcg_on_scifact(shared_data, scifact_dense) -> None:
    assert len(scifact_dense) == 5183
    report = evaluate_retrieval(scifact_dense, shared_data / "scifact", split="test", progress=False)
    assert report.queries == 300
    assert round(report.metrics["nDCG@10"], 3) == 0.645
    assert report.metrics["R@100"] == pytest.approx(0.925, abs=0.01)
