"""JPQ tuning of PQ indexes: the codes as faiss stores them, training against them, saving, the CLI.

The tuning tests run on a slice of SciFact (the titles of the relevant documents of 60 train queries plus
other titles, 300 in all) under 4-byte, 4-bit PQ codes, so tuning takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from rag.cli import main
from rag.collection import build_index
from rag.collection.lock import LOCK_FILE
from rag.corpus import read_beir, read_beir_qrels, read_beir_queries
from rag.errors import ConfigError, CorpusError
from rag.indexes import Manifest, load_index
from rag.indexes.dense import DenseConfig, DenseRetriever
from rag.indexes.pq import PQRetriever
from rag.indexes.pq_codes import read_codes, write_centroids
from rag.indexes.pq_tuning import PQTuningConfig, read_training_set, tune_pq

FAST = PQTuningConfig(epochs=2, batch_size=16, lr=5e-5, centroid_lr=1e-3, show_progress=False)


# -- the codes as faiss stores them (no model) --------------------------------------------------------------


@pytest.mark.parametrize("factory", ["PQ2x8", "PQ4x6", "OPQ4,PQ4x4", "IVF8,PQ8x4"])
def test_codes_reproduce_faiss_scores_before_and_after_new_centroids(factory: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 16)).astype(np.float32)  # [n, d]
    queries = rng.standard_normal((8, 16)).astype(np.float32)
    index = faiss.IndexIDMap2(faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT))
    index.train(x)
    index.add_with_ids(x, np.arange(1000, dtype=np.int64) * 3)
    if "IVF" in factory:  # (deleting from an IndexIDMap2 over IVF lists breaks its id map in faiss)
        faiss.extract_index_ivf(index.index).nprobe = 8  # every list: exhaustive, like our scores
    else:
        index.remove_ids(np.array([0, 3], dtype=np.int64))  # labels of the first two vectors
    codes = read_codes(index)
    rotated = queries if codes.rotation is None else queries @ codes.rotation.T
    moved = codes.centroids + 0.05 * rng.standard_normal(codes.centroids.shape).astype(np.float32)
    for centroids in (codes.centroids, moved):
        write_centroids(index, centroids)
        scores = rotated @ codes.reconstruct(centroids).T  # [8, n]
        expected_scores, expected_labels = index.search(queries, 10)
        order = np.argsort(-scores, axis=1)[:, :10]
        np.testing.assert_array_equal(codes.labels[order], expected_labels)
        np.testing.assert_allclose(np.take_along_axis(scores, order, 1), expected_scores, atol=1e-5)
    np.testing.assert_array_equal(read_codes(index).codes, codes.codes)  # codes untouched
    with pytest.raises(ValueError, match="shape"):
        write_centroids(index, moved[:, :3])


def test_read_codes_refuses_indexes_without_pq() -> None:
    from rag.errors import IndexFormatError

    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    with pytest.raises(IndexFormatError, match="not a product-quantised index"):
        read_codes(flat)
    untrained = faiss.IndexIDMap2(faiss.index_factory(8, "PQ2x4", faiss.METRIC_INNER_PRODUCT))
    with pytest.raises(IndexFormatError, match="not trained"):
        read_codes(untrained)


# -- tuning on a slice of SciFact ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def beir_slice(shared_data, tmp_path_factory) -> Path:
    """A BEIR folder of 300 SciFact titles, the 60 train queries they answer, and their train qrels."""
    source = shared_data / "scifact"
    qrels = read_beir_qrels(source, "train")
    texts = read_beir_queries(source)
    chosen = sorted(qrels)[:60]
    relevant = {d for q in chosen for d in qrels[q]}
    corpus = list(read_beir(source))
    docs = [d for d in corpus if d.id in relevant]
    docs += [d for d in corpus if d.id not in relevant][: 300 - len(docs)]
    folder = tmp_path_factory.mktemp("beir")
    with open(folder / "corpus.jsonl", "w") as out:
        for d in docs:
            out.write(json.dumps({"_id": d.id, "title": "", "text": d.title}) + "\n")
    with open(folder / "queries.jsonl", "w") as out:
        for q in chosen:
            out.write(json.dumps({"_id": q, "text": texts[q]}) + "\n")
    (folder / "qrels").mkdir()
    lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{r}" for q in chosen for d, r in qrels[q].items())]
    (folder / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def untuned(beir_slice, tmp_path_factory) -> Path:
    """An untuned PQ index of the slice: 4 bytes (8 sub-quantizers of 16 centroids) per vector."""
    collection = tmp_path_factory.mktemp("collection")
    config = {"bytes_per_vector": 4, "nbits": 4, "show_progress": False}
    build_index(beir_slice, collection, name="pq", kind="pq", config=config)
    return collection / "pq"


@pytest.fixture(scope="module")
def tuned(untuned, beir_slice):
    """(the untuned index, the same index tuned in memory, the report)."""
    before = load_index(untuned)
    retriever = load_index(untuned)
    queries, qrels = read_training_set(beir_slice)
    report = tune_pq(retriever, queries, qrels, FAST, data={"beir": "slice", "split": "train"})
    return before, retriever, report


def train_recall(retriever, beir_slice: Path) -> float:
    """Fraction of (train query, relevant document) pairs found in the query's top 10."""
    queries, qrels = read_training_set(beir_slice)
    ids = list(queries)
    hits = retriever.search([queries[q] for q in ids], k=10)
    found = [len(set(qrels[q]) & {h.doc_id for h in row}) for q, row in zip(ids, hits, strict=True)]
    return sum(found) / sum(len(qrels[q]) for q in ids)


@pytest.mark.slow  # the bundled MiniLM on a slice of SciFact
def test_tuning_lowers_the_loss_and_raises_train_recall(tuned, beir_slice) -> None:
    before, after, report = tuned
    assert report.pairs >= 60 and report.steps == FAST.epochs * -(-report.pairs // FAST.batch_size)
    assert report.loss_after < report.loss_before - 0.3, report
    assert report.recall_after > report.recall_before + 0.1, report
    assert report.epoch_losses[-1] < report.epoch_losses[0]
    # the index itself, searched through faiss with the tuned query encoder and centroids
    assert train_recall(after, beir_slice) > train_recall(before, beir_slice) + 0.1


@pytest.mark.slow  # the bundled MiniLM on a slice of SciFact
def test_tuning_keeps_codes_and_document_encoder(tuned) -> None:
    before, after, _ = tuned
    old, new = read_codes(before.dense.index), read_codes(after.dense.index)
    np.testing.assert_array_equal(old.codes, new.codes)
    np.testing.assert_array_equal(old.labels, new.labels)
    assert not np.allclose(old.centroids, new.centroids)  # trained centroids are in the faiss index
    assert after.query_encoder is not None and after.query_encoder is not after.dense.encoder
    doc = ["Lava from a volcano reaches 1200 degrees."]
    np.testing.assert_allclose(after.dense.encode_queries(doc), before.dense.encode_queries(doc), atol=1e-6)


@pytest.mark.slow  # the bundled MiniLM on a slice of SciFact
def test_saved_tuned_index_searches_like_the_one_in_memory(tuned, beir_slice, tmp_path) -> None:
    _, retriever, report = tuned
    retriever.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix")
    assert isinstance(loaded, PQRetriever) and loaded.query_encoder is not None
    queries = list(read_training_set(beir_slice)[0].values())
    for mine, theirs in zip(retriever.search(queries, 10), loaded.search(queries, 10), strict=True):
        assert [h.doc_id for h in mine] == [h.doc_id for h in theirs]
        np.testing.assert_allclose([h.score for h in mine], [h.score for h in theirs], atol=1e-5)
    np.testing.assert_array_equal(
        read_codes(loaded.dense.index).codes, read_codes(retriever.dense.index).codes
    )
    extra = Manifest.read(tmp_path / "ix").extra
    assert extra["tuned_query_encoder"] is True
    tuning = extra["query_encoder_tuning"]
    assert tuning["data"] == {"beir": "slice", "split": "train"} and tuning["config"]["epochs"] == FAST.epochs
    assert tuning["report"]["loss_after"] == report.loss_after


@pytest.mark.slow  # the bundled MiniLM on a slice of SciFact
def test_cli_tunes_deterministically(untuned, beir_slice, tmp_path, capsys) -> None:
    """``rag index tune-pq`` writes the tuned index; the same seed gives the same centroids in Python."""
    argv = ["index", "tune-pq", str(untuned), "--beir", str(beir_slice), "--epochs", "1", "--lr", "5e-5"]
    assert main([*argv, "--centroid-lr", "1e-3", "--output", str(tmp_path / "cli")]) == 0
    assert "recall@10" in capsys.readouterr().out
    manifest = Manifest.read(tmp_path / "cli")
    assert manifest.extra["query_encoder_tuning"]["data"]["split"] == "train"
    assert manifest.docstore_path(tmp_path / "cli") == Manifest.read(untuned).docstore_path(untuned)
    assert not Manifest.read(untuned).extra["tuned_query_encoder"]  # --output leaves the source alone

    retriever = load_index(untuned)
    queries, qrels = read_training_set(beir_slice)
    config = PQTuningConfig(epochs=1, lr=5e-5, centroid_lr=1e-3, show_progress=False)
    report = tune_pq(retriever, queries, qrels, config)
    cli = load_index(tmp_path / "cli")
    assert report.loss_after == manifest.extra["query_encoder_tuning"]["report"]["loss_after"]
    # Same training (the loss matches exactly); the centroids may differ in the last float32 bit once
    # faiss has stored them, depending on how its threads split the reductions.
    np.testing.assert_allclose(
        read_codes(cli.dense.index).centroids, read_codes(retriever.dense.index).centroids, rtol=0, atol=1e-6
    )


@pytest.mark.slow  # the bundled MiniLM on a slice of SciFact
def test_a_crash_while_saving_leaves_the_previous_index(untuned, beir_slice, monkeypatch, tmp_path) -> None:
    from sentence_transformers import SentenceTransformer

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    before = {p.relative_to(untuned): p.read_bytes() for p in untuned.rglob("*") if p.is_file()}
    monkeypatch.setattr(SentenceTransformer, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["index", "tune-pq", str(untuned), "--beir", str(beir_slice), "--epochs", "1"])
    after = {p.relative_to(untuned): p.read_bytes() for p in untuned.rglob("*") if p.is_file()}
    assert after == before
    # no temporary folder left beside the index (the writer lock file is the collection's own)
    assert sorted(p.name for p in untuned.parent.iterdir()) == sorted([LOCK_FILE, "docstore.sqlite", "pq"])


@pytest.mark.slow  # the bundled MiniLM on a slice of SciFact
def test_bad_inputs_give_clear_errors(untuned, beir_slice, minilm, tmp_path, capsys) -> None:
    dense_dir = tmp_path / "dense"
    dense_dir.mkdir()
    Manifest(kind="dense", config={}, doc_count=0).write(dense_dir)
    assert main(["index", "tune-pq", str(dense_dir), "--beir", str(beir_slice)]) == 2
    assert "'dense' index; tune-pq needs a pq, opq or ivfpq index" in capsys.readouterr().err
    assert main(["index", "tune-pq", str(untuned), "--beir", str(tmp_path / "nowhere")]) == 3
    assert "BEIR folder not found" in capsys.readouterr().err
    assert main(["index", "tune-pq", str(untuned), "--beir", str(beir_slice), "--split", "dev"]) == 3
    err = capsys.readouterr().err
    assert "no qrels for split 'dev'" in err and "splits: ['train']" in err
    assert main(["index", "tune-pq", str(tmp_path / "missing"), "--beir", str(beir_slice)]) == 4
    assert main(["index", "tune-pq", str(untuned), "--beir", str(beir_slice), "--epochs", "0"]) == 2

    with pytest.raises(ConfigError, match="needs a pq, opq or ivfpq index"):
        tune_pq(DenseRetriever(DenseConfig(show_progress=False), encoder=minilm), {}, {})
    retriever = load_index(untuned)
    with pytest.raises(ConfigError, match="no training pairs"):
        tune_pq(retriever, {"q": "a question"}, {"q": {"not-indexed": 1}}, FAST)
    (tmp_path / "empty" / "qrels").mkdir(parents=True)
    (tmp_path / "empty" / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq\td\t0\n")
    with pytest.raises(CorpusError, match="judges no document relevant"):
        read_training_set(tmp_path / "empty")
