"""The pipeline end to end on a tiny collection with the small bundled LLM."""

from __future__ import annotations

import json

import pytest

from rag.collection import build_index
from rag.errors import ConfigError, EmptyQueryError
from rag.generation import CausalLMConfig, CausalLMGenerator, GenerationParams
from rag.pipeline import Pipeline, PipelineConfig

CORPUS = [
    {
        "id": "fuji",
        "title": "Mount Fuji",
        "text": "Mount Fuji is the highest mountain in Japan, at 3,776 metres.",
    },
    {
        "id": "nile",
        "title": "Nile",
        "text": "The Nile is a river in north-eastern Africa, about 6,650 km long.",
    },
    {
        "id": "bread",
        "title": "Bread",
        "text": "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
    },
]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in CORPUS))
    build_index(root / "corpus.jsonl", root / "coll", name="dense", config={"show_progress": False})
    return root


@pytest.fixture(scope="module")
def generator():
    return CausalLMGenerator(
        CausalLMConfig(model="smollm2-135m-instruct", defaults=GenerationParams(max_new_tokens=20))
    )


@pytest.fixture(scope="module")
def pipeline(collection, generator):
    from rag.indexes import load_index

    return Pipeline(load_index(collection / "coll" / "dense"), generator, k=2)


def test_answer_carries_passages_from_the_docstore_and_timings(pipeline) -> None:
    answer = pipeline.answer("How high is Mount Fuji?")
    assert answer.passages[0].id == "fuji"
    assert answer.passages[0].text.startswith("Mount Fuji is the highest")
    assert answer.text
    assert set(answer.citations) <= {p.id for p in answer.passages}
    t = answer.timings
    assert t.retrieve_s > 0 and t.prefill_s > 0 and 0 < t.new_tokens <= 20
    assert t.total_s == pytest.approx(t.retrieve_s + t.prefill_s + t.decode_s)


def test_reranking_is_timed_as_its_own_stage(collection, generator) -> None:
    from rag.indexes import load_index
    from rag.registry import build

    reranker = build("reranker", "first", {"model": "smollm2-135m-instruct"})
    reranked = Pipeline(load_index(collection / "coll" / "dense"), generator, reranker, k=2, fetch_k=3)
    t = reranked.answer("How high is Mount Fuji?").timings
    assert t.retrieve_s > 0 and t.rerank_s > 0  # one FIRST forward over 3 passages, apart from the search
    assert t.total_s == pytest.approx(t.retrieve_s + t.rerank_s + t.prefill_s + t.decode_s)


def test_stream_yields_the_text_then_the_same_answer_as_answer(pipeline) -> None:
    params = GenerationParams(max_new_tokens=12)
    stream = pipeline.stream("How long is the Nile?", params)
    with pytest.raises(RuntimeError, match="read the stream to the end"):
        _ = stream.answer
    streamed = "".join(stream)
    answer = pipeline.answer("How long is the Nile?", params)
    assert streamed.strip() == answer.text == stream.answer.text
    assert stream.answer.citations == answer.citations
    assert [p.id for p in stream.answer.passages] == [p.id for p in answer.passages]
    t = stream.answer.timings
    assert (t.new_tokens, t.decode_steps) == (answer.timings.new_tokens, answer.timings.decode_steps)
    assert t.retrieve_s > 0 and t.prefill_s > 0 and 0 < t.new_tokens <= 12
    assert t.total_s == pytest.approx(t.retrieve_s + t.prefill_s + t.decode_s)


def test_empty_question_is_refused(pipeline) -> None:
    with pytest.raises(EmptyQueryError):
        pipeline.answer("   ")


def test_from_config_builds_the_same_pipeline(collection, pipeline) -> None:
    path = collection / "pipeline.json"
    PipelineConfig(
        index="coll/dense", k=2, generator={"name": "causal-lm", "model": "smollm2-135m-instruct"}
    ).save(path)
    loaded = Pipeline.from_config(path)
    assert loaded.k == 2
    question = "Which river is in Africa?"
    assert [p.id for p in loaded.retrieve(question).passages] == [
        p.id for p in pipeline.retrieve(question).passages
    ]


def test_from_config_rejects_bad_files(collection) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Pipeline.from_config(collection / "missing.json")
    bad = collection / "bad.json"
    bad.write_text(json.dumps({"index": "coll/dense", "colour": "blue"}))
    with pytest.raises(ConfigError, match="colour"):
        Pipeline.from_config(bad)
    bad.write_text(json.dumps({"index": "coll/dense", "generator": {"name": "nope"}}))
    with pytest.raises(ConfigError, match="unknown generator 'nope'"):
        Pipeline.from_config(bad)
