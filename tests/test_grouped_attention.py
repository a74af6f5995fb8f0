"""Grouped SDPA: the same attention as transformers' SDPA, without repeating the key/value heads."""

from __future__ import annotations

import doctest

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import rag.lm.grouped_attention
from rag.bench.generate_baselines import stock_model
from rag.generation.decode.kv_batch import KVBatch
from rag.lm.attention import attention_implementation
from rag.lm.grouped_attention import GROUPED_SDPA, grouped_sdpa_attention

MIN = torch.finfo(torch.float32).min


class Attention(torch.nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def test_doctests() -> None:
    assert doctest.testmod(rag.lm.grouped_attention).failed == 0


def random_mask(batch: int, queries: int, keys: int, generator: torch.Generator) -> torch.Tensor:
    """``# [batch, 1, queries, keys]`` additive, about a third of the columns masked, the last never."""
    blocked = torch.rand(batch, 1, queries, keys, generator=generator) < 0.33
    blocked[..., -1] = False
    return torch.zeros(batch, 1, queries, keys).masked_fill_(blocked, MIN)


@pytest.mark.parametrize("queries", [2, 8, 32])
@pytest.mark.parametrize(("heads", "kv_heads"), [(6, 2), (9, 3), (14, 2)])
def test_grouped_equals_stock_sdpa(queries: int, heads: int, kv_heads: int) -> None:
    generator = torch.Generator().manual_seed(queries * heads)
    batch, keys, dim = 2, 57, 64
    query = torch.randn(batch, heads, queries, dim, generator=generator)
    key = torch.randn(batch, kv_heads, keys, dim, generator=generator)
    value = torch.randn(batch, kv_heads, keys, dim, generator=generator)
    mask = random_mask(batch, queries, keys, generator)
    module = Attention(heads // kv_heads)
    grouped, _ = grouped_sdpa_attention(module, query, key, value, mask, scaling=0.1)
    stock, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.1)
    assert grouped.shape == (batch, queries, heads, dim)
    torch.testing.assert_close(grouped, stock, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("queries", "heads", "masked"),
    [(1, 6, True), (33, 6, True), (8, 6, False), (8, 2, True)],
    ids=["one query", "prefill-sized", "no mask", "no head groups"],
)
def test_other_calls_go_to_stock_sdpa_unchanged(queries: int, heads: int, masked: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(1, heads, queries, 32, generator=generator)
    key, value = torch.randn(2, 1, 2, 40, 32, generator=generator)
    mask = random_mask(1, queries, 40, generator) if masked else None
    module = Attention(heads // 2)
    grouped, _ = grouped_sdpa_attention(module, query, key, value, mask)
    stock, _ = sdpa_attention_forward(module, query, key, value, mask)
    assert torch.equal(grouped, stock)


@pytest.mark.slow
def test_a_loaded_model_runs_grouped_sdpa_and_a_draft_tree_scores_as_with_stock_sdpa(smollm2_exact) -> None:
    model, tokenizer = smollm2_exact
    assert model.config._attn_implementation == GROUPED_SDPA
    prompt = tokenizer("The capital of France is Paris. The capital of", return_tensors="pt")["input_ids"][0]
    tree = ([11, 22, 33, 44, 55, 66], [-1, 0, 0, 1, 3, 2])  # two branches under the root's first child
    logits = {}
    with torch.inference_mode():
        for name in (GROUPED_SDPA, "sdpa"):
            with attention_implementation(model, name):
                batch = KVBatch(model, [prompt])
                batch.prefill()
                logits[name] = batch.extend(*tree)  # [1, 6, vocab]
    torch.testing.assert_close(logits[GROUPED_SDPA], logits["sdpa"], atol=1e-4, rtol=1e-5)


@pytest.mark.slow
def test_stock_model_runs_transformers_sdpa_then_restores(smollm2) -> None:
    model, _ = smollm2
    with stock_model(model, None):
        assert model.config._attn_implementation == "sdpa"
    assert model.config._attn_implementation == GROUPED_SDPA
