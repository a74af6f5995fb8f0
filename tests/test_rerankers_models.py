"""The rerankers on a real small LM (SmolLM2-135M): invariants, forward-pass counts, real attention."""

from __future__ import annotations

import pytest
import torch

from rag.lm.attention import attention_implementation
from rag.registry import build
from rag.rerankers import pointwise
from rag.rerankers.first import FirstReranker
from rag.rerankers.icr import ICRConfig, InContextReranker
from rag.rerankers.listwise import ListwiseReranker
from rag.rerankers.listwise_base import ListwiseConfig, sliding_windows
from rag.rerankers.lm import LMRerankerConfig, MemoryDocs
from rag.rerankers.pointwise import PointwiseReranker
from rag.types import Document, Hit

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
TEXTS = [
    "The stock market fell sharply on Monday after the announcement.",
    "Cats purr when they are content, and they meow to get attention from people.",
    "Paris is the capital and largest city of France.",
    "Kittens make high-pitched sounds to call their mother.",
    "The bridge was built in 1890 and repainted in 1990.",
    "Dogs bark at strangers; cats hiss when they are afraid.",
    "Flour, eggs and butter are mixed to make the dough.",
    "Photosynthesis turns light into chemical energy in plants.",
    "Whales communicate with long songs under water.",
]
QUERY = "What sounds do cats make?"


@pytest.fixture(scope="module")
def lm():
    from rag.lm import load_causal_lm

    torch.manual_seed(0)
    return load_causal_lm(MODEL, device="cpu")


@pytest.fixture(scope="module")
def corpus() -> tuple[list[Hit], MemoryDocs]:
    docs = [Document(f"d{i}", text, title=f"Doc {i}") for i, text in enumerate(TEXTS)]
    return [Hit(d.id, 1.0 - i / 10, i + 1, "dense") for i, d in enumerate(docs)], MemoryDocs(docs)


def check_reranked(out: list[Hit], hits: list[Hit], name: str) -> None:
    assert sorted(h.doc_id for h in out) == sorted(
        h.doc_id for h in hits
    )  # a permutation: none lost or doubled
    assert [h.rank for h in out] == list(range(1, len(hits) + 1))
    assert {h.source for h in out} == {name}
    assert [h.score for h in out] == sorted((h.score for h in out), reverse=True)


def test_first_one_pass_per_window_and_deterministic(lm, corpus):
    hits, docs = corpus
    config = ListwiseConfig(model=MODEL, window=4, stride=2, passage_tokens=48)
    reranker = FirstReranker(config, model=lm[0], tokenizer=lm[1], docstore=docs)
    out = reranker.rerank(QUERY, hits)
    check_reranked(out, hits, "first")
    assert reranker.forward_passes == len(sliding_windows(len(hits), 4, 2)) == 4
    assert reranker.rerank(QUERY, hits) == out


def test_icr_two_passes_per_query_and_deterministic(lm, corpus):
    hits, docs = corpus
    reranker = InContextReranker(
        ICRConfig(model=MODEL, passage_tokens=48), model=lm[0], tokenizer=lm[1], docstore=docs
    )
    out = reranker.rerank(QUERY, hits)
    check_reranked(out, hits, "icr")
    assert reranker.forward_passes == 2
    assert reranker.rerank(QUERY, hits) == out
    assert {h.doc_id for h in out[:3]} & {"d1", "d3", "d5"}  # the cat and kitten passages are near the top


def test_icr_attention_equals_the_models_own_attention_output(smollm2_exact, corpus):
    """The hooked, cache-reusing passes give what one full pass with ``output_attentions=True`` returns (in
    float32: the same arithmetic up to fp32 rounding)."""
    model, tokenizer = smollm2_exact
    _, docs = corpus
    config = ICRConfig(model=MODEL, passage_tokens=24, layers=(0, 5, -1), heads=(0, 2))
    reranker = InContextReranker(config, model=model, tokenizer=tokenizer)
    prompt = reranker.build_prompt(QUERY, docs.get(["d0", "d1", "d2"]))
    mass = reranker.query_attention(prompt)  # [len(prefix)]

    def direct(segment: list[int]) -> torch.Tensor:
        ids = torch.tensor([prompt.prefix + segment])
        with torch.inference_mode(), attention_implementation(model, "eager"):  # the one returning weights
            attentions = model(input_ids=ids, output_attentions=True).attentions  # layers x [1, H, seq, seq]
        n = len(prompt.prefix)
        rows = [attentions[i][0, [0, 2], n:, :n].mean(1).sum(0) for i in (0, 5, -1)]  # [n] each
        return torch.stack(rows).sum(0)

    expected = direct(prompt.query) - direct(prompt.calibration)
    torch.testing.assert_close(mass, expected, atol=2e-5, rtol=1e-4)


def test_listwise_generates_a_permutation(lm, corpus):
    hits, docs = corpus
    config = ListwiseConfig(model=MODEL, window=5, stride=4, passage_tokens=32)
    reranker = ListwiseReranker(config, model=lm[0], tokenizer=lm[1], docstore=docs)
    out = reranker.rerank(QUERY, hits[:8])
    check_reranked(out, hits[:8], "listwise")
    windows = len(sliding_windows(8, 5, 4))
    # Per window a prefill and at most one forward per token of the reply budget.
    assert windows < reranker.forward_passes <= windows * (1 + reranker.reply_budget(5))


def test_pointwise_one_pass_per_candidate(lm, corpus):
    hits, docs = corpus
    reranker = PointwiseReranker(
        LMRerankerConfig(model=MODEL, passage_tokens=48), model=lm[0], tokenizer=lm[1], docstore=docs
    )
    out = reranker.rerank(QUERY, hits, k=3)
    assert len(out) == 3 and [h.rank for h in out] == [1, 2, 3]
    assert reranker.forward_passes == -(-len(hits) // pointwise.BATCH)
    scores = reranker.score(QUERY, docs.get([h.doc_id for h in hits]))
    assert [h.score for h in out] == pytest.approx(sorted(scores, reverse=True)[:3])


def test_pointwise_batch_scores_each_passage_as_alone(corpus):
    """Left padding, its mask and per-prompt positions leave each prompt's logits as they are alone
    (float32 weights: the quantized runtime rounds a batch's bf16 logits differently)."""
    from rag.lm import load_causal_lm

    model, tokenizer = load_causal_lm(MODEL, precision="exact", attn_implementation="sdpa")
    _, docs = corpus
    reranker = PointwiseReranker(
        LMRerankerConfig(model=MODEL, passage_tokens=48), model=model, tokenizer=tokenizer, docstore=docs
    )
    passages = docs.get([f"d{i}" for i in range(len(TEXTS))])  # lengths differ: the batch is padded
    batched = reranker.score(QUERY, passages)
    alone = [reranker.score(QUERY, [doc])[0] for doc in passages]
    assert batched == pytest.approx(alone, abs=1e-3)


def test_built_by_name_from_a_config(corpus):
    hits, docs = corpus
    reranker = build("reranker", "first", {"model": MODEL, "window": 9, "stride": 9, "passage_tokens": 32})
    assert isinstance(reranker, FirstReranker) and reranker.config.window == 9
    reranker.docstore = docs
    out = reranker.rerank(QUERY, hits, k=4)
    assert len(out) == 4 and reranker.forward_passes == 1


def test_cli_rerank_prints_the_new_order(tmp_path, minilm, capsys):
    import json

    from rag.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    assert main(["index", "build", str(corpus), str(tmp_path / "coll"), "--name", "dense"]) == 0
    capsys.readouterr()
    argv = ["rerank", str(tmp_path / "coll" / "dense"), QUERY, "--reranker", "icr", "--model", MODEL]
    assert main([*argv, "-k", "3", "--fetch-k", "6", "--set", "passage_tokens=32", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["rank"] for line in lines] == [1, 2, 3] and {line["source"] for line in lines} == {"icr"}
    assert all(1 <= line["retriever_rank"] <= 6 for line in lines)
    assert main([*argv, "--set", "window=3"]) == 2  # an option ICR does not have: a usage error
    assert "unknown option" in capsys.readouterr().err
