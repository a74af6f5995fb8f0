"""Segmented attention: the torch reference against a naive formula, the Triton kernel against the reference.

Without a GPU the Triton kernel runs under the interpreter: tests/conftest.py sets ``TRITON_INTERPRET=1``
before anything imports Triton.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rag.kernels import segmented_attention
from rag.kernels.dispatch import use_triton
from rag.kernels.segmented_attention_ref import segmented_attention_reference
from rag.kernels.segmented_attention_triton import segmented_attention_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def naive_segmented_attention(q, k, v, segment_ids, temperature, lse_scale, mask=None, sm_scale=None):
    """The formula spelled out in float64: one softmax per segment, then the explicit log-sum-exp merge."""
    batch, heads, lq, dim = q.shape
    group = heads // k.shape[1]
    scale = dim**-0.5 if sm_scale is None else sm_scale
    q64, k64, v64 = q.double(), k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    visible = torch.ones(batch, heads, lq, k.shape[2], dtype=torch.bool)
    if mask is not None:
        visible = visible & mask.cpu()
    out = torch.zeros(batch, heads, lq, dim, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(lq):
                lses, outputs = [], []
                for s in range(len(temperature)):
                    cols = [j for j in range(k.shape[2]) if segment_ids[j] == s and visible[b, h, i, j]]
                    if not cols:
                        continue  # an empty or fully masked segment has weight zero
                    logits = (k64[b, h, cols] @ q64[b, h, i]) * scale / float(temperature[s])
                    lse = torch.logsumexp(logits, 0)
                    outputs.append(torch.exp(logits - lse) @ v64[b, h, cols])
                    lses.append(float(lse_scale[s]) * lse)
                if lses:  # a row that sees no key stays zero
                    weights = torch.softmax(torch.stack(lses), 0)
                    out[b, h, i] = sum(w * o for w, o in zip(weights, outputs, strict=True))
    return out.float()


def make_case(name: str, seed: int = 0):
    """Random inputs with odd sizes; each case adds one difficulty."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    mask = None
    if name == "one_token":  # one query, one key, one segment
        b, hq, hk, lq, d, ids = 1, 2, 2, 1, 16, [0]
    elif name == "gqa_causal":  # 6 query heads over 2 key heads, a causal mask over the last keys
        b, hq, hk, lq, d = 2, 6, 2, 7, 24
        ids = [0] * 11 + [1] * 27 + [2] * lq
        lk = len(ids)
        mask = torch.ones(lq, lk, dtype=torch.bool)
        mask[:, lk - lq :] = torch.ones(lq, lq, dtype=torch.bool).tril()
    elif name == "empty_segment":  # segment 2 has no key; a per-(batch, row) mask
        b, hq, hk, lq, d = 1, 4, 1, 5, 8
        ids = [0] * 9 + [1] * 13 + [3] * 11
        mask = torch.rand(b, 1, lq, len(ids), generator=g) > 0.3
    elif name == "interleaved":  # segments not contiguous in the key order
        b, hq, hk, lq, d = 1, 3, 3, 3, 40
        ids = torch.randint(0, 3, (29,), generator=g).tolist()
    elif name == "masked_rows":  # a row that sees nothing, a row that sees only segment 1
        b, hq, hk, lq, d = 2, 2, 1, 9, 16
        ids = [0] * 8 + [1] * 12
        mask = torch.rand(b, hq, lq, len(ids), generator=g) > 0.5
        mask[0, 1, 3] = False
        mask[1, 0, 4, :8] = False
    elif name == "ape":  # as the generator calls it: prefix and causal question in segment 0, passages in 1
        b, hq, hk, lq, d = 1, 4, 2, 6, 32
        ids = [0] * 5 + [1] * 21 + [0] * lq
        lk = len(ids)
        mask = torch.ones(lq, lk, dtype=torch.bool)
        mask[:, lk - lq :] = torch.ones(lq, lq, dtype=torch.bool).tril()
    elif name == "long":  # several query blocks, segments spanning several key blocks (online rescaling)
        b, hq, hk, lq, d = 1, 2, 1, 37, 16
        ids = [0] * 70 + [1] * 45 + [0] * lq
        lk = len(ids)
        mask = torch.ones(lq, lk, dtype=torch.bool)
        mask[:, lk - lq :] = torch.ones(lq, lq, dtype=torch.bool).tril()
    else:
        raise ValueError(name)
    segments = max(ids) + 1 if name != "empty_segment" else 4
    q, k, v = randn(b, hq, lq, d), randn(b, hk, len(ids), d), randn(b, hk, len(ids), d)
    temperature = 0.5 + torch.rand(segments, generator=g)
    lse_scale = 0.5 + torch.rand(segments, generator=g)
    return q, k, v, torch.tensor(ids), temperature, lse_scale, mask


CASES = ["one_token", "gqa_causal", "empty_segment", "interleaved", "masked_rows", "ape", "long"]


@pytest.mark.parametrize("name", CASES)
def test_reference_matches_the_naive_formula(name: str) -> None:
    inputs = make_case(name)
    torch.testing.assert_close(
        segmented_attention_reference(*inputs), naive_segmented_attention(*inputs), rtol=1e-5, atol=1e-5
    )


def test_reference_rows_that_see_nothing_are_zero() -> None:
    q, k, v, ids, t, a, mask = make_case("masked_rows")
    out = segmented_attention_reference(q, k, v, ids, t, a, mask)
    assert out[0, 1, 3].abs().max() == 0 and not out.isnan().any()


def test_reference_with_unit_temperature_and_scale_is_plain_attention() -> None:
    q, k, v, ids, _, _, mask = make_case("gqa_causal")
    ones = torch.ones(3)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), attn_mask=mask
    )
    torch.testing.assert_close(segmented_attention_reference(q, k, v, ids, ones, ones, mask), expected)


def test_reference_keeps_dtype_and_explicit_scale() -> None:
    q, k, v, ids, t, a, _ = make_case("interleaved")
    out = segmented_attention_reference(q.bfloat16(), k.bfloat16(), v.bfloat16(), ids, t, a, sm_scale=0.3)
    expected = naive_segmented_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), ids, t, a, sm_scale=0.3)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_bad_inputs_are_refused() -> None:
    q, k, v, ids, t, a, _ = make_case("interleaved")
    with pytest.raises(ValueError, match="segment_ids must lie"):
        segmented_attention_reference(q, k, v, ids + 5, t, a)
    with pytest.raises(ValueError, match="segment_ids has shape"):
        segmented_attention_reference(q, k, v, ids[:-1], t, a)
    with pytest.raises(ValueError, match="does not fit"):
        segmented_attention_reference(q[:, :2], k, v, ids, t, a)


@pytest.mark.parametrize("name", CASES)
def test_triton_matches_the_reference(name: str) -> None:
    q, k, v, ids, t, a, mask = (x if x is None else x.to(DEVICE) for x in make_case(name, seed=1))
    expected = segmented_attention_reference(q, k, v, ids, t, a, mask)
    torch.testing.assert_close(
        segmented_attention_triton(q, k, v, ids, t, a, mask), expected, rtol=1e-5, atol=1e-5
    )


def test_triton_non_contiguous_inputs_and_scale() -> None:
    q, k, v, ids, t, a, mask = make_case("gqa_causal", seed=2)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # [B, H, L, D] view over [B, L, H, D] memory
    k, v = k.transpose(1, 2).contiguous().transpose(1, 2), v.transpose(1, 2).contiguous().transpose(1, 2)
    expected = segmented_attention_reference(q, k, v, ids, t, a, mask, sm_scale=0.2)
    torch.testing.assert_close(segmented_attention_triton(q, k, v, ids, t, a, mask, sm_scale=0.2), expected)


def test_dispatcher_takes_the_reference_on_cpu() -> None:
    inputs = make_case("ape")
    assert not use_triton(inputs[0])
    assert torch.equal(segmented_attention(*inputs), segmented_attention_reference(*inputs))


def test_importing_and_calling_on_cpu_never_imports_triton() -> None:
    code = (
        "import sys, torch; import rag.kernels as K; ones = torch.ones(1);"
        "K.segmented_attention(torch.ones(1, 1, 1, 4), torch.ones(1, 1, 2, 4), torch.ones(1, 1, 2, 4),"
        " torch.zeros(2, dtype=torch.long), ones, ones); K.cad_combine(ones, ones, 0.5);"
        "print('triton' in sys.modules)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "False"


def test_reference_is_differentiable() -> None:
    """Under autograd the reference keeps its intermediates; at t = a = 1 its gradients are attention's."""
    q, k, v, ids, _, _, mask = make_case("gqa_causal")
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    ones = torch.ones(3)
    upstream = torch.randn(q.shape)
    out = segmented_attention_reference(q, k, v, ids, ones, ones, mask)
    grads = torch.autograd.grad(out, (q, k, v), upstream)
    expected_out = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), attn_mask=mask
    )
    expected = torch.autograd.grad(expected_out, (q, k, v), upstream)
    for grad, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(grad, want)


@pytest.mark.parametrize("query_tokens", [20, 1])
def test_bench_baseline_computes_the_same_attention(query_tokens: int) -> None:
    """``rag bench kernels`` times the reference against APE's two-call formulation of the same numbers."""
    from rag.bench.kernels import LSE_SCALE, TEMPERATURE, ape_inputs, unfused_ape_attention

    q, k, v, ids, t, a, mask, context = ape_inputs(query_tokens)
    torch.testing.assert_close(
        segmented_attention_reference(q, k, v, ids, t, a, mask),
        unfused_ape_attention(q, k, v, context, mask, TEMPERATURE, LSE_SCALE),
    )
