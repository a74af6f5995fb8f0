"""SPLADE on a Lucene impact index: the encoder, Lucene's ranking against the exact quantised dot product,
and the index life cycle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rag.indexes import load_index
from rag.indexes.manifest import MANIFEST
from rag.indexes.splade import SpladeConfig, SpladeRetriever
from rag.indexes.splade_encoder import SpladeEncoder
from rag.types import Document

pytestmark = pytest.mark.slow  # loads the bundled SPLADE-tiny model

TEXTS = [
    "Cats purr when they are content and sometimes when stressed.",
    "Stock markets fell sharply after the interest rate decision.",
    "Lava flows from an erupting volcano can reach 1200 degrees Celsius.",
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
    "Vitamin D deficiency is linked to weaker bones in older adults.",
    "The mitochondria produce most of the cell's supply of ATP.",
    "Insulin resistance is an early sign of type 2 diabetes.",
    "Antibiotics do not work against viral infections such as the flu.",
    "Regular aerobic exercise lowers resting blood pressure.",
    "Smoking damages the lining of the airways and the lungs.",
    "Central banks raise interest rates to slow inflation.",
    "Glaciers retreat as average global temperatures rise.",
    "Honey bees communicate the location of flowers by dancing.",
    "Deep sleep helps the brain consolidate new memories.",
    "Coffee contains caffeine, a stimulant of the nervous system.",
    "Tectonic plates collide to form mountain ranges.",
]
QUERIES = [
    "why do cats purr",
    "what happens to stocks when rates rise",
    "how hot is lava",
    "does vitamin d help bones",
    "energy production in cells",
    "blood sugar and diabetes",
    "do antibiotics cure the flu",
    "exercise and hypertension",
    "sleep and memory",
    "how are mountains formed",
]


@pytest.fixture(scope="module")
def encoder() -> SpladeEncoder:
    torch.set_num_threads(1)
    return SpladeEncoder("splade-tiny", device="cpu")


@pytest.fixture
def retriever(encoder) -> SpladeRetriever:
    r = SpladeRetriever(SpladeConfig(show_progress=False, scale=100), encoder=encoder)
    assert r.add([Document(f"d{i}", t) for i, t in enumerate(TEXTS)]) == len(TEXTS)
    return r


def test_weights_are_max_pooled_log_saturated_and_ignore_padding(encoder) -> None:
    alone = encoder.weights([TEXTS[0]], max_length=64)  # [1, vocab]
    padded = encoder.weights([TEXTS[0], TEXTS[2] + " " + TEXTS[3]], max_length=64)[:1]  # padded to the longer
    assert alone.shape == (1, len(encoder.vocab)) and (alone >= 0).all()
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)
    assert 10 < int((alone > 0).sum()) < 300  # sparse: a few dozen terms out of 30,522
    quantised = encoder.encode_quantised([TEXTS[0]], max_length=64, scale=10.0)[0]
    expected = {
        encoder.vocab[j]: round(float(alone[0, j]) * 10) for j in alone[0].nonzero().flatten().tolist()
    }
    assert quantised == {t: n for t, n in expected.items() if n != 0}


def test_lucene_ranking_equals_the_exact_quantised_dot_product(retriever) -> None:
    docs = retriever.encode_documents(TEXTS)
    vocab = sorted({t for v in docs for t in v})
    column = {t: j for j, t in enumerate(vocab)}
    matrix = np.zeros((len(docs), len(vocab)), dtype=np.int64)  # [docs, terms]
    for i, vector in enumerate(docs):
        for term, impact in vector.items():
            matrix[i, column[term]] = impact
    k = 5
    for query, hits in zip(QUERIES, retriever.search(QUERIES, k=k), strict=True):
        q = retriever.encode_queries([query])[0]
        qvec = np.array([q.get(t, 0) for t in vocab], dtype=np.int64)
        exact = matrix @ qvec  # [docs]
        ranked = sorted(range(len(docs)), key=lambda i: -exact[i])
        expected_top = [int(exact[i]) for i in ranked[:k] if exact[i] > 0]
        assert [round(h.score) for h in hits] == expected_top, query  # Lucene's scores are the exact dots
        for hit in hits:
            assert round(hit.score) == exact[int(hit.doc_id[1:])]
        assert hits[0].doc_id == f"d{ranked[0]}"


def test_delete_add_save_load(retriever, encoder, tmp_path) -> None:
    assert retriever.search(["why do cats purr"], k=1)[0][0].doc_id == "d0"
    assert retriever.delete(["d0"]) == 1 and len(retriever) == len(TEXTS) - 1
    assert "d0" not in {h.doc_id for h in retriever.search(["why do cats purr"], k=20)[0]}
    retriever.add([Document("kitten", "A kitten purrs while drinking milk.")])
    assert retriever.search(["why do cats purr"], k=1)[0][0].doc_id == "kitten"
    retriever.save(tmp_path / "sp")
    manifest = json.loads((tmp_path / "sp" / MANIFEST).read_text())
    assert manifest["kind"] == "splade" and manifest["doc_count"] == len(TEXTS)
    assert manifest["encoder"] == "splade-tiny" and len(manifest["encoder_sha256"]) == 64
    assert manifest["config"]["scale"] == 100
    loaded = load_index(tmp_path / "sp")
    assert isinstance(loaded, SpladeRetriever) and len(loaded) == len(TEXTS)
    assert [h.doc_id for h in loaded.search(QUERIES[:3], k=3)[0]] == [
        h.doc_id for h in retriever.search(QUERIES[:3], k=3)[0]
    ]


def test_scale_changes_only_the_resolution(encoder) -> None:
    coarse = SpladeRetriever(SpladeConfig(show_progress=False, scale=5), encoder=encoder)
    coarse.add([Document(f"d{i}", t) for i, t in enumerate(TEXTS)])
    assert [h[0].doc_id for h in coarse.search(QUERIES[:4], k=1)] == ["d0", "d1", "d2", "d4"]
    assert max(max(v.values()) for v in coarse.encode_documents(TEXTS)) < 20  # weights ≲ 3-4 times 5


def test_bench_agreement_is_one_for_lucene_and_drops_for_another_ranking(encoder) -> None:
    """``rag bench retrieval``'s check: Lucene's top-k against the exact scores of the kept vectors."""
    from rag.bench.splade_exact import SpladeKeepingVectors, exact_scores, top_k_agreement

    kept = SpladeKeepingVectors(SpladeConfig(show_progress=False), encoder=encoder)
    ids = [f"d{i}" for i in range(len(TEXTS))]
    kept.add([Document(doc_id, t) for doc_id, t in zip(ids, TEXTS, strict=True)])
    assert len(kept.kept_vectors) == len(TEXTS)
    scores = exact_scores(kept.kept_vectors, kept.encode_queries(QUERIES))  # [queries, docs]
    assert scores.shape == (len(QUERIES), len(TEXTS))
    lucene = [[h.doc_id for h in hits] for hits in kept.search(QUERIES, k=3)]
    assert top_k_agreement(lucene, scores, ids, k=3) == [1.0] * len(QUERIES)
    worst_first = [[ids[i] for i in row.argsort()[:3]] for row in scores]
    assert sum(top_k_agreement(worst_first, scores, ids, k=3)) < len(QUERIES) / 2
