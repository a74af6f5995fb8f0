"""Each reranker orders candidates as intended, shown with a fake LM whose logits and attention are crafted.

The fake computes its outputs from the token history (kept in a real ``DynamicCache``), with the real
SmolLM2 tokenizer, so prompts, identifiers and passage spans are the ones a real model would see.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, DynamicCache, LlamaConfig

from rag.errors import ConfigError, EmptyQueryError
from rag.models import resolve_model
from rag.rerankers.first import FirstReranker
from rag.rerankers.icr import ICRConfig, InContextReranker
from rag.rerankers.listwise import ListwiseReranker
from rag.rerankers.listwise_base import ListwiseConfig
from rag.rerankers.lm import LMRerankerConfig, MemoryDocs
from rag.rerankers.pointwise import PointwiseReranker
from rag.types import Document, Hit

# -- a fake causal LM -------------------------------------------------------------------------------------

LogitsFn = Callable[[list[int], int], torch.Tensor]  # (history, prompt length) -> next-token logits [vocab]
AttentionFn = Callable[[list[int], int], torch.Tensor]  # (history, new tokens) -> weights [heads, new, seq]


class FakeAttention(torch.nn.Module):
    """Returns weights like eager attention, and none under any other implementation (as SDPA does)."""

    def __init__(self, attention_fn: AttentionFn | None, config: LlamaConfig) -> None:
        super().__init__()
        self.attention_fn = attention_fn
        self.config = config

    def forward(self, histories: list[list[int]], new: int) -> tuple[None, torch.Tensor | None]:
        if self.attention_fn is None or self.config._attn_implementation != "eager":
            return None, None
        return None, torch.stack([self.attention_fn(h, new) for h in histories])  # [batch, heads, new, seq]


class FakeLM(torch.nn.Module):
    """Outputs computed from the whole token history; the ids are stored as 1-d keys in the cache."""

    def __init__(
        self,
        vocab_size: int,
        logits_fn: LogitsFn | None = None,
        attention_fn: AttentionFn | None = None,
        attn_implementation: str = "eager",
    ) -> None:
        super().__init__()
        self.config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=100_000,
        )
        self.config._attn_implementation = attn_implementation
        self.generation_config = SimpleNamespace(eos_token_id=None)
        self.logits_fn = logits_fn
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleDict({"self_attn": FakeAttention(attention_fn, self.config)}) for _ in range(2)
        )
        self.calls = 0
        self.implementations: list[str] = []  # the attention implementation of each call
        self.prompt_len = 0

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def get_decoder(self) -> FakeLM:
        return self

    def forward(self, input_ids: torch.Tensor, cache=None, **_: object) -> SimpleNamespace:
        self.calls += 1
        self.implementations.append(self.config._attn_implementation)
        new = input_ids.shape[1]
        histories = input_ids.tolist()  # one token list per batch row
        if cache is None or cache.get_seq_length() == 0:
            self.prompt_len = new
        if cache is not None:
            ids = input_ids.float()[:, None, :, None]  # [batch, 1, new, 1]
            for layer in range(len(self.layers)):
                keys, _ = cache.update(ids, ids, layer)  # [batch, 1, seq, 1]
            histories = keys[:, 0, :, 0].long().tolist()
        for layer in self.layers:
            layer["self_attn"](histories, new)
        logits = torch.stack(
            [
                self.logits_fn(history, self.prompt_len)
                if self.logits_fn
                else torch.zeros(self.config.vocab_size)
                for history in histories
            ]
        )
        return SimpleNamespace(logits=logits[:, None, :])  # [batch, 1, vocab]


# -- fixtures ---------------------------------------------------------------------------------------------

_RELEVANCE = re.compile(r"^\[(\w+)\] .*?relevance (\d+)", re.MULTILINE)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


def make_docs(relevance: list[int]) -> tuple[list[Hit], MemoryDocs]:
    """Documents whose text states a hidden relevance, as hits in input order."""
    docs = [Document(f"d{i}", f"passage {i} with relevance {r}") for i, r in enumerate(relevance)]
    hits = [Hit(d.id, 1.0 / (i + 1), i + 1, "dense") for i, d in enumerate(docs)]
    return hits, MemoryDocs(docs)


def best_first(relevance: list[int]) -> list[str]:
    return [f"d{i}" for i in sorted(range(len(relevance)), key=lambda i: -relevance[i])]


def labelled_relevance(tokenizer, history: list[int], prompt_len: int) -> dict[str, int]:
    """Identifier -> relevance, read from the "[id] passage ... relevance N" lines of the prompt."""
    return {label: int(r) for label, r in _RELEVANCE.findall(tokenizer.decode(history[:prompt_len]))}


# -- FIRST ------------------------------------------------------------------------------------------------


def first_logits(tokenizer) -> LogitsFn:
    """Puts each passage's relevance on its identifier's token (the letter after the forced "[")."""

    def logits(history: list[int], prompt_len: int) -> torch.Tensor:
        assert tokenizer.decode(history[-1:]) == "["  # the reply is opened for the identifier
        out = torch.full((len(tokenizer),), -100.0)
        for label, relevance in labelled_relevance(tokenizer, history, prompt_len).items():
            out[tokenizer(label, add_special_tokens=False).input_ids[0]] = float(relevance)
        return out

    return logits


def test_first_orders_by_identifier_logits_over_sliding_windows(tokenizer):
    relevance = random.Random(4).sample(range(100), 25)
    hits, docs = make_docs(relevance)
    model = FakeLM(len(tokenizer), first_logits(tokenizer))
    config = ListwiseConfig(window=10, stride=5)
    reranker = FirstReranker(config, model=model, tokenizer=tokenizer, docstore=docs)
    out = reranker.rerank("which passage?", hits)
    assert model.calls == reranker.forward_passes == 4  # windows (15,25) (10,20) (5,15) (0,10)
    # One back-to-front sweep with a perfect judge sorts the top window - stride = 5 exactly.
    assert [h.doc_id for h in out[:5]] == best_first(relevance)[:5]
    assert sorted(h.doc_id for h in out) == sorted(h.doc_id for h in hits)
    assert [h.rank for h in out] == list(range(1, 26)) and {h.source for h in out} == {"first"}


def test_first_one_window_sorts_completely(tokenizer):
    relevance = [3, 9, 1, 7, 5, 8]
    hits, docs = make_docs(relevance)
    reranker = FirstReranker(
        ListwiseConfig(window=10, stride=5),
        model=FakeLM(len(tokenizer), first_logits(tokenizer)),
        tokenizer=tokenizer,
        docstore=docs,
    )
    out = reranker.rerank("q", hits, k=4)
    assert [h.doc_id for h in out] == best_first(relevance)[:4]
    assert reranker.forward_passes == 1


class SplitLetters:
    """A tokenizer wrapper that encodes every single letter as two tokens."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, text: str, **kwargs):
        ids = self._tokenizer(text, **kwargs).input_ids
        return SimpleNamespace(input_ids=[*ids, 0] if text.strip("[").isalpha() and len(text) <= 2 else ids)


def test_first_refuses_identifiers_that_are_not_single_tokens(tokenizer):
    hits, docs = make_docs([1, 2, 3])
    reranker = FirstReranker(
        ListwiseConfig(window=4, stride=2),
        model=FakeLM(len(tokenizer)),
        tokenizer=SplitLetters(tokenizer),
        docstore=docs,
    )
    with pytest.raises(ConfigError, match="single-token identifiers"):
        reranker.rerank("q", hits)


def test_first_window_larger_than_the_alphabet_is_refused(tokenizer):
    hits, docs = make_docs([1, 2, 3])
    reranker = FirstReranker(
        ListwiseConfig(window=27, stride=5), model=FakeLM(len(tokenizer)), tokenizer=tokenizer, docstore=docs
    )
    with pytest.raises(ConfigError, match="at most 26"):
        reranker.rerank("q", hits)


# -- listwise generation ----------------------------------------------------------------------------------


def writer(tokenizer, reply: Callable[[dict[str, int]], str]) -> LogitsFn:
    """Greedily "generates" ``reply(relevance by identifier)`` token by token, then end of sequence."""

    def logits(history: list[int], prompt_len: int) -> torch.Tensor:
        reply_ids = tokenizer(
            reply(labelled_relevance(tokenizer, history, prompt_len)), add_special_tokens=False
        )
        target = [*reply_ids.input_ids, tokenizer.eos_token_id]
        out = torch.zeros(len(tokenizer))
        out[target[min(len(history) - prompt_len, len(target) - 1)]] = 1.0
        return out

    return logits


def sorted_reply(relevance: dict[str, int]) -> str:
    return " > ".join(f"[{label}]" for label in sorted(relevance, key=lambda label: -relevance[label]))


def test_listwise_applies_the_generated_permutation_in_each_window(tokenizer):
    relevance = random.Random(7).sample(range(100), 25)
    hits, docs = make_docs(relevance)
    model = FakeLM(len(tokenizer), writer(tokenizer, sorted_reply))
    reranker = ListwiseReranker(
        ListwiseConfig(window=10, stride=5), model=model, tokenizer=tokenizer, docstore=docs
    )
    out = reranker.rerank("which passage?", hits)
    assert [h.doc_id for h in out[:5]] == best_first(relevance)[:5]
    assert sorted(h.doc_id for h in out) == sorted(h.doc_id for h in hits)
    assert [h.score for h in out] == sorted((h.score for h in out), reverse=True)
    # Four windows, each a prefill plus one forward per generated token (the reply and its end).
    assert reranker.forward_passes == model.calls > 4 * 10


def test_listwise_repairs_a_malformed_reply(tokenizer):
    hits, docs = make_docs([5, 6, 7, 8])
    model = FakeLM(len(tokenizer), writer(tokenizer, lambda _: "Sure! [3] > [3] > [9] > [1] and that's all"))
    reranker = ListwiseReranker(
        ListwiseConfig(window=4, stride=2), model=model, tokenizer=tokenizer, docstore=docs
    )
    assert [h.doc_id for h in reranker.rerank("q", hits)] == ["d2", "d0", "d1", "d3"]


# -- pointwise --------------------------------------------------------------------------------------------


def test_pointwise_scores_are_yes_minus_no_log_probabilities(tokenizer):
    relevance = [2, 11, 5, 0, 7, 3, 9, 1, 4, 10]  # more than one batch
    hits, docs = make_docs(relevance)
    yes = tokenizer("Yes", add_special_tokens=False).input_ids[0]

    def logits(history: list[int], prompt_len: int) -> torch.Tensor:
        out = torch.zeros(len(tokenizer))
        out[yes] = float(re.search(r"relevance (\d+)", tokenizer.decode(history)).group(1))
        return out

    model = FakeLM(len(tokenizer), logits)
    reranker = PointwiseReranker(LMRerankerConfig(), model=model, tokenizer=tokenizer, docstore=docs)
    out = reranker.rerank("q", hits)
    assert [h.doc_id for h in out] == best_first(relevance)
    assert [h.score for h in out] == pytest.approx(
        sorted(relevance, reverse=True), abs=1e-4
    )  # log P(no) = 0 - lse
    assert model.calls == reranker.forward_passes == 2  # batches of 8 and 2 passages


# -- in-context reranking ---------------------------------------------------------------------------------


def lexical_attention(tokenizer, biased_word: str, bias: float = 100.0) -> AttentionFn:
    """Causal attention in which each token attends 20x more to earlier copies of itself, and every token
    attends strongly to ``biased_word`` whatever the query (a content-independent bias)."""
    biased = torch.tensor(tokenizer(f" {biased_word}", add_special_tokens=False).input_ids)

    def attention(history: list[int], new: int) -> torch.Tensor:
        keys = torch.tensor(history)  # [seq]
        rows = torch.arange(len(history) - new, len(history))  # positions of the new tokens
        weight = 1.0 + 20.0 * (keys[None, :] == keys[rows][:, None]).float()  # [new, seq]
        weight += bias * torch.isin(keys, biased).float()
        weight *= (torch.arange(len(history))[None, :] < rows[:, None]).float()  # earlier tokens only
        weight /= weight.sum(-1, keepdim=True).clamp_min(1e-9)
        return torch.stack([weight, weight])  # [heads=2, new, seq]

    return attention


def icr_docs() -> tuple[list[Hit], MemoryDocs]:
    texts = [
        "apples grow on trees",
        "everyone loves a famous celebrity",
        "zebras have black and white stripes",
        "rivers flow into seas",
        "zebra stripes confuse biting flies",
        "music has rhythm",
    ]
    docs = [Document(f"d{i}", t) for i, t in enumerate(texts)]
    return [Hit(d.id, 1.0, i + 1, "bm25") for i, d in enumerate(docs)], MemoryDocs(docs)


def test_icr_ranks_by_calibrated_query_attention(tokenizer):
    hits, docs = icr_docs()
    model = FakeLM(len(tokenizer), attention_fn=lexical_attention(tokenizer, "celebrity"))
    reranker = InContextReranker(ICRConfig(), model=model, tokenizer=tokenizer, docstore=docs)
    query = "why do zebras have stripes"
    out = reranker.rerank(query, hits)
    assert model.calls == reranker.forward_passes == 2
    assert model.implementations == ["sdpa", "eager"]  # passages prefilled with SDPA; query rows eager
    assert [h.doc_id for h in out[:2]] == ["d2", "d4"]  # the two passages about zebra stripes
    assert out[-1].doc_id == "d1"  # calibration turns the bias into a negative score
    # Without calibration the bias toward "celebrity" wins: the raw attention of the query ranks d1 first.
    prompt = reranker.build_prompt(query, docs.get([h.doc_id for h in hits]))
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([prompt.prefix]), cache=cache)
    with reranker._attention_rows([len(prompt.query)], len(prompt.prefix)) as raw:
        model(input_ids=torch.tensor([prompt.query]), cache=cache)
    raw_scores = [float(raw[0][0, a:b].sum()) for a, b in prompt.spans]
    assert max(range(6), key=raw_scores.__getitem__) == 1


def test_icr_spans_cover_exactly_each_passage(tokenizer):
    _, docs = icr_docs()
    reranker = InContextReranker(ICRConfig(), model=FakeLM(len(tokenizer)), tokenizer=tokenizer)
    documents = docs.get([f"d{i}" for i in range(6)])
    prompt = reranker.build_prompt("query", documents)
    for number, ((a, b), doc) in enumerate(zip(prompt.spans, documents, strict=True), start=1):
        assert tokenizer.decode(prompt.prefix[a:b]) == f"[{number}] {doc.text}"


def test_icr_chunks_long_lists_two_passes_each(tokenizer):
    hits, docs = icr_docs()
    model = FakeLM(len(tokenizer), attention_fn=lexical_attention(tokenizer, "celebrity", bias=0.0))
    reranker = InContextReranker(
        ICRConfig(docs_per_prompt=4), model=model, tokenizer=tokenizer, docstore=docs
    )
    out = reranker.rerank("why do zebras have stripes", hits, k=3)
    assert model.calls == 4  # chunks of 4 and 2 passages
    assert [h.doc_id for h in out[:2]] in (["d2", "d4"], ["d4", "d2"]) and len(out) == 3


def test_icr_reads_only_the_chosen_heads(tokenizer):
    hits, docs = icr_docs()
    documents = docs.get([h.doc_id for h in hits])

    def attention(history: list[int], new: int) -> torch.Tensor:
        """In the real query's row head 0 looks at passage 1 and head 1 at passage 6; else uniform."""
        weights = torch.full((2, new, len(history)), 1.0)
        start = len(history) - new
        if history[start : start + len(prompt.query)] == prompt.query:  # the real query's row
            for head, (a, b) in ((0, prompt.spans[0]), (1, prompt.spans[5])):
                weights[head, :, a:b] += 50.0
        return weights / weights.sum(-1, keepdim=True)  # [heads, new, seq]

    model = FakeLM(len(tokenizer), attention_fn=attention)
    prompt = InContextReranker(ICRConfig(), model=model, tokenizer=tokenizer).build_prompt("q", documents)
    for heads, best in (([0], "d0"), ([1], "d5")):
        config = ICRConfig(heads=heads, layers=[-1])
        assert config.layers == (-1,) and config.heads == tuple(heads)
        reranker = InContextReranker(config, model=model, tokenizer=tokenizer, docstore=docs)
        assert reranker.rerank("q", hits)[0].doc_id == best
    with pytest.raises(ConfigError, match="out of range"):
        InContextReranker(ICRConfig(layers=(5,)), model=model, tokenizer=tokenizer, docstore=docs).rerank(
            "q", hits
        )


def test_icr_works_on_a_model_loaded_with_sdpa_and_restores_its_setting(tokenizer):
    hits, docs = icr_docs()
    model = FakeLM(
        len(tokenizer), attention_fn=lexical_attention(tokenizer, "celebrity"), attn_implementation="sdpa"
    )
    out = InContextReranker(ICRConfig(), model=model, tokenizer=tokenizer, docstore=docs).rerank(
        "why do zebras have stripes", hits
    )
    assert [h.doc_id for h in out[:2]] == ["d2", "d4"]
    assert model.implementations == ["sdpa", "eager"]
    assert model.config._attn_implementation == "sdpa"


def test_icr_refuses_a_model_whose_eager_attention_returns_no_weights(tokenizer):
    hits, docs = icr_docs()
    model = FakeLM(len(tokenizer))  # no attention function: its attention modules return no weights
    reranker = InContextReranker(ICRConfig(), model=model, tokenizer=tokenizer, docstore=docs)
    with pytest.raises(ConfigError, match="attention weights"):
        reranker.rerank("q", hits)
    assert model.config._attn_implementation == "eager"  # restored after the failure


# -- the shared contract ----------------------------------------------------------------------------------


def test_empty_inputs_and_missing_docstore(tokenizer):
    hits, docs = make_docs([1, 2])
    reranker = PointwiseReranker(LMRerankerConfig(), model=FakeLM(len(tokenizer)), tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="docstore"):
        reranker.rerank("q", hits)
    reranker.docstore = docs
    assert reranker.rerank("q", []) == []
    with pytest.raises(EmptyQueryError):
        reranker.rerank("  ", hits)
    with pytest.raises(ConfigError, match="k must"):
        reranker.rerank("q", hits, k=0)


def test_passages_are_cut_to_the_token_budget(tokenizer):
    reranker = PointwiseReranker(
        LMRerankerConfig(passage_tokens=10), model=FakeLM(len(tokenizer)), tokenizer=tokenizer
    )
    text = reranker.passage_text(Document("x", "word " * 200, title="Title"))
    assert len(tokenizer(text, add_special_tokens=False).input_ids) <= 10 and text.startswith("Title word")


def test_a_window_too_large_for_the_context_is_a_config_error(tokenizer):
    hits, docs = make_docs(list(range(20)))
    config = ListwiseConfig(window=20, stride=10, max_prompt_tokens=256)
    reranker = FirstReranker(
        config, model=FakeLM(len(tokenizer), first_logits(tokenizer)), tokenizer=tokenizer, docstore=docs
    )
    with pytest.raises(ConfigError, match="do not fit"):
        reranker.rerank("q", hits)


def test_registered_by_name():
    from rag.registry import lookup, names

    assert {"listwise", "first", "icr", "pointwise"} <= set(names("reranker"))
    assert lookup("reranker", "icr") == (InContextReranker, ICRConfig)


def test_rerank_run_reorders_the_head_and_keeps_the_tail_below(tokenizer):
    from rag.rerankers.run import rerank_run

    relevance = [1, 9, 5, 8, 7]
    hits, docs = make_docs(relevance)
    yes = tokenizer("Yes", add_special_tokens=False).input_ids[0]

    def logits(history: list[int], prompt_len: int) -> torch.Tensor:
        out = torch.zeros(len(tokenizer))
        out[yes] = float(re.search(r"relevance (\d+)", tokenizer.decode(history)).group(1))
        return out

    reranker = PointwiseReranker(
        LMRerankerConfig(), model=FakeLM(len(tokenizer), logits), tokenizer=tokenizer
    )
    out = rerank_run(reranker, {"q1": hits}, {"q1": "which?"}, docs, depth=3, progress=False)["q1"]
    assert reranker.docstore is docs
    assert [h.doc_id for h in out] == ["d1", "d2", "d0", "d3", "d4"]  # d3, d4 stay below the reranked head
    assert [h.rank for h in out] == [1, 2, 3, 4, 5]
    assert [h.score for h in out] == sorted((h.score for h in out), reverse=True)
