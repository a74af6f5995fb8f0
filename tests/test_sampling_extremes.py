"""Property: sampling is defined for every value GenerationParams accepts, however extreme, and for logits
holding NaN or infinities: a finite distribution that sums to 1, and a token id within the vocabulary."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.errors import ConfigError
from rag.generation.base import GenerationParams
from rag.generation.decode.sampling import logit_bias, next_token, target_probs

TEMPERATURES = st.one_of(
    st.sampled_from([5e-324, 1e-300, 1e-45, 1e-8, 1.0, 2.0, 1e30, 1e308]),
    st.floats(min_value=0, max_value=1e308, allow_nan=False, allow_infinity=False, exclude_min=True),
)
TOP_P = st.one_of(
    st.sampled_from([5e-324, 1e-300, 1e-8, 0.5, 1.0]), st.floats(min_value=5e-324, max_value=1.0)
)
TOP_K = st.sampled_from([0, 1, 2, 7, 50, 2**31, 2**62])
SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 3.4e38, -3.4e38, 1e-45])


@st.composite
def logits(draw: st.DrawFn) -> torch.Tensor:
    values = draw(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=2, max_size=64))
    row = torch.tensor(values, dtype=torch.float32)
    for position in draw(st.lists(st.integers(0, len(values) - 1), max_size=4)):
        row[position] = draw(SPECIAL)
    return row


@settings(max_examples=300, deadline=None)
@given(logits(), TEMPERATURES, TOP_P, TOP_K, st.integers(0, 2**63 - 1))
def test_sampling_is_defined_everywhere(row, temperature, top_p, top_k, seed) -> None:
    params = GenerationParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    probs = target_probs(row, params)  # [vocab]
    assert bool(torch.isfinite(probs).all()) and bool((probs >= 0).all())
    assert abs(float(probs.sum()) - 1.0) < 1e-4
    token = next_token(row, params, torch.Generator().manual_seed(seed))
    assert 0 <= token < row.numel() and probs[token] > 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=64))
def test_a_vanishing_temperature_samples_only_the_best_tokens(values) -> None:
    row = torch.tensor(values, dtype=torch.float32)
    for temperature in (5e-324, 1e-300):
        token = next_token(row, GenerationParams(temperature=temperature, seed=0))
        assert row[token] == row.max()  # the best, or one of the tied best


def test_logit_bias_is_checked_and_given_as_tensors() -> None:
    assert logit_bias(GenerationParams(), 10) is None
    ids, biases = logit_bias(GenerationParams(logit_bias=((3, 100.0), (7, -5.5))), 10)
    assert ids.tolist() == [3, 7] and biases.tolist() == [100.0, -5.5]
    with pytest.raises(ConfigError, match="not in the vocabulary"):
        logit_bias(GenerationParams(logit_bias=((10, 1.0),)), 10)
    for bad in (((-1, 1.0),), ((1, 101.0),)):
        with pytest.raises(ConfigError, match="logit_bias"):
            GenerationParams(logit_bias=bad)
