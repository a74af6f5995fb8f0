"""Vector PRF (Rocchio) over dense and PQ indexes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag.errors import ConfigError
from rag.indexes import load_index
from rag.indexes.bm25 import BM25Retriever
from rag.indexes.dense import DenseConfig, DenseRetriever
from rag.indexes.manifest import MANIFEST
from rag.indexes.vector_prf import VectorPRFConfig, VectorPRFRetriever
from rag.types import Document

pytestmark = pytest.mark.slow  # encodes with the bundled MiniLM

DOCS = [
    Document("cat", "Cats purr when they are content and sometimes when stressed."),
    Document("kitten", "Kittens learn to purr while nursing from their mother."),
    Document("stock", "Stock markets fell sharply after the interest rate decision."),
    Document("bonds", "Bond yields rose as the central bank raised rates."),
    Document("volcano", "Lava flows from an erupting volcano reach 1200 degrees Celsius."),
    Document("bread", "Sourdough bread rises thanks to wild yeast."),
]


@pytest.fixture
def base(minilm) -> DenseRetriever:
    retriever = DenseRetriever(DenseConfig(show_progress=False), encoder=minilm)
    retriever.add(DOCS)
    return retriever


def test_feedback_vectors_are_the_stored_vectors(base) -> None:
    prf = VectorPRFRetriever(VectorPRFConfig(fb_docs=2), base=base)
    hits = base.search(["why do cats purr"], k=2)[0]
    stored = prf.feedback_vectors(hits)  # [2, 384]
    np.testing.assert_allclose(
        stored,
        base.encode_documents(
            [d for d in DOCS if d.id == hits[0].doc_id] + [d for d in DOCS if d.id == hits[1].doc_id]
        ),
        atol=1e-5,
    )


def test_rocchio_moves_the_query_towards_the_feedback_documents(base) -> None:
    plain = base.search(["purring"], k=6)[0]
    same = VectorPRFRetriever(VectorPRFConfig(fb_docs=2, beta=0.0), base=base).search(["purring"], k=6)[0]
    assert [h.doc_id for h in same] == [h.doc_id for h in plain]  # beta = 0: the plain query
    expanded = VectorPRFRetriever(VectorPRFConfig(fb_docs=2, alpha=0.0, beta=1.0), base=base)
    hits = expanded.search(["purring"], k=6)[0]
    assert {h.doc_id for h in hits[:2]} == {"cat", "kitten"} and hits[0].source == "vector-prf"
    # the expanded query is the normalised mean of the two cat documents: both score well above the rest
    assert min(h.score for h in hits[:2]) > max(h.score for h in hits[2:]) + 0.2


def test_needs_a_vector_base_and_round_trips(base, tmp_path) -> None:
    with pytest.raises(ConfigError, match="dense or PQ base"):
        VectorPRFRetriever(base=BM25Retriever())
    prf = VectorPRFRetriever(VectorPRFConfig(fb_docs=2), base=base)
    prf.delete(["bread"])
    prf.save(tmp_path / "prf")
    manifest = json.loads((tmp_path / "prf" / MANIFEST).read_text())
    assert manifest["extra"]["base"] == {"kind": "dense", "path": "base"} and manifest["doc_count"] == 5
    loaded = load_index(tmp_path / "prf")
    assert isinstance(loaded, VectorPRFRetriever) and len(loaded) == 5
    assert [h.doc_id for h in loaded.search(["stock prices"], k=3)[0]] == [
        h.doc_id for h in prf.search(["stock prices"], k=3)[0]
    ]
