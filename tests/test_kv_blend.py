"""Blending parallel-encoded passages (CacheBlend): RoPE shift, selection, full recompute == sequential."""

from __future__ import annotations

import argparse
from dataclasses import replace

import pytest
import torch
from test_parallel_context import PASSAGES
from transformers import DynamicCache

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
from rag.generation.contexts.kv_blend import deviating_columns, shift_block
from rag.generation.contexts.passage_kv_store import PassageKV, PassageKVStore
from rag.generation.decode.kv_batch import KVBatch
from rag.registry import make_config

QUESTION = "Which city has about 3.7 million inhabitants?"


def test_params_and_cli_take_the_blend_ratio() -> None:
    for bad in (-0.1, 0.0, 1.5):
        with pytest.raises(ConfigError):
            GenerationParams(keep_passages=0, parallel=BlendedContexts(bad))
    parser = argparse.ArgumentParser()
    add_generation_options(parser)
    params = generation_params(parser.parse_args(["--contexts", "blend:0.2"]))
    assert params.parallel == BlendedContexts(0.2)
    assert generation_params(parser.parse_args([])).parallel is None
    for bad in ("blend", "blend:0", "blend:x", "blend:0.2,0.9", "sequential:1", "serial"):
        with pytest.raises(SystemExit):  # argparse reports the MODE and exits
            parser.parse_args(["--contexts", bad])
    parallel_default = GenerationParams(parallel=ParallelContexts(0.5, 0.5))
    back = generation_params(parser.parse_args(["--contexts", "sequential"]), parallel_default)
    assert back.parallel is None  # a config's parallel default turned off on the command line
    loaded = make_config(CausalLMConfig, {"defaults": {"parallel": {"ratio": 0.3}}})  # a pipeline config
    assert loaded.defaults.parallel == BlendedContexts(0.3)
    assert make_config(CausalLMConfig, {"defaults": {"parallel": {}}}).defaults.parallel == ParallelContexts()
    config = CausalLMConfig(defaults=GenerationParams(parallel=BlendedContexts(0.3)))
    assert config.defaults.parallel == BlendedContexts(0.3)


# -- on SmolLM2 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(smollm2_exact) -> CausalLMGenerator:
    model, tokenizer = smollm2_exact
    config = CausalLMConfig(model="smollm2-135m-instruct", defaults=GenerationParams(max_new_tokens=12))
    return CausalLMGenerator(config, model=model, tokenizer=tokenizer, passage_store=PassageKVStore())


def decode(gen: CausalLMGenerator, params: GenerationParams, stats: DecodeStats | None = None) -> list[int]:
    ids = gen._encode_prompt(QUESTION, PASSAGES, params)
    context_free = gen._encode_context_free(QUESTION, params)
    parallel = gen._split_prompt(QUESTION, PASSAGES, params)
    return list(gen._answer_tokens(ids, params, context_free, stats, parallel))


def keys_at(model, ids: torch.Tensor, first_position: int) -> tuple[torch.Tensor, ...]:
    cache = DynamicCache(config=model.config)
    positions = torch.arange(first_position, first_position + ids.shape[1])[None]
    with torch.inference_mode():
        model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True)
    return tuple(layer.keys[0] for layer in cache.layers)  # each [kv_heads, len, head_dim]


@pytest.mark.slow
def test_shifting_a_block_equals_encoding_it_further_on(generator) -> None:
    ids = generator.tokenizer("Rome was founded in 753 BC.", return_tensors="pt")["input_ids"]
    near, far = keys_at(generator.model, ids, 3), keys_at(generator.model, ids, 40)
    block = PassageKV(near, near)  # the values are not looked at
    shifted = shift_block(generator.model, block, 37)
    for layer, (got, expected) in enumerate(zip(shifted.keys, far, strict=True)):
        torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-3, msg=f"layer {layer}")
    assert (near[0] - far[0]).abs().max() > 0.1  # the shift is not a no-op


@pytest.mark.slow
def test_recomputing_every_passage_token_equals_sequential_prefill(generator) -> None:
    sequential = GenerationParams(keep_passages=0, max_new_tokens=12)
    blended = GenerationParams(keep_passages=0, max_new_tokens=12, parallel=BlendedContexts(1.0))
    ids = generator._encode_prompt(QUESTION, PASSAGES, sequential)
    prompt = generator._split_prompt(QUESTION, PASSAGES, blended)
    with torch.inference_mode():
        plain = KVBatch(generator.model, [ids[0]]).prefill()
        cached = generator._parallel_prefill(blended).batch(prompt).prefill()
    torch.testing.assert_close(cached, plain, atol=2e-4, rtol=0)
    stats = DecodeStats()
    assert decode(generator, blended, stats) == list(generator._answer_tokens(ids, sequential))
    assert stats.blended_tokens == sum(len(p) for p in prompt.passage_ids)


@pytest.mark.slow
def test_selection_skips_the_first_passage_and_grows_with_the_ratio(generator) -> None:
    params = GenerationParams(keep_passages=0, parallel=BlendedContexts(0.5))
    prompt = generator._split_prompt(QUESTION, PASSAGES, params)
    prefill = generator._parallel_prefill(params)
    prefix, passages = prefill.blocks(prompt)
    offsets = [0, passages[0].tokens, passages[0].tokens + passages[1].tokens]
    blocks = [prefix, *(shift_block(generator.model, b, d) for b, d in zip(passages, offsets, strict=True))]
    cache = DynamicCache(config=generator.model.config)
    for layer in range(len(prefix.keys)):
        k = torch.cat([b.keys[layer] for b in blocks], dim=1)[None]
        v = torch.cat([b.values[layer] for b in blocks], dim=1)[None]
        cache.update(k, v, layer)
    context = torch.cat([prompt.prefix_ids, *prompt.passage_ids])
    with torch.inference_mode():
        small = deviating_columns(generator.model, cache, context, prefix.tokens, 0.2)
        large = deviating_columns(generator.model, cache, context, prefix.tokens, 0.5)
    passage_tokens = len(context) - prefix.tokens
    assert len(small) == round(0.2 * passage_tokens) and len(large) == round(0.5 * passage_tokens)
    assert torch.equal(small, small.sort().values) and set(small.tolist()) <= set(large.tolist())
    # the first passage sees only the prefix in either encoding: its keys do not move
    assert int(small.min()) >= prefix.tokens + passages[0].tokens


@pytest.mark.slow
def test_blending_is_deterministic_and_composes_with_cad_and_drafting(generator) -> None:
    params = GenerationParams(keep_passages=0, max_new_tokens=12, parallel=BlendedContexts(0.2))
    blended = decode(generator, params)
    stats = DecodeStats()
    assert decode(generator, params, stats) == blended and stats.passages_from_memory == 3  # warm
    passage_tokens = sum(len(p) for p in generator._split_prompt(QUESTION, PASSAGES, params).passage_ids)
    assert stats.blended_tokens == round(0.2 * passage_tokens)
    drafted = replace(params, drafting=Drafting(4))
    assert decode(generator, drafted) == blended  # drafting stays lossless over a blended cache
    full = {"parallel": BlendedContexts(1.0)}
    cad = GenerationParams(keep_passages=0, max_new_tokens=12, cad=ContextAwareDecoding(0.5))
    assert decode(generator, replace(cad, **full)) == decode(generator, cad)
