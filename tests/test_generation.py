"""Generation: the RAG prompt, citation parsing, sampling, and the KV-cached decoding loop on SmolLM2."""

from __future__ import annotations

import pytest
import torch

from rag.errors import ConfigError, EmptyQueryError
from rag.generation import (
    CausalLMConfig,
    CausalLMGenerator,
    ChatParams,
    Drafting,
    GenerationParams,
    ParallelContexts,
    TokenLogprobs,
    build_messages,
    parse_citations,
)
from rag.generation.attribution import attribute
from rag.generation.decode.sampling import next_token, top_k_filter, top_p_filter
from rag.generation.prompt import ANSWER_REMINDER
from rag.registry import make_config
from rag.types import Document

DOCS = [
    Document("fr", "Paris is the capital and largest city of France.", title="France"),
    Document(
        "de", "Berlin is the capital of Germany. It has about 3.7 million inhabitants.", title="Germany"
    ),
    Document("jp", "Mount Fuji is the highest mountain in Japan, at 3,776 metres."),
]


# -- parse_citations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris [1].", ["fr"]),
        ("Both [2][1], again [1] and [2].", ["de", "fr"]),  # first appearance, de-duplicated
        ("Grouped [1, 3] and [2,1].", ["fr", "jp", "de"]),
        ("Spaces inside [ 3 ].", ["jp"]),
        ("Out of range [0] [4] [12], kept [3].", ["jp"]),
        ("Out of range inside a group [5, 2].", ["de"]),
        ("Ranges are not read [1-2].", []),
        ("No markers at all.", []),
        ("Not numbers [a] [] [1a].", []),
        ("", []),
    ],
)
def test_parse_citations(text: str, expected: list[str]) -> None:
    assert parse_citations(text, DOCS) == expected


def test_parse_citations_without_passages_cites_nothing() -> None:
    assert parse_citations("See [1].", []) == []


# -- build_messages --------------------------------------------------------------------------------


def test_build_messages_numbers_passages_then_asks() -> None:
    messages = build_messages("  Where is Fuji?  ", DOCS)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "[1]" in messages[0]["content"] and "cite" in messages[0]["content"].lower()
    user = messages[1]["content"]
    assert "[1] France\nParis is the capital and largest city of France." in user
    assert "[2] Germany\nBerlin" in user
    assert "[3] Mount Fuji is the highest" in user  # no title: the text follows the marker
    assert user.index("[1]") < user.index("[2]") < user.index("[3]")
    assert user.endswith(f"Question: Where is Fuji?\n\n{ANSWER_REMINDER}")
    assert build_messages("Where is Fuji?", DOCS, reminder="")[1]["content"].endswith(
        "Question: Where is Fuji?"
    )


def test_build_messages_without_passages() -> None:
    user = build_messages("Why?", [])[1]["content"]
    assert "[1]" not in user and user.endswith(f"Question: Why?\n\n{ANSWER_REMINDER}")


# -- sampling ----------------------------------------------------------------------------------------


def _peaked_logits(vocab: int = 100, peak: int = 37) -> torch.Tensor:
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(0))  # [vocab]
    logits[peak] = logits.max() + 3.0
    return logits


def test_greedy_picks_the_peak() -> None:
    assert next_token(_peaked_logits(), GenerationParams(temperature=0.0)) == 37


@pytest.mark.parametrize("temperature", [0.5, 1.0, 5.0, 100.0])
def test_top_k_one_equals_greedy_at_any_temperature(temperature: float) -> None:
    params = GenerationParams(temperature=temperature, top_k=1)
    for seed in range(20):
        assert next_token(_peaked_logits(), params, torch.Generator().manual_seed(seed)) == 37


def test_tiny_top_p_keeps_only_the_argmax() -> None:
    params = GenerationParams(temperature=10.0, top_p=1e-6)
    for seed in range(20):
        assert next_token(_peaked_logits(), params, torch.Generator().manual_seed(seed)) == 37


def test_top_k_filter_keeps_the_k_largest() -> None:
    kept = top_k_filter(torch.tensor([0.1, 2.0, -1.0, 1.5, 0.3]), 2).isfinite()
    assert kept.tolist() == [False, True, False, True, False]
    assert top_k_filter(torch.tensor([0.1, 2.0]), 0).isfinite().all()  # 0 = no cut


def test_top_p_filter_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.tensor([0.05, 0.5, 0.15, 0.3]).log()  # probabilities in vocab order
    assert top_p_filter(logits, 0.4).isfinite().tolist() == [False, True, False, False]
    assert top_p_filter(logits, 0.7).isfinite().tolist() == [False, True, False, True]
    assert top_p_filter(logits, 0.9).isfinite().tolist() == [False, True, True, True]
    assert top_p_filter(logits, 1.0).isfinite().all()


def test_seeded_sampling_is_reproducible() -> None:
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(1))  # [vocab]
    params = GenerationParams(temperature=1.0, top_p=0.95, top_k=200)

    def draws(seed: int) -> list[int]:
        rng = torch.Generator().manual_seed(seed)
        return [next_token(logits, params, rng) for _ in range(50)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def _frequencies(logits: torch.Tensor, params: GenerationParams, n: int) -> torch.Tensor:
    rng = torch.Generator().manual_seed(1234)
    counts = torch.zeros_like(logits)
    for _ in range(n):
        counts[next_token(logits, params, rng)] += 1
    return counts / n


def test_temperature_one_sampling_matches_softmax() -> None:
    logits = torch.tensor([1.0, 0.5, -0.5, 2.0])  # [vocab = 4]
    observed = _frequencies(logits, GenerationParams(temperature=1.0), 20_000)
    # Each frequency has a standard error below 0.0036 at n = 20,000; 0.015 is over 4 of them.
    torch.testing.assert_close(observed, torch.softmax(logits, dim=-1), atol=0.015, rtol=0)


def test_temperature_and_top_k_renormalise_the_kept_tokens() -> None:
    logits = torch.tensor([1.0, 0.5, -0.5, 2.0])  # [vocab = 4]
    observed = _frequencies(logits, GenerationParams(temperature=2.0, top_k=2), 20_000)
    expected = torch.softmax(torch.tensor([1.0, float("-inf"), float("-inf"), 2.0]) / 2.0, dim=-1)
    torch.testing.assert_close(observed, expected, atol=0.015, rtol=0)


def test_next_token_refuses_batched_logits() -> None:
    with pytest.raises(ValueError, match="vocab"):
        next_token(torch.zeros(2, 5), GenerationParams())


# -- CausalLMGenerator on SmolLM2 -----------------------------------------------------------------

QUESTIONS = [
    "What is the capital of France?",
    "How many people live in Berlin?",
    "How high is Mount Fuji?",
]


@pytest.fixture(scope="module")
def generator(smollm2) -> CausalLMGenerator:
    model, tokenizer = smollm2
    return CausalLMGenerator(
        CausalLMConfig(defaults=GenerationParams(max_new_tokens=16)), model=model, tokenizer=tokenizer
    )


def test_config_validates_and_gives_default_params() -> None:
    config = CausalLMConfig(
        defaults=GenerationParams(max_new_tokens=8, temperature=0.7, top_p=0.9, top_k=5, seed=1)
    )
    assert config.defaults == GenerationParams(8, 0.7, 0.9, 5, 1)
    from_json = make_config(
        CausalLMConfig, {"defaults": {"max_new_tokens": 8, "parallel": {"ape_scale": 0.5}}}
    )
    assert from_json.defaults == GenerationParams(
        8, parallel=ParallelContexts(ape_scale=0.5)
    )  # nested configs
    with pytest.raises(ConfigError, match="unknown option"):
        make_config(CausalLMConfig, {"defaults": {"max_tokens": 8}})
    with pytest.raises(ConfigError):
        CausalLMConfig(defaults=GenerationParams(top_p=0.0))
    with pytest.raises(ConfigError):
        CausalLMConfig(threads=0)


def test_registered_as_causal_lm_generator() -> None:
    from rag.registry import lookup

    assert lookup("generator", "causal-lm") == (CausalLMGenerator, CausalLMConfig)


def test_injecting_only_a_model_is_refused(smollm2) -> None:
    with pytest.raises(ConfigError, match="both"):
        CausalLMGenerator(model=smollm2[0])


@pytest.mark.slow
@pytest.mark.parametrize("question", QUESTIONS)
def test_greedy_loop_equals_transformers_generate(smollm2_exact, question: str) -> None:
    """In float32: transformers' loop attends with SDPA, ours with the grouped arithmetic (rag.lm)."""
    model, tokenizer = smollm2_exact
    generator = CausalLMGenerator(
        CausalLMConfig(defaults=GenerationParams(max_new_tokens=16)), model=model, tokenizer=tokenizer
    )
    params = GenerationParams(max_new_tokens=20)
    input_ids = generator._encode_prompt(question, DOCS, params)  # [1, prompt_len]
    ours = list(generator._answer_tokens(input_ids, params))
    with torch.inference_mode():
        reference = generator.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=sorted(generator.eos_token_ids),
            pad_token_id=generator.tokenizer.pad_token_id,
        )  # [1, prompt_len + new]
    assert ours == reference[0, input_ids.shape[1] :].tolist()


@pytest.mark.slow
def test_answer_text_citations_and_timings(generator: CausalLMGenerator) -> None:
    answer = generator.answer(QUESTIONS[0], DOCS)
    assert answer.text and answer.text == answer.text.strip()
    assert "Paris" in answer.text
    assert answer.citations == attribute(answer.text, DOCS, QUESTIONS[0]).citations == ["fr"]
    assert answer.passages == DOCS
    t = answer.timings
    assert 1 <= t.new_tokens <= 16
    assert t.prefill_s > 0 and t.decode_s > 0 and t.decode_tokens_per_s > 0


@pytest.mark.slow
def test_stream_pieces_concatenate_to_the_answer(generator: CausalLMGenerator) -> None:
    pieces = list(generator.stream(QUESTIONS[1], DOCS))
    assert len(pieces) > 1 and all(pieces)
    assert "".join(pieces).strip() == generator.answer(QUESTIONS[1], DOCS).text


def test_stream_holds_back_partial_characters(generator: CausalLMGenerator, monkeypatch) -> None:
    text = " Fuji is 富士山 🗻, café."  # byte-level BPE splits the CJK and emoji bytes across tokens
    ids = generator.tokenizer.encode(text, add_special_tokens=False)
    monkeypatch.setattr(generator, "_decode", lambda input_ids, params, *rest: iter(ids))
    pieces = list(generator.stream("Where?", DOCS))
    assert "".join(pieces) == text.lstrip()
    assert not any("\ufffd" in piece for piece in pieces)
    assert len(pieces) > 5  # still streamed, not yielded in one piece at the end


@pytest.mark.slow
def test_seeded_sampling_is_reproducible_end_to_end(generator: CausalLMGenerator) -> None:
    def sample(seed: int) -> list[int]:
        params = GenerationParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=seed)
        return list(generator._answer_tokens(generator._encode_prompt(QUESTIONS[2], DOCS, params), params))

    first = sample(11)
    assert first == sample(11)
    assert first != sample(12)


@pytest.mark.slow
def test_max_new_tokens_from_config_and_per_request(smollm2) -> None:
    model, tokenizer = smollm2
    generator = CausalLMGenerator(
        CausalLMConfig(defaults=GenerationParams(max_new_tokens=3)), model=model, tokenizer=tokenizer
    )
    assert generator.answer(QUESTIONS[0], DOCS).timings.new_tokens == 3
    assert generator.answer(QUESTIONS[0], DOCS, GenerationParams(max_new_tokens=5)).timings.new_tokens == 5


@pytest.mark.slow
def test_logits_processors_see_the_sequence_and_steer_the_pick(smollm2) -> None:
    model, tokenizer = smollm2
    forced = tokenizer.encode(" Paris", add_special_tokens=False)[0]
    seen: list[tuple[int, ...]] = []

    def force(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # [1, seq], [1, vocab]
        seen.append(tuple(input_ids.shape))
        out = torch.full_like(scores, float("-inf"))
        out[:, forced] = 0.0
        return out

    generator = CausalLMGenerator(model=model, tokenizer=tokenizer, processors=[force])
    params = GenerationParams(max_new_tokens=3)
    input_ids = generator._encode_prompt(QUESTIONS[0], DOCS, params)  # [1, prompt_len]
    assert list(generator._answer_tokens(input_ids, params)) == [forced] * 3
    n = input_ids.shape[1]
    assert seen == [(1, n), (1, n + 1), (1, n + 2)]


def test_empty_question_is_refused(generator: CausalLMGenerator) -> None:
    with pytest.raises(EmptyQueryError):
        generator.answer("   ", DOCS)
    with pytest.raises(EmptyQueryError):
        generator.stream("", DOCS)


def test_prompt_longer_than_the_context_is_refused(generator: CausalLMGenerator) -> None:
    limit = generator.model.config.max_position_embeddings
    huge = [Document("big", "word " * limit)]
    with pytest.raises(ConfigError, match="context"):
        generator.answer("What is this?", huge)


def test_chat_params_take_the_sampling_and_one_kind_of_step() -> None:
    defaults = GenerationParams(max_new_tokens=9, temperature=0.5, drafting=Drafting(4), keep_passages=3)
    assert ChatParams.like(defaults) == ChatParams(max_new_tokens=9, temperature=0.5, steps=Drafting(4))
    asked = ChatParams.like(defaults, TokenLogprobs(2))  # logprobs need one forward per token
    assert asked.logprobs == TokenLogprobs(2) and asked.drafting is None and asked.temperature == 0.5
    with pytest.raises(ConfigError, match="top logprobs"):
        TokenLogprobs(-1)


def test_chat_reply_is_the_same_drafted_or_with_logprobs(generator: CausalLMGenerator) -> None:
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    plain = generator.chat(messages, ChatParams(max_new_tokens=12)).read_to_end()
    drafted = generator.chat(messages, ChatParams(max_new_tokens=12, steps=Drafting())).read_to_end()
    scored = generator.chat(messages, ChatParams(max_new_tokens=12, steps=TokenLogprobs(3))).read_to_end()
    assert plain.text and drafted.text == plain.text == scored.text  # greedy, token for token
    assert plain.logprobs is None and scored.logprobs is not None
    assert len(scored.logprobs) == scored.timings.new_tokens
    assert all(len(t.top) == 3 and t.logprob <= 0 for t in scored.logprobs)
