"""Retrieval-augmented speculative drafting: the n-gram drafter, the token tree, the acceptance rule, and
the property that drafting changes nothing but speed (greedy token for token, sampling in distribution)."""

from __future__ import annotations

import doctest
import itertools
from dataclasses import replace

import pytest
import torch
from scipy.stats import chisquare

import rag.generation.decode.cad
import rag.generation.decode.kv_batch
import rag.generation.decode.token_tree
import rag.generation.drafting.retrieval
from rag.errors import ConfigError
from rag.generation import CausalLMConfig, CausalLMGenerator, ContextAwareDecoding, Drafting, GenerationParams
from rag.generation.base import DecodeStats
from rag.generation.decode.kv_batch import KVBatch
from rag.generation.decode.sampling import target_probs
from rag.generation.decode.speculative import choose, speculative_decode
from rag.generation.decode.token_tree import TokenTree
from rag.generation.drafting.retrieval import RetrievalDrafter
from rag.lm.llama_cpp_decoder import llama_cpp_available
from rag.types import Document


@pytest.mark.parametrize(
    "module",
    [
        rag.generation.drafting.retrieval,
        rag.generation.decode.token_tree,
        rag.generation.decode.kv_batch,
        rag.generation.decode.cad,
    ],
)
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# -- the drafter --------------------------------------------------------------------------------------


def unscaled(**options: int) -> RetrievalDrafter:
    """A drafter whose drafts run ``max_tokens`` whatever their match (``match_scaled=False``)."""
    return RetrievalDrafter(match_scaled=False, **options)


def test_drafter_prefers_the_longest_match() -> None:
    context = [1, 2, 3, 9, 9, 5, 3, 7, 7, 1, 2, 3]  # ends in [1, 2, 3], seen at 0; [3] also at 6
    drafts = unscaled(max_ngram=3, branches=2).propose(context, max_tokens=2)
    assert drafts == [[9, 9], [7, 7]]  # the 3-gram match first, then the 1-gram match at 6


def test_drafter_takes_the_most_recent_occurrence_first() -> None:
    context = [7, 1, 7, 2, 8, 7, 3, 7]  # the last 7 follows 7s at 0, 2 and 5
    assert unscaled(max_ngram=1, branches=3).propose(context, 1) == [[3], [2], [1]]
    assert unscaled(max_ngram=1).propose(context, 2) == [[3, 7]]


def test_drafter_dedupes_caps_and_never_matches_the_suffix_itself() -> None:
    context = [4, 5, 6, 4, 5, 6, 4]
    assert unscaled(max_ngram=1, branches=5).propose(context, 3) == [[5, 6, 4]]  # at 0 and 3: same
    assert unscaled(branches=5).propose([1, 2, 3], 4) == []  # 3 occurs only at the end
    assert unscaled().propose([7, 7], 4) == [[7]]  # the continuation stops at the end
    assert unscaled().propose([1, 2, 1], 0) == []
    assert len(unscaled(max_ngram=1, branches=2).propose([1, 2, 1, 3, 1, 4, 1], 1)) == 2


def test_drafter_min_ngram_skips_short_matches() -> None:
    assert unscaled(max_ngram=3, min_ngram=2).propose([1, 2, 5, 6, 2], 2) == []
    assert unscaled(max_ngram=3, min_ngram=2).propose([1, 2, 5, 1, 2], 2) == [[5, 1]]


def test_scaled_drafts_are_at_most_twice_their_match_less_one() -> None:
    #          0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15
    context = [4, 1, 2, 3, 5, 6, 7, 8, 9, 9, 9, 9, 9, 1, 2, 3]  # [1, 2, 3] at 1; [4, 1, 2, 3] does not recur
    assert RetrievalDrafter().propose(context, max_tokens=10) == [[5, 6, 7, 8, 9]]  # L = 3: 5 tokens
    assert RetrievalDrafter().propose(context, max_tokens=4) == [[5, 6, 7, 8]]  # capped by max_tokens
    # the match is counted back past the 3-gram: both copies follow a 0, so L = 4 and 7 tokens may follow
    assert RetrievalDrafter().propose([0, *context[1:12], 0, 1, 2, 3], 10) == [[5, 6, 7, 8, 9, 9, 9]]
    # each branch by its own match: [3] at 9 (L = 1) drafts 1 token, [2, 3] at 1 (L = 2) drafts 3
    other = [7, 2, 3, 5, 6, 7, 8, 1, 4, 3, 8, 8, 2, 3]
    assert RetrievalDrafter(branches=2).propose(other, max_tokens=8) == [[5, 6, 7], [8]]


def test_drafter_and_params_validate() -> None:
    with pytest.raises(ConfigError):
        RetrievalDrafter(max_ngram=1, min_ngram=2)
    with pytest.raises(ConfigError):
        RetrievalDrafter(branches=0)
    with pytest.raises(ConfigError):
        GenerationParams(drafting=Drafting(-1))
    with pytest.raises(ConfigError):
        CausalLMConfig(draft_min_ngram=0)


def test_token_tree_merges_shared_prefixes() -> None:
    tree = TokenTree.build(0, [[1, 2], [1, 3], [4], [1, 2, 5]])
    assert tree.tokens == [0, 1, 2, 3, 4, 5]
    assert tree.parents == [-1, 0, 1, 1, 0, 2]
    assert tree.children == [[1, 4], [2, 3], [5], [], [], []]
    assert len(TokenTree.build(7, [])) == 1


# -- the acceptance rule -------------------------------------------------------------------------------


def test_greedy_choice_accepts_only_the_argmax() -> None:
    scores = torch.tensor([0.1, 2.0, 0.5, -1.0])
    greedy = GenerationParams()
    assert choose(scores, [2, 1], greedy) == (1, 1)
    assert choose(scores, [2, 3], greedy) == (1, None)
    assert choose(scores, [], greedy) == (1, None)


@pytest.mark.parametrize("drafts", [[], [0], [1, 0], [3, 2, 1]])
@pytest.mark.parametrize(
    "params",
    [GenerationParams(temperature=1.0), GenerationParams(temperature=0.7, top_k=3, top_p=0.9)],
)
def test_sampled_choice_keeps_the_target_distribution(drafts: list[int], params: GenerationParams) -> None:
    scores = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()  # [vocab = 4]
    expected = target_probs(scores, params)
    rng = torch.Generator().manual_seed(7)
    n = 10_000
    counts = torch.zeros(4)
    accepted = 0
    for _ in range(n):
        token, index = choose(scores, drafts, params, rng)
        counts[token] += 1
        accepted += index is not None
        assert index is None or drafts[index] == token
    # Each frequency has a standard error below 0.005 at n = 10,000; 0.02 is 4 of them.
    torch.testing.assert_close(counts / n, expected, atol=0.02, rtol=0)
    drafted_mass = float(expected[drafts].sum()) if drafts else 0.0
    assert abs(accepted / n - drafted_mass) < 0.02  # a drafted token is accepted whenever it is the outcome


# -- the loop on a tiny random model with a 4-token vocabulary -------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=4,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # peakier next-token distributions than random init gives
    return model


class FixedDrafter:
    """Always the same drafts: a tree with shared prefixes and several branches."""

    def __init__(self, drafts: list[list[int]]) -> None:
        self.drafts = drafts

    def propose(self, context, max_tokens: int) -> list[list[int]]:
        return [d[:max_tokens] for d in self.drafts]


class RandomDrafter:
    def __init__(self, seed: int) -> None:
        self.rng = torch.Generator().manual_seed(seed)

    def propose(self, context, max_tokens: int) -> list[list[int]]:
        length = min(max_tokens, 5)
        return [torch.randint(4, (length,), generator=self.rng).tolist() for _ in range(3)]


def _run(model, prompt: list[int], params: GenerationParams, drafter=None, rng=None, stats=None) -> list[int]:
    batch = KVBatch(model, [torch.tensor(prompt)])

    def score(generated: list[int], logits: torch.Tensor) -> torch.Tensor:  # [rows, vocab] -> [vocab]
        return logits[0]

    with torch.inference_mode():
        if drafter is None:  # plain decoding through the same batch class
            out: list[int] = []
            logits = batch.prefill()
            while len(out) < params.max_new_tokens:
                if params.temperature == 0:
                    out.append(int(logits[0].argmax()))
                else:
                    out.append(int(torch.multinomial(target_probs(logits[0], params), 1, generator=rng)))
                logits = batch.extend([out[-1]])[:, -1]
            return out
        assert params.drafting is not None
        return list(
            speculative_decode(batch, score, drafter, prompt, params, params.drafting, (), rng, stats)
        )


def test_greedy_drafting_equals_plain_greedy_on_many_random_prompts(tiny_lm) -> None:
    params = GenerationParams(max_new_tokens=12, drafting=Drafting(5))
    gen = torch.Generator().manual_seed(1)
    stats = DecodeStats()
    for case in range(60):
        prompt = torch.randint(4, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen).tolist()
        plain = _run(tiny_lm, prompt, GenerationParams(max_new_tokens=12))
        assert _run(tiny_lm, prompt, params, RandomDrafter(case), stats=stats) == plain, prompt
        assert _run(tiny_lm, prompt, params, RetrievalDrafter(), stats=stats) == plain, prompt
    assert stats.accepted_tokens > 0 and stats.decode_steps < 2 * 60 * 11  # drafts were accepted


def test_sampled_drafting_keeps_the_sequence_distribution(tiny_lm) -> None:
    """Three sampled tokens (64 outcomes) from the tree loop against their exact probabilities."""
    prompt = [1, 3, 0]
    params = GenerationParams(max_new_tokens=3, temperature=1.0, drafting=Drafting(2))
    with torch.inference_mode():
        exact = {}
        for seq in itertools.product(range(4), repeat=3):
            ids = torch.tensor([prompt + list(seq)])
            probs = tiny_lm(ids).logits[0, len(prompt) - 1 : -1].float().softmax(-1)  # [3, vocab]
            exact[seq] = float(probs[0, seq[0]] * probs[1, seq[1]] * probs[2, seq[2]])
    drafter = FixedDrafter([[0, 1], [0, 2], [3], [1, 1]])
    rng = torch.Generator().manual_seed(3)
    n = 2500
    counts = dict.fromkeys(exact, 0)
    stats = DecodeStats()
    for _ in range(n):
        counts[tuple(_run(tiny_lm, prompt, params, drafter, rng, stats))] += 1
    assert stats.accepted_tokens > n // 4  # the tree was used, not bypassed
    # Chi-square over the outcomes expected at least 5 times, the rarer ones pooled into one cell.
    total = sum(exact.values())
    common = [s for s in exact if exact[s] / total * n >= 5]
    observed = [counts[s] for s in common]
    expected = [exact[s] / total * n for s in common]
    rare_observed, rare_expected = n - sum(observed), n - sum(expected)
    if rare_expected >= 5:
        observed.append(rare_observed)
        expected.append(rare_expected)
    else:  # too rare for a cell of their own: pooled with the last common outcome
        observed[-1] += rare_observed
        expected[-1] += rare_expected
    assert len(common) >= 8
    assert chisquare(observed, expected).pvalue > 1e-3


# -- on SmolLM2 with real passages ---------------------------------------------------------------------

PASSAGES = [
    Document(
        "eiffel",
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
        "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.",
        title="Eiffel Tower",
    ),
    Document(
        "fuji",
        "Mount Fuji is the highest mountain in Japan, at 3,776 metres. It is an active stratovolcano that "
        "last erupted from 1707 to 1708.",
        title="Mount Fuji",
    ),
    Document(
        "nile",
        "The Nile is a major north-flowing river in northeastern Africa. It flows into the Mediterranean Sea "
        "and is about 6,650 km long.",
        title="Nile",
    ),
]
COPYING = [
    "Who designed the Eiffel Tower? Quote the passage.",
    "When was the Eiffel Tower built?",
    "Where is the Eiffel Tower?",
    "How high is Mount Fuji? Answer with the exact sentence.",
    "When did Mount Fuji last erupt?",
    "How long is the Nile?",
    "Into which sea does the Nile flow?",
    "Repeat the passage about the Nile word for word.",
    "What is Mount Fuji?",
    "What is the Eiffel Tower made of?",
    "Which company built the Eiffel Tower?",
    "Quote what the passages say about Japan.",
]
NOT_COPYING = [
    "Write a haiku about autumn.",
    "What is 17 plus 25?",
    "Name three colours.",
    "Translate 'good morning' into French.",
    "Why is the sky blue?",
    "Count from one to ten.",
    "What is your favourite animal?",
    "Say hello in German.",
]


# the decoders the SmolLM2 tests run on: llama.cpp's (rag.lm.llama_cpp_decoder) where llama-cpp-python is
# installed (the bench extra); SmolLM2's file is one it scores a draft tree for bit for bit as one-token steps
DECODERS = [
    "torch",
    pytest.param(
        "llama.cpp",
        marks=pytest.mark.skipif(not llama_cpp_available(), reason="needs the bench extra (make bench)"),
    ),
]


@pytest.fixture(scope="module", params=DECODERS)
def generator(request):
    from rag.lm import load_causal_lm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tokenizer = load_causal_lm("smollm2-135m-instruct", device="cpu", decoder=request.param)
    yield CausalLMGenerator(
        CausalLMConfig(defaults=GenerationParams(max_new_tokens=24)), model=model, tokenizer=tokenizer
    )
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_greedy_drafting_equals_plain_greedy_on_smollm2(generator: CausalLMGenerator) -> None:
    plain_params = GenerationParams(max_new_tokens=24)
    draft_params = GenerationParams(max_new_tokens=24, drafting=Drafting(6))
    steps = tokens = 0
    for question in COPYING + NOT_COPYING:
        ids = generator._encode_prompt(question, PASSAGES, plain_params)
        plain = list(generator._answer_tokens(ids, plain_params))
        stats = DecodeStats()
        assert list(generator._answer_tokens(ids, draft_params, None, stats)) == plain, question
        steps += stats.decode_steps
        tokens += len(plain) - 1
    assert tokens / steps > 1.5  # mean tokens per verification step over the 20 prompts


@pytest.mark.slow
def test_min_new_tokens_holds_back_the_end_in_every_mode(generator: CausalLMGenerator) -> None:
    """A short answer is made to go on past its end; drafting still gives the plain greedy tokens."""
    question = "Into which sea does the Nile flow?"  # SmolLM2 answers it in 33 tokens
    ids = generator._encode_prompt(question, PASSAGES, GenerationParams())
    free = list(generator._answer_tokens(ids, GenerationParams(max_new_tokens=60)))
    assert free[-1] in generator.eos_token_ids and len(free) < 50  # it ends early by itself
    least = len(free) + 10
    held = GenerationParams(max_new_tokens=80, min_new_tokens=least)
    plain = list(generator._answer_tokens(ids, held))
    assert len(plain) >= least and plain[: len(free) - 1] == free[:-1]
    assert not set(plain[: least - 1]) & generator.eos_token_ids
    assert list(generator._answer_tokens(ids, replace(held, drafting=Drafting(6)))) == plain
    with pytest.raises(ConfigError, match="min_new_tokens"):
        GenerationParams(max_new_tokens=8, min_new_tokens=9)


@pytest.mark.slow
def test_drafting_composes_with_cad(generator: CausalLMGenerator) -> None:
    for question in COPYING[:3] + NOT_COPYING[:2]:
        cad = GenerationParams(max_new_tokens=16, cad=ContextAwareDecoding(0.5))
        both = GenerationParams(max_new_tokens=16, cad=ContextAwareDecoding(0.5), drafting=Drafting(6))
        ids = generator._encode_prompt(question, PASSAGES, cad)
        context_free = generator._encode_context_free(question, cad)
        expected = list(generator._answer_tokens(ids, cad, context_free))
        assert list(generator._answer_tokens(ids, both, context_free)) == expected, question


@pytest.mark.slow
def test_drafting_streams_and_reports_the_acceptance_length(generator: CausalLMGenerator) -> None:
    params = GenerationParams(max_new_tokens=32, drafting=Drafting(8))
    answer = generator.answer(COPYING[0], PASSAGES, params)
    t = answer.timings
    assert t.new_tokens > 8 and 1 <= t.decode_steps < t.new_tokens - 1
    assert t.tokens_per_step > 1.5
    pieces = list(generator.stream(COPYING[0], PASSAGES, params))
    assert len(pieces) > 1
    assert "".join(pieces).strip() == answer.text


@pytest.mark.slow
def test_sampled_drafting_on_smollm2_is_seeded(generator: CausalLMGenerator) -> None:
    def sample(seed: int) -> str:
        params = GenerationParams(max_new_tokens=16, temperature=0.8, seed=seed, drafting=Drafting(6))
        return generator.answer(COPYING[1], PASSAGES, params).text

    assert sample(5) == sample(5)
    assert len({sample(seed) for seed in range(6, 10)}) > 1


@pytest.mark.slow
def test_greedy_drafting_equals_plain_greedy_on_qwen_0_5b() -> None:
    """The default generator model (fused draft-model drafting: on SmolLM2 and in the bench test)."""
    from rag.lm import load_causal_lm

    model, tokenizer = load_causal_lm("qwen2.5-coder-0.5b-instruct", device="cpu")
    generator = CausalLMGenerator(CausalLMConfig(), model=model, tokenizer=tokenizer)
    plain_params = GenerationParams(max_new_tokens=16)
    draft_params = GenerationParams(max_new_tokens=16, drafting=Drafting(6))
    stats = DecodeStats()
    for question in COPYING[::3] + NOT_COPYING[::4]:
        ids = generator._encode_prompt(question, PASSAGES, plain_params)
        plain = list(generator._answer_tokens(ids, plain_params))
        assert list(generator._answer_tokens(ids, draft_params, None, stats)) == plain, question
    assert stats.accepted_tokens > 0
