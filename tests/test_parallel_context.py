"""Parallel-encoded cached contexts (APE): the prompt cut, APE attention, cold/warm equality, composition."""

from __future__ import annotations

import argparse
import doctest
from pathlib import Path

import pytest
import torch

import rag.generation.contexts.kv_int8
import rag.generation.contexts.parallel_prefill
import rag.generation.contexts.parallel_prompt
import rag.generation.contexts.passage_kv_store
from rag.cli.generation_options import add_generation_options, generation_params, generator_config
from rag.errors import ConfigError
from rag.generation import (
    CausalLMConfig,
    CausalLMGenerator,
    ContextAwareDecoding,
    Drafting,
    GenerationParams,
    ParallelContexts,
)
from rag.generation.base import DecodeStats
from rag.generation.contexts.parallel_prefill import shared_prefix_length
from rag.generation.contexts.parallel_prompt import split_prompt, split_text
from rag.generation.contexts.passage_kv_store import PassageKVStore
from rag.generation.decode.kv_batch import KVBatch
from rag.lm.ape_attention import ApeSegments, ape_segments, enable_ape_attention
from rag.lm.grouped_attention import GROUPED_SDPA
from rag.types import Document

PASSAGES = [
    Document("fr", "Paris is the capital and largest city of France, on the Seine.", title="France"),
    Document(
        "de", "Berlin is the capital of Germany. It has about 3.7 million inhabitants.", title="Germany"
    ),
    Document("it", "Rome, the capital of Italy, was founded in 753 BC according to legend.", title="Italy"),
]
QUESTION = "What is the capital of France?"


@pytest.mark.parametrize(
    "module",
    [
        rag.generation.contexts.parallel_prompt,
        rag.generation.contexts.parallel_prefill,
        rag.generation.contexts.passage_kv_store,
        rag.generation.contexts.kv_int8,
    ],
)
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_params_validate_ape_fields() -> None:
    for bad in ({"ape_temperature": 0.0}, {"ape_temperature": 1.5}, {"ape_scale": 0.0}, {"ape_scale": 2.0}):
        with pytest.raises(ConfigError):
            ParallelContexts(**bad)
    assert (
        GenerationParams(parallel=ParallelContexts(ape_temperature=0.5, ape_scale=0.8)).parallel.ape_scale
        == 0.8
    )
    with pytest.raises(ConfigError):
        CausalLMConfig(passage_cache_mb=-1)


def test_cli_options_reach_the_params_and_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_generation_options(parser)
    args = parser.parse_args(["--contexts", "parallel:0.5,0.8", "--passage-cache-dir", "kv"])
    params = generation_params(args)
    assert params.parallel == ParallelContexts(ape_temperature=0.5, ape_scale=0.8)
    assert generation_params(parser.parse_args(["--contexts", "parallel"])).parallel == ParallelContexts()
    assert generator_config(args)["passage_cache_dir"] == "kv"
    assert generation_params(parser.parse_args([])).parallel is None


def test_split_text_refuses_a_template_that_hides_the_passages() -> None:
    with pytest.raises(ConfigError):
        split_text("system\nPassages:\n\n[1] A\n\nQuestion: q", ["[1] B"])


def test_segment_ids_mark_the_passage_columns() -> None:
    ids = ApeSegments(2, 5).segment_ids(7, torch.device("cpu"))
    assert ids.tolist() == [0, 0, 1, 1, 1, 0, 0]


# -- on SmolLM2 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_tokenizer(smollm2_exact):
    """float32: most checks here compare the parallel arithmetic with the sequential one to fp32 tolerance."""
    return smollm2_exact


def make_generator(model_and_tokenizer, store: PassageKVStore | None = None, **config) -> CausalLMGenerator:
    model, tokenizer = model_and_tokenizer
    config = CausalLMConfig(
        model="smollm2-135m-instruct", **config, defaults=GenerationParams(max_new_tokens=16)
    )
    return CausalLMGenerator(
        config, model=model, tokenizer=tokenizer, passage_store=store or PassageKVStore()
    )


def decode(gen: CausalLMGenerator, passages, params: GenerationParams, stats: DecodeStats | None = None):
    ids = gen._encode_prompt(QUESTION, passages, params)
    context_free = gen._encode_context_free(QUESTION, params)
    parallel = gen._split_prompt(QUESTION, passages, params)
    return list(gen._answer_tokens(ids, params, context_free, stats, parallel))


@pytest.mark.slow
def test_the_prompt_pieces_are_the_sequential_prompt(model_and_tokenizer) -> None:
    gen = make_generator(model_and_tokenizer)
    system, reminder = gen.config.system_prompt, gen.config.reminder
    prompt = split_prompt(gen.tokenizer, QUESTION, PASSAGES, system, torch.device("cpu"), reminder)
    sequential = gen._encode_prompt(QUESTION, PASSAGES, GenerationParams())
    assert torch.equal(prompt.input_ids, sequential)
    assert prompt.prefix_text.endswith("Passages:\n\n")
    assert [t.split("\n")[0] for t in prompt.passage_texts] == ["[1] France", "[2] Germany", "[3] Italy"]
    decoded = gen.tokenizer.decode(prompt.question_ids)
    assert decoded.startswith("Question: What is the capital") and decoded.endswith("assistant\n")


@pytest.mark.slow
def test_ape_wrapper_leaves_other_forwards_unchanged(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    length = ids.shape[1]
    blocked = ~torch.ones(length, length, dtype=torch.bool).tril()
    mask = torch.zeros(1, 1, length, length).masked_fill_(blocked, torch.finfo(torch.float32).min)
    with torch.inference_mode():
        before = model(ids).logits
        enable_ape_attention(model)
        assert model.config._attn_implementation == "ragloom_ape_" + GROUPED_SDPA  # load_causal_lm's default
        after = model(ids).logits
        with ape_segments(ApeSegments(3, 6)):  # temperature 1, scale 1: ordinary attention
            segmented = model(ids, attention_mask=mask).logits
        with ape_segments(ApeSegments(3, 6, temperature=0.5, scale=0.5)):
            ape = model(ids, attention_mask=mask).logits
    assert torch.equal(before, after)
    torch.testing.assert_close(segmented, before, atol=2e-4, rtol=1e-5)  # fp32 rounding: 1.2e-4 seen
    assert (
        ape[0, 6:] - before[0, 6:]
    ).abs().max() > 1e-2  # APE changes the queries after the passage columns


@pytest.mark.slow
def test_single_passage_with_temperature_and_scale_one_scores_as_sequential_on_the_cpu_runtime(
    smollm2,
) -> None:
    """int4 weights, bf16 activations: the whole prompt runs on the expanded weights in one pass, the pieces
    apart (the question on the kernels), so the two agree to bf16 rounding, not bit for bit (the float32
    test below checks the construction exactly). Teacher-forced on the sequential answer: every step's logits
    within 1.0 (a misplaced position or mask moves them by several), the same argmax wherever the sequential
    top-2 margin leaves room for that."""
    gen = make_generator(smollm2)
    sequential = GenerationParams(max_new_tokens=16)
    parallel = GenerationParams(
        max_new_tokens=16, parallel=ParallelContexts(ape_temperature=1.0, ape_scale=1.0)
    )
    agreeing = steps = 0
    for doc in PASSAGES:
        ids = gen._encode_prompt(QUESTION, [doc], sequential)
        expected = list(gen._answer_tokens(ids, sequential))
        plain = KVBatch(gen.model, [ids[0]])
        cached = gen._parallel_prefill(parallel).batch(gen._split_prompt(QUESTION, [doc], parallel))
        with torch.inference_mode():
            ours = torch.cat([cached.prefill()[:, None], cached.extend(expected[:-1])], dim=1)[0]
            theirs = torch.cat([plain.prefill()[:, None], plain.extend(expected[:-1])], dim=1)[0]
        torch.testing.assert_close(ours, theirs, atol=1.0, rtol=0)  # [steps, vocab]
        top2 = theirs.topk(2, dim=-1).values  # [steps, 2]
        clear = (top2[:, 0] - top2[:, 1]) > 2.0
        assert torch.equal(ours.argmax(-1)[clear], theirs.argmax(-1)[clear]), doc.id
        agreeing += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        steps += len(expected)
    assert agreeing >= 0.9 * steps


@pytest.mark.slow
def test_single_passage_with_temperature_and_scale_one_equals_sequential(model_and_tokenizer) -> None:
    gen = make_generator(model_and_tokenizer)
    sequential = GenerationParams(max_new_tokens=16)
    parallel = GenerationParams(
        max_new_tokens=16, parallel=ParallelContexts(ape_temperature=1.0, ape_scale=1.0)
    )
    for doc in PASSAGES:
        ids = gen._encode_prompt(QUESTION, [doc], sequential)
        expected = list(gen._answer_tokens(ids, sequential))
        assert decode(gen, [doc], parallel) == expected, doc.id
        # the logits of the prefill and of every answer step agree to float32 tolerance
        plain = KVBatch(gen.model, [ids[0]])
        prompt = gen._split_prompt(QUESTION, [doc], parallel)
        cached = gen._parallel_prefill(parallel).batch(prompt)
        with torch.inference_mode():
            torch.testing.assert_close(cached.prefill(), plain.prefill(), atol=2e-4, rtol=0)
            steps = torch.tensor(expected[:-1])
            torch.testing.assert_close(
                cached.extend(steps.tolist()), plain.extend(steps.tolist()), atol=2e-4, rtol=0
            )


@pytest.mark.slow
def test_warm_memory_and_warm_disk_equal_cold(model_and_tokenizer, tmp_path: Path) -> None:
    params = GenerationParams(
        max_new_tokens=16, parallel=ParallelContexts(ape_temperature=0.8, ape_scale=0.9)
    )
    cold_stats, memory_stats, disk_stats = DecodeStats(), DecodeStats(), DecodeStats()
    gen = make_generator(model_and_tokenizer, PassageKVStore(directory=tmp_path))
    cold = decode(gen, PASSAGES, params, cold_stats)
    warm_memory = decode(gen, PASSAGES, params, memory_stats)
    disk_gen = make_generator(model_and_tokenizer, PassageKVStore(directory=tmp_path))  # empty memory tier
    warm_disk = decode(disk_gen, PASSAGES, params, disk_stats)
    assert warm_memory == cold and warm_disk == cold
    assert (cold_stats.passages_encoded, cold_stats.passages_from_memory) == (3, 0)
    assert (memory_stats.passages_encoded, memory_stats.passages_from_memory) == (0, 3)
    assert (disk_stats.passages_encoded, disk_stats.passages_from_disk) == (0, 3)
    assert len(list(tmp_path.iterdir())) == 4  # the prefix block and three passages


@pytest.mark.slow
def test_int8_blocks_warm_equal_cold_and_stay_close_to_float(model_and_tokenizer, tmp_path: Path) -> None:
    params = GenerationParams(max_new_tokens=12, parallel=ParallelContexts())

    def int8_generator() -> CausalLMGenerator:
        store = PassageKVStore(directory=tmp_path)
        return make_generator(model_and_tokenizer, store, passage_cache_int8=True)

    gen = int8_generator()
    cold = decode(gen, PASSAGES, params)
    assert decode(gen, PASSAGES, params) == cold
    disk_gen = int8_generator()
    stats = DecodeStats()
    assert decode(disk_gen, PASSAGES, params, stats) == cold and stats.passages_from_disk == 3
    float_gen = make_generator(model_and_tokenizer)
    prompt = gen._split_prompt(QUESTION, PASSAGES, params)
    with torch.inference_mode():
        int8_logits = gen._parallel_prefill(params).batch(prompt).prefill()[0]
        float_logits = float_gen._parallel_prefill(params).batch(prompt).prefill()[0]
    assert int(int8_logits.argmax()) == int(float_logits.argmax())
    difference = (int8_logits.log_softmax(-1) - float_logits.log_softmax(-1)).abs()
    assert 0 < difference.max() < 0.5


@pytest.mark.slow
def test_a_changed_prefix_or_model_misses_the_cache(model_and_tokenizer) -> None:
    store = PassageKVStore()
    params = GenerationParams(max_new_tokens=4, parallel=ParallelContexts())
    decode(make_generator(model_and_tokenizer, store), PASSAGES, params)
    stats = DecodeStats()
    decode(
        make_generator(model_and_tokenizer, store, system_prompt="Answer in French."), PASSAGES, params, stats
    )
    assert stats.passages_encoded == 3
    other_model = make_generator(model_and_tokenizer, store)
    other_model._model_id = "another model"
    stats = DecodeStats()
    decode(other_model, PASSAGES, params, stats)
    assert stats.passages_encoded == 3


@pytest.mark.slow
def test_parallel_contexts_compose_with_cad_and_drafting(model_and_tokenizer) -> None:
    gen = make_generator(model_and_tokenizer)
    doc = [PASSAGES[0]]
    cad = GenerationParams(max_new_tokens=12, cad=ContextAwareDecoding(0.5))
    expected = decode(gen, doc, cad)  # sequential CAD
    exact = {"parallel": ParallelContexts(ape_temperature=1.0, ape_scale=1.0)}  # equal to sequential
    assert (
        decode(gen, doc, GenerationParams(max_new_tokens=12, cad=ContextAwareDecoding(0.5), **exact))
        == expected
    )
    parallel = GenerationParams(max_new_tokens=16, parallel=ParallelContexts(ape_temperature=0.8))
    drafted = GenerationParams(
        max_new_tokens=16, drafting=Drafting(6), parallel=ParallelContexts(ape_temperature=0.8)
    )
    stats = DecodeStats()
    assert decode(gen, PASSAGES, drafted, stats) == decode(gen, PASSAGES, parallel)  # drafting stays lossless
    assert stats.accepted_tokens > 0
    both = GenerationParams(max_new_tokens=12, cad=ContextAwareDecoding(0.5), drafting=Drafting(6), **exact)
    assert decode(gen, doc, both) == expected


@pytest.mark.slow
def test_cads_context_free_row_reuses_the_cached_system_prompt(model_and_tokenizer) -> None:
    gen = make_generator(model_and_tokenizer)
    params = GenerationParams(cad=ContextAwareDecoding(0.5), parallel=ParallelContexts())
    parallel = gen._split_prompt(QUESTION, PASSAGES, params)
    context_free = gen._encode_context_free(QUESTION, params)[0]  # [len]
    shared = shared_prefix_length(context_free, parallel.prefix_ids)
    assert shared > 5  # the templated system prompt
    with torch.inference_mode():
        batch = gen._parallel_prefill(params).batch(parallel, [context_free])
        logits = batch.prefill()  # [2, vocab]
        alone = KVBatch(gen.model, [context_free]).prefill()  # [1, vocab]
    assert batch.lengths[1] == len(context_free)  # the next position follows the whole context-free prompt
    assert batch._valid[1].sum() == len(context_free)  # it sees its own tokens, cached or run, and no passage
    assert batch._valid[1, : batch._cached_valid.shape[1]].sum() == shared  # read from the cache, not run
    torch.testing.assert_close(logits[1], alone[0], atol=2e-4, rtol=1e-5)


@pytest.mark.slow
def test_parallel_contexts_stream_and_answer(model_and_tokenizer) -> None:
    gen = make_generator(model_and_tokenizer)
    params = GenerationParams(max_new_tokens=16, parallel=ParallelContexts())
    answer = gen.answer(QUESTION, PASSAGES, params)
    pieces = list(gen.stream(QUESTION, PASSAGES, params))
    assert len(pieces) > 1 and "".join(pieces).strip() == answer.text
    assert "Paris" in answer.text and answer.timings.new_tokens > 1
