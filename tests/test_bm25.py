"""BM25 on Lucene: ranking, RM3, add/delete without a rebuild, save/load, CLI, SciFact golden figure."""

from __future__ import annotations

import itertools
import json

import pytest

from rag.cli import main
from rag.corpus import read_beir
from rag.errors import ConfigError, EmptyQueryError
from rag.eval.retrieval import evaluate_retrieval
from rag.indexes import load_index
from rag.indexes.bm25 import BM25Config, BM25Retriever
from rag.indexes.manifest import MANIFEST
from rag.types import Document

DOCS = [
    Document("cat", "Cats purr when they are content and sometimes when stressed.", title="Cats"),
    Document("stock", "Stock markets fell sharply after the interest rate decision.", title="Markets"),
    Document("volcano", "Lava flows from an erupting volcano reach 1200 degrees Celsius.", title="Volcanoes"),
    Document("bread", "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.", title="Baking"),
]
QUERIES = ["why do cats purr", "stock markets fell", "how hot is volcano lava", "sourdough yeast"]


@pytest.fixture
def retriever() -> BM25Retriever:
    r = BM25Retriever()
    assert r.add(DOCS) == 4
    return r


def test_each_query_finds_its_document(retriever) -> None:
    results = retriever.search(QUERIES, k=2)
    assert [hits[0].doc_id for hits in results] == ["cat", "stock", "volcano", "bread"]
    for hits in results:
        assert hits[0].rank == 1 and hits[0].source == "bm25" and hits[0].score > 0
        assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    # the title is indexed too: "Baking" appears only in the title of "bread"
    assert retriever.search(["baking"], k=1)[0][0].doc_id == "bread"


def test_stemming_and_k1_b_change_scores() -> None:
    docs = [Document("long", "jumping " + "filler words " * 30), Document("short", "jumps")]
    default, flat = BM25Retriever(), BM25Retriever(BM25Config(k1=0.9, b=0.0))
    default.add(docs), flat.add(docs)
    hits = default.search(["jump"], k=2)[0]
    assert [h.doc_id for h in hits] == ["short", "long"]  # Porter stemming matches jumps/jumping
    # without length normalisation (b=0) both documents have tf=1 and score the same
    flat_hits = flat.search(["jump"], k=2)[0]
    assert flat_hits[0].score == pytest.approx(flat_hits[1].score, rel=1e-4)  # Anserini nudges ties


def test_rm3_expands_the_query_from_the_top_documents() -> None:
    docs = [
        Document("a", "jaguar rainforest predator ambush"),
        Document("b", "jaguar rainforest predator night"),
        Document("c", "rainforest predator canopy"),  # no "jaguar": only query expansion can find it
        Document("d", "interest rates and bond markets"),
        # Anserini's RM3 skips expansion terms found in over 10% of documents: pad the collection
        *(Document(f"pad{i}", f"unrelated filler number{i} text{i}") for i in range(40)),
    ]
    plain, rm3 = BM25Retriever(), BM25Retriever(BM25Config(rm3=True, rm3_fb_docs=2, rm3_fb_terms=5))
    plain.add(docs), rm3.add(docs)
    assert {h.doc_id for h in plain.search(["jaguar"], k=4)[0]} == {"a", "b"}
    expanded = [h.doc_id for h in rm3.search(["jaguar"], k=4)[0]]
    assert sorted(expanded[:2]) == ["a", "b"] and expanded[2] == "c" and "d" not in expanded


def test_delete_and_add_without_rebuild(retriever) -> None:
    assert retriever.delete(["cat", "not-there"]) == 1
    assert len(retriever) == 3
    for hits in retriever.search([*QUERIES, "cats purr content stressed"], k=4):
        assert "cat" not in {h.doc_id for h in hits}
    assert retriever.add([Document("kitten", "A kitten purrs while it drinks milk.")]) == 1
    assert retriever.search(["kitten purrs"], k=1)[0][0].doc_id == "kitten"
    with pytest.raises(ConfigError, match="already in the index"):
        retriever.add([Document("stock", "again")])
    assert retriever.add([Document("cat", "A re-added cat document about purring.")]) == 1
    assert retriever.search(["purring cat"], k=1)[0][0].doc_id == "cat"


def test_user_errors(retriever) -> None:
    with pytest.raises(EmptyQueryError):
        retriever.search([" "], k=3)
    with pytest.raises(ConfigError, match="k1"):
        BM25Config(b=1.5)
    assert BM25Retriever().search(["anything"], k=3) == [[]]


def test_save_load_round_trip_keeps_the_saved_copy_intact(retriever, tmp_path) -> None:
    retriever.delete(["bread"])
    retriever.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    assert manifest["kind"] == "bm25" and manifest["doc_count"] == 3
    assert manifest["config"]["k1"] == 0.9 and manifest["extra"]["index_bytes"] > 0
    loaded = load_index(tmp_path / "idx")
    assert isinstance(loaded, BM25Retriever) and len(loaded) == 3
    assert [h[0].doc_id for h in loaded.search(QUERIES[:3], k=1)] == ["cat", "stock", "volcano"]
    # changes to a loaded index go to a private copy until saved
    loaded.delete(["cat"])
    loaded.add([Document("new", "zebra stripes")])
    assert load_index(tmp_path / "idx").search(["cats purr"], k=1)[0][0].doc_id == "cat"
    loaded.save(tmp_path / "idx")
    again = load_index(tmp_path / "idx")
    assert len(again) == 3 and json.loads((tmp_path / "idx" / MANIFEST).read_text())["doc_count"] == 3
    assert again.search(["zebra"], k=1)[0][0].doc_id == "new"
    assert "cat" not in {h.doc_id for h in again.search(["cats purr"], k=5)[0]}


def test_a_crash_mid_save_leaves_the_previous_index(retriever, tmp_path, monkeypatch) -> None:
    retriever.save(tmp_path / "idx")
    retriever.add([Document("extra", "one more document")])

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("rag.indexes.lucene_base.Manifest.write", crash)
    with pytest.raises(OSError, match="disk full"):
        retriever.save(tmp_path / "idx")
    assert len(load_index(tmp_path / "idx")) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temporary folder left behind


def test_cli_builds_and_evaluates_a_bm25_index(tmp_path, capsys) -> None:
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in DOCS)
    )
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": q}) + "\n" for i, q in enumerate(QUERIES))
    )
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{d.id}\t1\n" for i, d in enumerate(DOCS))
    )
    argv = ["index", "build", str(beir), str(tmp_path / "c"), "--kind", "bm25", "--name", "bm25"]
    assert main([*argv, "--set", "k1=1.2", "--set", "b=0.75"]) == 0
    manifest = json.loads((tmp_path / "c" / "bm25" / MANIFEST).read_text())
    assert manifest["config"]["k1"] == 1.2 and manifest["docstore"] == "../docstore.sqlite"
    capsys.readouterr()
    assert main(["eval", "retrieval", str(beir), "--index", str(tmp_path / "c" / "bm25")]) == 0
    assert "1.0000" in capsys.readouterr().out  # every query finds its one relevant document first


@pytest.mark.slow
def test_bm25_reproduces_the_beir_scifact_reference(shared_data) -> None:
    scifact = shared_data / "scifact"
    retriever = BM25Retriever()
    assert retriever.add(read_beir(scifact)) == 5183
    report = evaluate_retrieval(retriever, scifact, split="test", progress=False)
    assert report.queries == 300
    assert report.metrics["nDCG@10"] == pytest.approx(0.6789, abs=0.003)
    assert report.metrics["R@100"] == pytest.approx(0.925, abs=0.01)
