"""Path pruning for parallel contexts: per-passage question likelihood, and answering from the kept ones."""

from __future__ import annotations

import argparse
import doctest
from dataclasses import replace

import pytest
import torch
from test_parallel_context import PASSAGES

import rag.generation.contexts.passage_pruning
from rag.cli.generation_options import add_generation_options, generation_params
from rag.errors import ConfigError
from rag.generation import (
    BlendedContexts,
    CausalLMConfig,
    CausalLMGenerator,
    ContextAwareDecoding,
    Drafting,
    GenerationParams,
    ParallelContexts,
)
from rag.generation.base import DecodeStats
from rag.generation.contexts.passage_kv_store import PassageKVStore
from rag.generation.contexts.passage_pruning import (
    most_likely_passages,
    read_question,
    scored_tokens,
    token_logprobs,
)
from rag.generation.decode.kv_batch import KVBatch

QUESTION = "Which city was founded in 753 BC?"


def test_docstring_examples() -> None:
    assert doctest.testmod(rag.generation.contexts.passage_pruning).failed == 0


def test_params_and_cli_take_keep_passages() -> None:
    with pytest.raises(ConfigError, match=">= 0"):
        GenerationParams(keep_passages=-1, parallel=ParallelContexts())
    assert GenerationParams(keep_passages=1).prunes(5) and not GenerationParams(keep_passages=1).prunes(1)
    parser = argparse.ArgumentParser()
    add_generation_options(parser)
    params = generation_params(parser.parse_args(["--contexts", "parallel", "--keep-passages", "2"]))
    assert (params.parallel, params.keep_passages) == (ParallelContexts(), 2)
    assert generation_params(parser.parse_args([])).keep_passages == 1  # the default
    config = CausalLMConfig(defaults=GenerationParams(keep_passages=1, parallel=ParallelContexts()))
    assert config.defaults.keep_passages == 1


# -- on SmolLM2 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(smollm2_exact) -> CausalLMGenerator:
    """Reads the question in the model itself: kept passages' answers are then exact."""
    model, tokenizer = smollm2_exact
    config = CausalLMConfig(model="smollm2-135m-instruct", defaults=GenerationParams(max_new_tokens=12))
    return CausalLMGenerator(config, model=model, tokenizer=tokenizer, passage_store=PassageKVStore())


def sequential_log_likelihood(model, ids: torch.Tensor, first: int, end: int) -> float:
    """Sum of log P of ``ids[first:end]`` ``# [n]``, from one plain forward."""
    with torch.inference_mode():
        logits = model(input_ids=ids[None]).logits[0].float()  # [n, vocab]
    logprobs = logits[first - 1 : end - 1].log_softmax(-1)  # [end - first, vocab]
    return float(logprobs.gather(-1, ids[first:end, None]).sum())


@pytest.mark.slow
def test_each_score_is_the_question_likelihood_after_that_passage_alone(generator) -> None:
    params = GenerationParams(keep_passages=1, parallel=ParallelContexts())
    prompt = generator._split_prompt(QUESTION, PASSAGES, params)
    prefix, blocks = generator._parallel_prefill(params).blocks(prompt)
    question = prompt.question_ids
    first, read = scored_tokens(len(question), prompt.question_span)
    assert (first, read) == prompt.question_span  # the question's own tokens, inside the question part
    assert generator.tokenizer.decode(question[first:read]).strip() == QUESTION
    scores = read_question(generator.model, prefix, blocks, question, prompt.question_span).scores
    expected = []
    for passage in prompt.passage_ids:
        before = len(prompt.prefix_ids) + len(passage)
        ids = torch.cat([prompt.prefix_ids, passage, question])
        expected.append(sequential_log_likelihood(generator.model, ids, before + first, before + read))
    torch.testing.assert_close(scores, torch.tensor(expected), atol=2e-2, rtol=1e-4)
    assert int(scores.argmax()) == 2  # the Rome passage explains a question about 753 BC best


def test_token_logprobs_equal_a_log_softmax_in_fp32() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 1000, generator=generator)
    targets = torch.randint(0, 1000, (7,), generator=generator)
    expected = logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(token_logprobs(logits.bfloat16(), targets), expected, atol=2e-2, rtol=0)
    assert token_logprobs(logits.bfloat16(), targets).dtype == torch.float32


@pytest.mark.slow
@pytest.mark.parametrize("rome", [2, 0])  # the question's passage last, or first (its copy then reads it all)
def test_keeping_one_passage_answers_as_the_sequential_prompt_of_that_passage(generator, rome) -> None:
    passages = [PASSAGES[(i + 2 - rome) % 3] for i in range(3)]
    assert passages[rome].id == "it"
    # APE's temperature and scale left at the defaults: the kept passage's path is read with plain attention
    params = GenerationParams(max_new_tokens=12, keep_passages=1, parallel=ParallelContexts())
    prompt = generator._split_prompt(QUESTION, passages, params)
    alone = torch.cat([prompt.prefix_ids, prompt.passage_ids[rome], prompt.question_ids])  # [n]
    stats = DecodeStats()
    with torch.inference_mode():
        plain = KVBatch(generator.model, [alone]).prefill()
        batch = generator._parallel_prefill(params).batch(prompt, stats=stats)
        pruned = batch.prefill()
    torch.testing.assert_close(pruned, plain, atol=2e-4, rtol=0)
    assert stats.passages_pruned == 2
    assert batch.forward_calls == (0 if rome == 0 else 1)  # the first passage's copy read the whole question
    parallel = generator._split_prompt(QUESTION, passages, params)
    assert list(generator._answer_tokens(prompt.input_ids, params, None, None, parallel)) == list(
        generator._answer_tokens(alone[None], GenerationParams(max_new_tokens=12))
    )
    cad = replace(params, cad=ContextAwareDecoding(0.5))
    context_free = generator._encode_context_free(QUESTION, cad)
    answer = list(generator._answer_tokens(prompt.input_ids, cad, context_free, None, parallel))
    assert answer == list(
        generator._answer_tokens(alone[None], replace(cad, parallel=None, keep_passages=0), context_free)
    )
    drafted = replace(cad, drafting=Drafting(4))
    assert list(generator._answer_tokens(prompt.input_ids, drafted, context_free, None, parallel)) == answer


def test_keep_passages_reads_the_passages_apart_without_asking_for_parallel_contexts(generator) -> None:
    keep = GenerationParams(max_new_tokens=12, keep_passages=1)
    answer = generator.answer(QUESTION, PASSAGES, keep)
    assert (
        answer.text == generator.answer(QUESTION, PASSAGES, replace(keep, parallel=ParallelContexts())).text
    )
    assert generator._split_prompt(QUESTION, PASSAGES, keep) is not None  # three passages: read apart
    # one passage: nothing to choose, so the sequential prompt (not APE's attention over one passage)
    assert generator._split_prompt(QUESTION, PASSAGES[:1], keep) is None
    one = generator.answer(QUESTION, PASSAGES[:1], keep)
    assert one.text == generator.answer(QUESTION, PASSAGES[:1], GenerationParams(max_new_tokens=12)).text


@pytest.mark.slow
def test_keeping_all_passages_prunes_nothing_and_composes_with_cad_and_drafting(generator) -> None:
    def decode(params: GenerationParams, stats: DecodeStats | None = None) -> list[int]:
        parallel = generator._split_prompt(QUESTION, PASSAGES, params)
        context_free = generator._encode_context_free(QUESTION, params)
        return list(generator._answer_tokens(parallel.input_ids, params, context_free, stats, parallel))

    base = {"max_new_tokens": 12, "parallel": ParallelContexts()}
    everything = GenerationParams(**base, keep_passages=0)
    stats = DecodeStats()
    assert decode(GenerationParams(**base, keep_passages=3), stats) == decode(everything)
    assert stats.passages_pruned == 0
    pruned = GenerationParams(**base, keep_passages=2, cad=ContextAwareDecoding(0.5))
    stats = DecodeStats()
    answer = decode(pruned, stats)
    assert stats.passages_pruned == 1
    drafted = GenerationParams(**base, keep_passages=2, cad=ContextAwareDecoding(0.5), drafting=Drafting(4))
    assert decode(drafted) == answer  # drafting stays lossless over a pruned cache


@pytest.mark.slow
def test_blending_the_kept_passages_in_full_equals_their_sequential_prompt(generator) -> None:
    params = GenerationParams(max_new_tokens=12, keep_passages=2, parallel=BlendedContexts(1.0))
    prompt = generator._split_prompt(QUESTION, PASSAGES, params)
    prefill = generator._parallel_prefill(params)
    prefix, blocks = prefill.blocks(prompt)
    reading = read_question(generator.model, prefix, blocks, prompt.question_ids, prompt.question_span)
    kept = most_likely_passages(reading.scores, 2)
    alone = torch.cat([prompt.prefix_ids, *(prompt.passage_ids[i] for i in kept), prompt.question_ids])
    with torch.inference_mode():
        plain = KVBatch(generator.model, [alone]).prefill()
        pruned = prefill.batch(prompt).prefill()
    torch.testing.assert_close(pruned, plain, atol=2e-4, rtol=0)
