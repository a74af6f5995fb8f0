"""A draft model fused with retrieval drafting (RASD): the proposer's cache reuse, the prune rule, the
vocabulary check, the config and CLI wiring, and that greedy output stays token for token the plain output."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pytest
import torch
from test_drafting import COPYING, NOT_COPYING, PASSAGES

from rag.cli.generation_options import add_generation_options, generator_config
from rag.errors import ConfigError
from rag.generation import CausalLMConfig, CausalLMGenerator, Drafting, GenerationParams
from rag.generation.base import DecodeStats
from rag.generation.causal_lm import build_drafter
from rag.generation.drafting.draft_model import DraftModelProposer, check_vocabulary
from rag.generation.drafting.fused import FusedDrafter, keep_retrieval_draft
from rag.generation.drafting.retrieval import RetrievalDrafter

pytestmark = pytest.mark.slow


class FakeTokenizer:
    """Only what the vocabulary check reads."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


# -- the prune rule on crafted probabilities -------------------------------------------------------------


class CraftedDraftModel:
    """A draft model with a fixed next-token distribution and a fixed greedy draft."""

    def __init__(self, probs: list[float], draft: list[int]) -> None:
        self.probs = torch.tensor(probs)  # [vocab]
        self.draft = draft
        self.contexts: list[list[int]] = []

    def next_token_probs(self, context: Sequence[int]) -> torch.Tensor:
        self.contexts.append(list(context))
        return self.probs

    def propose(self, context: Sequence[int], max_tokens: int) -> list[list[int]]:
        return [self.draft[:max_tokens]]


def test_prune_rule_keeps_the_model_choice_and_likely_first_tokens() -> None:
    probs = torch.tensor([0.04, 0.06, 0.5, 0.4])  # [vocab = 4]; the argmax is 2
    assert keep_retrieval_draft(2, probs, 0.05)
    assert keep_retrieval_draft(1, probs, 0.05)  # 0.06 >= 0.05
    assert not keep_retrieval_draft(0, probs, 0.05)  # 0.04 < 0.05
    assert not keep_retrieval_draft(1, probs, 0.1)
    flat = torch.full((40,), 1 / 40)  # every token below min_prob: the draft model's own choice still passes
    assert keep_retrieval_draft(int(flat.argmax()), flat, 0.1)
    assert not keep_retrieval_draft(int(flat.argmax()) + 1, flat, 0.1)


def test_fused_drafter_drops_retrieval_drafts_the_draft_model_finds_unlikely() -> None:
    #          the context ends in 7; 7 was followed by [1, 2], [3, 4] and [0, 5] earlier (latest first)
    context = [7, 1, 2, 9, 7, 3, 4, 9, 7, 0, 5, 9, 7]
    retrieval = RetrievalDrafter(max_ngram=1, branches=3, match_scaled=False)  # 1-token matches, 2 tokens
    assert retrieval.propose(context, 2) == [[0, 5], [3, 4], [1, 2]]
    model = CraftedDraftModel([0.02, 0.5, 0.08, 0.3, 0.1, 0, 0, 0, 0, 0], draft=[1, 6])
    fused = FusedDrafter(retrieval, model, min_prob=0.1)
    # The model draft first; [3, 4] starts with p = 0.3, [1, 2] with the model's choice; 0 has p = 0.02.
    assert fused.propose(context, 2) == [[1, 6], [3, 4], [1, 2]]
    assert model.contexts == [context]
    assert FusedDrafter(retrieval, model, min_prob=0.4).propose(context, 2) == [[1, 6], [1, 2]]
    assert FusedDrafter(retrieval, model, min_prob=0.0).propose(context, 2) == [
        [1, 6],
        [0, 5],
        [3, 4],
        [1, 2],
    ]
    same = CraftedDraftModel([0.02, 0.5, 0.08, 0.3, 0.1, 0, 0, 0, 0, 0], draft=[3, 4])
    assert FusedDrafter(retrieval, same).propose(context, 2) == [[3, 4], [1, 2]]  # no duplicate [3, 4]
    assert fused.propose(context, 0) == []
    with pytest.raises(ConfigError):
        FusedDrafter(retrieval, model, min_prob=1.5)


def test_after_a_long_enough_match_the_draft_model_is_not_asked() -> None:
    #          0  1  2  3  4  5  6  7  8  9 10 11
    context = [4, 1, 2, 3, 5, 6, 7, 8, 9, 1, 2, 3]  # [1, 2, 3] recurs: a 3-token match, 5 drafted tokens
    model = CraftedDraftModel([0.1] * 10, draft=[7, 7])
    gated = FusedDrafter(RetrievalDrafter(), model, model_below=3)
    assert gated.propose(context, 8) == [[5, 6, 7, 8, 9]] and model.contexts == []
    below = FusedDrafter(RetrievalDrafter(), model, model_below=4)  # 3 < 4: the draft model is asked
    assert below.propose(context, 8) == [[7, 7], [5, 6, 7, 8, 9]] and model.contexts == [context]
    with pytest.raises(ConfigError):
        FusedDrafter(RetrievalDrafter(), model, model_below=0)


# -- the vocabulary check and the wiring -----------------------------------------------------------------


def test_a_vocabulary_mismatch_raises_config_error(smollm2) -> None:
    _, tokenizer = smollm2
    vocab = tokenizer.get_vocab()
    check_vocabulary(tokenizer, FakeTokenizer(vocab))  # the same vocabulary passes
    shifted = dict(vocab)
    shifted["hello"], shifted["world"] = vocab["world"], vocab["hello"]  # two ids swapped
    with pytest.raises(ConfigError, match="vocabulary"):
        check_vocabulary(tokenizer, FakeTokenizer(shifted))
    with pytest.raises(ConfigError, match="differs from the target's"):
        check_vocabulary(tokenizer, FakeTokenizer({**vocab, "<extra>": len(vocab)}))
    # Through the config: constructing it loads nothing; the first proposal loads and checks.
    drafter = build_drafter(CausalLMConfig(draft_model="smollm2-135m-instruct"), FakeTokenizer(shifted))
    assert isinstance(drafter, FusedDrafter)
    context = tokenizer("The Eiffel Tower is in")["input_ids"]
    with pytest.raises(ConfigError, match="draft model 'smollm2-135m-instruct'"):
        drafter.propose(context, 4)


def test_the_config_loads_the_draft_model_lazily() -> None:
    config = CausalLMConfig(
        draft_model="no-such-model-anywhere", defaults=GenerationParams(drafting=Drafting(4))
    )  # would fail to load
    drafter = build_drafter(config)
    assert isinstance(drafter, FusedDrafter) and isinstance(drafter.draft, DraftModelProposer)
    assert drafter.draft.max_tokens_cap is None  # as long as the request's drafting.tokens
    capped = build_drafter(CausalLMConfig(draft_model="no-such-model-anywhere", draft_model_tokens=1))
    assert isinstance(capped, FusedDrafter) and capped.draft.max_tokens_cap == 1
    assert isinstance(build_drafter(CausalLMConfig()), RetrievalDrafter)
    with pytest.raises(ConfigError):
        CausalLMConfig(draft_model=" ")
    with pytest.raises(ConfigError, match="draft_model_tokens"):
        CausalLMConfig(draft_model="no-such-model-anywhere", draft_model_tokens=0)


def test_the_config_drafts_with_an_already_loaded_draft_model(smollm2) -> None:
    model, tokenizer = smollm2
    config = CausalLMConfig(draft_model="no-such-model-anywhere", draft_model_tokens=2)  # never loaded
    drafter = build_drafter(config, tokenizer, draft_lm=model)
    assert isinstance(drafter, FusedDrafter) and drafter.draft.model is model
    context = tokenizer("The Eiffel Tower is in")["input_ids"]
    assert [len(d) for d in drafter.draft.propose(context, 6)] == [2]


def test_cli_passes_the_draft_model_to_the_generator_config() -> None:
    parser = argparse.ArgumentParser()
    add_generation_options(parser)
    args = parser.parse_args(["--draft-model", "qwen2.5-coder-0.5b-instruct", "--draft-tokens", "6"])
    assert generator_config(args)["draft_model"] == "qwen2.5-coder-0.5b-instruct"
    assert generator_config(args)["draft_model_tokens"] is None
    assert generator_config(parser.parse_args([]))["draft_model"] is None
    args = parser.parse_args(["--draft-model", "qwen2.5-coder-0.5b-instruct", "--draft-model-tokens", "1"])
    assert generator_config(args)["draft_model_tokens"] == 1


# -- the proposer on SmolLM2 -----------------------------------------------------------------------------


def test_cache_reuse_gives_the_proposals_of_a_fresh_proposer(smollm2_exact) -> None:
    """In float32: a fresh prompt pass and the reused cache's increments are the same arithmetic to fp32
    rounding (with int4 weights a long prompt runs on the expanded weights, increments on the kernels)."""
    model, tokenizer = smollm2_exact
    prompt = tokenizer("The Nile is a major north-flowing river in northeastern Africa. It flows into")[
        "input_ids"
    ]
    reused = DraftModelProposer(model)
    first = reused.propose(prompt, 5)[0]
    # As the decoding loop calls it: the answer grows by accepted drafts plus a correction, or diverges;
    # then a rolled-back context (a prefix of what is cached), the same context twice, and a new prompt.
    other = tokenizer("Mount Fuji is the highest mountain in")["input_ids"]
    contexts = [
        prompt + first[:3],
        prompt + first[:3] + [tokenizer("banana")["input_ids"][0]],
        prompt[:-2],
        prompt[:-2],
        prompt + first,
        other,
    ]
    for context in contexts:
        fresh = DraftModelProposer(model)
        torch.testing.assert_close(reused.next_token_probs(context), fresh.next_token_probs(context))
        assert reused.propose(context, 5) == fresh.propose(context, 5), context
    fed_fresh = sum(len(c) + 4 for c in [prompt, *contexts])  # each context from scratch, 4 draft feeds
    assert reused.tokens_fed < fed_fresh - 2 * len(prompt)  # the cached prefixes were not fed again
    capped = DraftModelProposer(model, max_tokens_cap=2)
    assert capped.propose(prompt, 5) == [first[:2]]
    assert capped.propose(prompt, 0) == [] and capped.propose([], 3) == []


def test_fused_greedy_equals_plain_greedy_and_self_drafts_are_accepted(smollm2) -> None:
    """SmolLM2 drafts for itself through ``CausalLMConfig(draft_model=...)``: a second copy, loaded lazily."""
    model, tokenizer = smollm2
    plain_params = GenerationParams(max_new_tokens=24)
    draft_params = GenerationParams(max_new_tokens=24, drafting=Drafting(6))
    # asked at every step, the self-draft (loaded as the target is) is the target's own greedy continuation
    config = CausalLMConfig(
        draft_model="smollm2-135m-instruct",
        draft_model_below=None,
        defaults=GenerationParams(max_new_tokens=24),
    )
    fused = CausalLMGenerator(config, model=model, tokenizer=tokenizer)
    retrieval = CausalLMGenerator(
        CausalLMConfig(defaults=GenerationParams(max_new_tokens=24)), model=model, tokenizer=tokenizer
    )
    assert isinstance(fused.drafter, FusedDrafter)
    assert fused.drafter.draft._model is None  # not loaded by the generator's construction
    fused_stats = {"copy": DecodeStats(), "free": DecodeStats()}
    retrieval_stats = {"copy": DecodeStats(), "free": DecodeStats()}
    for kind, questions in [("copy", COPYING[:3]), ("free", NOT_COPYING[:3])]:
        for question in questions:
            ids = fused._encode_prompt(question, PASSAGES, plain_params)
            plain = list(fused._answer_tokens(ids, plain_params))
            assert list(fused._answer_tokens(ids, draft_params, None, fused_stats[kind])) == plain, question
            drafted = retrieval._answer_tokens(ids, draft_params, None, retrieval_stats[kind])
            assert list(drafted) == plain, question
    assert fused.drafter.draft._model is not None and fused.drafter.draft._model is not model

    def rate(stats: DecodeStats) -> float:
        return stats.accepted_tokens / stats.drafted_tokens

    # Measured on these prompts, one retrieval branch, earliest occurrence first (the drafter's order until
    # 2026-11-28): free 0.94 fused vs 0.005 retrieval-only; copy 0.87 vs 0.54. Since the prompt ends with
    # the answer reminder (2026-12-06) the free answers repeat more of the prompt: free 0.875 vs 0.44.
    # Rejected nodes are mostly retrieval drafts the prune rule kept and self-drafts past the eos.
    # the self-draft runs its own, incremental, bf16 arithmetic: most of its tokens, not all, are the target's
    assert rate(fused_stats["free"]) > 0.8 and rate(fused_stats["free"]) > rate(retrieval_stats["free"])
    assert rate(fused_stats["copy"]) >= 0.95 and rate(fused_stats["copy"]) > rate(retrieval_stats["copy"])
    for kind in fused_stats:  # fewer verification steps than retrieval-only drafting
        assert fused_stats[kind].decode_steps < retrieval_stats[kind].decode_steps


def test_the_default_gated_bf16_draft_model_keeps_greedy_output(smollm2) -> None:
    model, tokenizer = smollm2
    config = CausalLMConfig(draft_model="smollm2-135m-instruct", defaults=GenerationParams(max_new_tokens=24))
    fused = CausalLMGenerator(config, model=model, tokenizer=tokenizer)
    plain_params = GenerationParams(max_new_tokens=24)
    draft_params = GenerationParams(max_new_tokens=24, drafting=Drafting(6))
    stats = DecodeStats()
    for question in COPYING[:2] + NOT_COPYING[:2]:
        ids = fused._encode_prompt(question, PASSAGES, plain_params)
        plain = list(fused._answer_tokens(ids, plain_params))
        assert list(fused._answer_tokens(ids, draft_params, None, stats)) == plain
    assert stats.accepted_tokens > 0
    draft_lm = fused.drafter.draft.model
    assert next(draft_lm.parameters()).dtype == next(model.parameters()).dtype  # loaded as the target is


def test_fused_sampling_is_seeded_and_varies(smollm2) -> None:
    model, tokenizer = smollm2
    drafter = FusedDrafter(RetrievalDrafter(), DraftModelProposer(model))
    generator = CausalLMGenerator(CausalLMConfig(), model=model, tokenizer=tokenizer, drafter=drafter)

    def sample(seed: int) -> str:
        params = GenerationParams(max_new_tokens=12, temperature=0.8, seed=seed, drafting=Drafting(4))
        return generator.answer(NOT_COPYING[0], PASSAGES, params).text

    assert sample(5) == sample(5)
    assert len({sample(seed) for seed in range(6, 9)}) > 1
