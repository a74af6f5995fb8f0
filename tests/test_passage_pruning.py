"""Path pruning for parallel contexts: per-passage question likelihood, and answering from the kept ones."""

from __future__ import annotations

import argparse
import copy
import doctest
import gc
import weakref
from dataclasses import replace

import pytest
import torch
from test_parallel_context import PASSAGES

import rag.generation.passage_pruning
import rag.models.skinny_linear
from rag.cli.generation_options import add_generation_options, generation_params
from rag.errors import ConfigError
from rag.generation import CausalLMConfig, CausalLMGenerator, GenerationParams
from rag.generation.base import DecodeStats
from rag.generation.kv_batch import KVBatch
from rag.generation.passage_kv_store import PassageKVStore
from rag.generation.passage_pruning import (
    most_likely_passages,
    question_reader,
    read_question,
    scored_tokens,
    scoring_head,
    token_logprobs,
)
from rag.models.dtype_copy import cpu_has_bf16_units, model_copy

QUESTION = "Which city was founded in 753 BC?"


def test_docstring_examples() -> None:
    assert doctest.testmod(rag.generation.passage_pruning).failed == 0


def test_params_and_cli_take_keep_passages() -> None:
    with pytest.raises(ConfigError, match=">= 0"):
        GenerationParams(parallel_contexts=True, keep_passages=-1)
    with pytest.raises(ConfigError, match="needs parallel_contexts"):
        GenerationParams(keep_passages=1)
    parser = argparse.ArgumentParser()
    add_generation_options(parser)
    params = generation_params(parser.parse_args(["--parallel-contexts", "--keep-passages", "2"]))
    assert (params.parallel_contexts, params.keep_passages) == (True, 2)
    assert generation_params(parser.parse_args([])).keep_passages == 0
    assert CausalLMConfig(parallel_contexts=True, keep_passages=1).default_params().keep_passages == 1


# -- on SmolLM2 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(smollm2) -> CausalLMGenerator:
    """Reads the question in the model itself: kept passages' answers are then exact."""
    model, tokenizer = smollm2
    config = CausalLMConfig(model="smollm2-135m-instruct", max_new_tokens=12, bf16_question_reading=False)
    return CausalLMGenerator(config, model=model, tokenizer=tokenizer, passage_store=PassageKVStore())


@pytest.fixture(scope="module")
def bf16_reader(smollm2):
    """The question reader the generator makes here; a bf16 copy all the same on a CPU without bf16 units."""
    model, _ = smollm2
    reader = question_reader(model)
    return reader if reader is not None else model_copy(model, torch.bfloat16)


def sequential_log_likelihood(model, ids: torch.Tensor, first: int, end: int) -> float:
    """Sum of log P of ``ids[first:end]`` ``# [n]``, from one plain forward."""
    with torch.inference_mode():
        logits = model(input_ids=ids[None]).logits[0].float()  # [n, vocab]
    logprobs = logits[first - 1 : end - 1].log_softmax(-1)  # [end - first, vocab]
    return float(logprobs.gather(-1, ids[first:end, None]).sum())


@pytest.mark.slow
def test_each_score_is_the_question_likelihood_after_that_passage_alone(generator) -> None:
    params = GenerationParams(parallel_contexts=True, keep_passages=1)
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


@pytest.mark.parametrize("with_bias", [False, True])
def test_token_logprobs_summed_over_vocabulary_slices_equal_a_full_log_softmax(with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 16, generator=generator)
    weight = torch.randn(1000, 16, generator=generator)
    bias = torch.randn(1000, generator=generator) if with_bias else None
    targets = torch.randint(0, 1000, (7,), generator=generator)
    full = torch.nn.functional.linear(hidden, weight, bias).log_softmax(-1)  # [7, 1000]
    expected = full.gather(-1, targets[:, None])[:, 0]
    for slice_size in (1000, 300, 64):  # one slice, a ragged last slice, many
        logprobs = token_logprobs(hidden, targets, weight, bias, slice_size=slice_size)
        torch.testing.assert_close(logprobs, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.slow
def test_a_bf16_output_layer_ranks_the_passages_as_the_model_s_own(generator) -> None:
    model = generator.model
    params = GenerationParams(parallel_contexts=True, keep_passages=1)
    prompt = generator._split_prompt(QUESTION, PASSAGES, params)
    prefix, blocks = generator._parallel_prefill(params).blocks(prompt)
    span = prompt.question_span
    exact = read_question(model, prefix, blocks, prompt.question_ids, span).scores
    head = model.get_output_embeddings().weight.detach().bfloat16()
    scores = read_question(model, prefix, blocks, prompt.question_ids, span, head=head).scores
    assert scores.argsort().tolist() == exact.argsort().tolist()
    torch.testing.assert_close(scores, exact, atol=0.3, rtol=0)
    assert scoring_head(model).dtype == (torch.bfloat16 if cpu_has_bf16_units() else torch.float32)
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert scoring_head(half).data_ptr() == half.get_output_embeddings().weight.data_ptr()  # no copy


@pytest.mark.slow
def test_a_bf16_reader_ranks_the_passages_as_the_model_and_leaves_the_passages_kv_exact(
    generator, bf16_reader
) -> None:
    model = generator.model
    params = GenerationParams(parallel_contexts=True, keep_passages=1)
    prompt = generator._split_prompt(QUESTION, PASSAGES, params)
    prefix, blocks = generator._parallel_prefill(params).blocks(prompt)
    question, span = prompt.question_ids, prompt.question_span
    exact = read_question(model, prefix, blocks, question, span, answer_after=0)
    reading = read_question(model, prefix, blocks, question, span, answer_after=0, reader=bf16_reader)
    assert reading.cache.layers[0].keys.dtype == torch.bfloat16
    assert reading.scores.argsort().tolist() == exact.scores.argsort().tolist()
    torch.testing.assert_close(reading.scores, exact.scores, atol=0.5, rtol=0)
    assert reading.first_logits is not None and exact.first_logits is not None
    assert reading.first_logits.dtype == torch.float32  # from the model's own output layer
    assert int(reading.first_logits.argmax()) == int(exact.first_logits.argmax())
    for i in (0, 2):
        path, reference = reading.path(model, prefix, blocks[i], i), exact.path(model, prefix, blocks[i], i)
        cached = prefix.tokens + blocks[i].tokens
        for layer, (ours, theirs) in enumerate(zip(path.layers, reference.layers, strict=True)):
            assert ours.keys.dtype == torch.float32 and ours.keys.shape == theirs.keys.shape
            passage_keys = torch.cat([prefix.keys[layer], blocks[i].keys[layer]], dim=1)
            assert torch.equal(ours.keys[0, :, :cached], passage_keys)
            assert torch.equal(ours.values[0, :, :cached], theirs.values[0, :, :cached])
            torch.testing.assert_close(ours.keys, theirs.keys, atol=0.3, rtol=0.05)  # the copy: bf16 rounding


@pytest.mark.slow
def test_the_generator_reads_in_bf16_by_default_and_answers_as_the_exact_reading_here(smollm2) -> None:
    model, tokenizer = smollm2
    config = CausalLMConfig(model="smollm2-135m-instruct", max_new_tokens=12)
    fast, exact = (
        CausalLMGenerator(c, model=model, tokenizer=tokenizer, passage_store=PassageKVStore())
        for c in (config, replace(config, bf16_question_reading=False))
    )
    params = GenerationParams(max_new_tokens=12, parallel_contexts=True, keep_passages=1)
    for question in (QUESTION, "What is the capital of Germany?"):
        assert fast.answer(question, PASSAGES, params).text == exact.answer(question, PASSAGES, params).text
    reader, head = fast._pruning  # type: ignore[misc]
    assert exact._pruning is not None and exact._pruning[0] is None  # the model reads, the head scores
    if cpu_has_bf16_units():
        assert reader.dtype == torch.bfloat16 and head is None
        assert model.dtype == torch.float32  # the model itself is left as it was
    else:
        assert reader is None


def test_no_reader_for_a_model_that_is_not_fp32_or_without_memory_to_spare(monkeypatch) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = Qwen2ForCausalLM(config)
    assert question_reader(model.to(torch.bfloat16)) is None
    monkeypatch.setattr(rag.models.skinny_linear, "available_bytes", lambda: 0)
    assert question_reader(model.float()) is None


def test_one_reader_per_model_shared_by_its_generators_and_freed_with_it(monkeypatch) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    fp32 = lambda t: t.dtype == torch.float32  # noqa: E731  (bf16 taken as faster on any CPU)
    monkeypatch.setattr(rag.generation.passage_pruning, "bf16_is_faster", fp32)
    config = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model, other = Qwen2ForCausalLM(config), Qwen2ForCausalLM(config)
    reader = question_reader(model)
    assert reader is not None and reader.dtype == torch.bfloat16
    assert question_reader(model) is reader  # a second generator of the model: no second copy
    assert question_reader(other) is not reader
    freed = weakref.ref(reader)
    del model, reader
    gc.collect()
    assert freed() is None


@pytest.mark.slow
@pytest.mark.parametrize("rome", [2, 0])  # the question's passage last, or first (its copy then reads it all)
def test_keeping_one_passage_answers_as_the_sequential_prompt_of_that_passage(generator, rome) -> None:
    passages = [PASSAGES[(i + 2 - rome) % 3] for i in range(3)]
    assert passages[rome].id == "it"
    # APE's temperature and scale left at the defaults: the kept passage's path is read with plain attention
    params = GenerationParams(max_new_tokens=12, parallel_contexts=True, keep_passages=1)
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
    assert list(generator._decode(prompt.input_ids, params, None, None, parallel)) == list(
        generator._decode(alone[None], GenerationParams(max_new_tokens=12))
    )
    cad = replace(params, cad_alpha=0.5)
    context_free = generator._encode_context_free(QUESTION, cad)
    answer = list(generator._decode(prompt.input_ids, cad, context_free, None, parallel))
    assert answer == list(
        generator._decode(alone[None], replace(cad, parallel_contexts=False, keep_passages=0), context_free)
    )
    drafted = replace(cad, draft_tokens=4)
    assert list(generator._decode(prompt.input_ids, drafted, context_free, None, parallel)) == answer


@pytest.mark.slow
def test_keeping_all_passages_prunes_nothing_and_composes_with_cad_and_drafting(generator) -> None:
    def decode(params: GenerationParams, stats: DecodeStats | None = None) -> list[int]:
        parallel = generator._split_prompt(QUESTION, PASSAGES, params)
        context_free = generator._encode_context_free(QUESTION, params)
        return list(generator._decode(parallel.input_ids, params, context_free, stats, parallel))

    base = {"max_new_tokens": 12, "parallel_contexts": True}
    stats = DecodeStats()
    assert decode(GenerationParams(**base, keep_passages=3), stats) == decode(GenerationParams(**base))
    assert stats.passages_pruned == 0
    pruned = GenerationParams(**base, keep_passages=2, cad_alpha=0.5)
    stats = DecodeStats()
    answer = decode(pruned, stats)
    assert stats.passages_pruned == 1
    drafted = GenerationParams(**base, keep_passages=2, cad_alpha=0.5, draft_tokens=4)
    assert decode(drafted) == answer  # drafting stays lossless over a pruned cache


@pytest.mark.slow
def test_blending_the_kept_passages_in_full_equals_their_sequential_prompt(generator) -> None:
    params = GenerationParams(max_new_tokens=12, parallel_contexts=True, keep_passages=2, blend_ratio=1.0)
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
