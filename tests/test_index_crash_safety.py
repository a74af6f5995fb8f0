"""Every index kind: a crash while saving over an existing index leaves that index as it was, loadable, with
no temporary folder behind; the next save succeeds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rag.indexes import load_index
from rag.indexes.base import Retriever
from rag.indexes.bm25 import BM25Retriever
from rag.indexes.dense import DenseConfig, DenseRetriever
from rag.indexes.hybrid import HybridConfig, HybridRetriever
from rag.indexes.pq import PQConfig, PQRetriever
from rag.indexes.splade import SpladeConfig, SpladeRetriever
from rag.indexes.vector_prf import VectorPRFConfig, VectorPRFRetriever
from rag.types import Document

pytestmark = pytest.mark.slow  # MiniLM and SPLADE-tiny

DOCS = [Document(f"d{i}", f"document number {i} about topic {i % 7}") for i in range(300)]
EXTRA = Document("extra", "a document added after the first save")


def dense(minilm) -> Retriever:
    r = DenseRetriever(DenseConfig(factory="Flat", show_progress=False), encoder=minilm)
    r.add(DOCS)
    return r


def pq(minilm) -> Retriever:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(DOCS), 384)).astype(np.float32)
    r = PQRetriever(PQConfig(bytes_per_vector=4, nbits=4, show_progress=False), encoder=minilm)
    r.add_vectors([d.id for d in DOCS], vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    return r


def bm25(_minilm) -> Retriever:
    r = BM25Retriever()
    r.add(DOCS)
    return r


def splade(_minilm) -> Retriever:
    r = SpladeRetriever(SpladeConfig(show_progress=False))
    r.add(DOCS[:20])
    return r


def hybrid(minilm) -> Retriever:
    return HybridRetriever(HybridConfig(method="rrf"), parts=[bm25(minilm), dense(minilm)])


def prf(minilm) -> Retriever:
    return VectorPRFRetriever(VectorPRFConfig(), base=dense(minilm))


@pytest.mark.parametrize("make", [dense, pq, bm25, splade, hybrid, prf], ids=lambda f: f.__name__)
def test_a_crash_mid_save_keeps_the_previous_index(
    make: Callable, minilm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    retriever = make(minilm)
    saved = tmp_path / "index"
    retriever.save(saved)
    before = len(retriever)
    retriever.add([EXTRA])
    with monkeypatch.context() as patch:

        def crash(*_args, **_kwargs) -> None:
            raise OSError("disk full")

        patch.setattr("rag.indexes.manifest.Manifest.write", crash)
        with pytest.raises(OSError, match="disk full"):
            retriever.save(saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temporary folder left behind
    loaded = load_index(saved)
    assert len(loaded) == before
    assert "extra" not in {h.doc_id for h in loaded.search([EXTRA.text], k=5)[0]}
    retriever.save(saved)
    assert len(load_index(saved)) == before + 1
