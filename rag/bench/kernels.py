"""Suite ``kernels``: the torch references of rag.kernels against the unfused torch code each one replaces.

On a CPU the dispatcher runs the references, so these are the figures that matter there (the Triton
kernels run on CUDA tensors only). Each measure times both sides on the same inputs, alternating rounds, and
keeps each side's best round, so load on the machine hurts both alike. The baselines:

- segmented attention: APE's formulation, two attention calls (the passages at temperature ``t``, the prefix
  and question keys together) with explicit log-sum-exps, merged by a softmax over the scaled log-sum-exps;
  grouped-query heads repeated as transformers' eager attention does;
- PQ asymmetric distance: decode every document from its codes, then one matrix product (what JPQ tuning did);
- CAD combine: two ``log_softmax`` calls and the weighted difference (what the CAD processor did).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from rag.bench.report import Row, SuiteResult
from rag.kernels.cad_combine_ref import cad_combine_reference
from rag.kernels.pq_adc_ref import pq_adc_reference
from rag.kernels.segmented_attention_ref import segmented_attention_reference
from rag.timing import best_seconds

# Qwen2.5-0.5B-like attention: 14 query heads over 2 key/value heads of 64; a 32-token prefix, 5 passages of
# 150 tokens encoded in parallel, then the question
HEADS, KV_HEADS, DIM, PREFIX, PASSAGES, PASSAGE_LEN, QUESTION = 14, 2, 64, 32, 5, 150, 20
TEMPERATURE, LSE_SCALE = 0.9, 0.85


def unfused_ape_attention(
    q: torch.Tensor,  # [B, Hq, Lq, D]
    k: torch.Tensor,  # [B, Hk, Lk, D]
    v: torch.Tensor,  # [B, Hk, Lk, D]
    context: slice,  # the passages' keys
    mask: torch.Tensor,  # [B, 1, Lq, Lk] bool
    temperature: float,
    lse_scale: float,
) -> torch.Tensor:
    """APE's attention as its pseudocode writes it: context and other keys attended apart, then merged."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # transformers' repeat_kv
    other_keys = torch.cat([k[:, :, : context.start], k[:, :, context.stop :]], dim=2)
    other_values = torch.cat([v[:, :, : context.start], v[:, :, context.stop :]], dim=2)
    other_mask = torch.cat([mask[..., : context.start], mask[..., context.stop :]], dim=-1)
    scale = q.shape[-1] ** -0.5

    def attention(keys, values, visible, logit_scale):
        logits = (q @ keys.transpose(-1, -2)) * logit_scale
        logits = logits.masked_fill(~visible, float("-inf"))
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        return torch.softmax(logits, dim=-1) @ values, lse

    out_context, lse_context = attention(
        k[:, :, context], v[:, :, context], mask[..., context], scale / temperature
    )
    out_other, lse_other = attention(other_keys, other_values, other_mask, scale)
    weights = torch.softmax(torch.stack([lse_context * lse_scale, lse_other]), dim=0)
    return weights[0] * out_context + weights[1] * out_other


def ape_inputs(query_tokens: int, seed: int = 0):
    """(q, k, v, segment_ids, temperature, lse_scale, mask, context slice) for the APE shape above."""
    g = torch.Generator().manual_seed(seed)
    context = slice(PREFIX, PREFIX + PASSAGES * PASSAGE_LEN)
    keys = context.stop + QUESTION
    q = torch.randn(1, HEADS, query_tokens, DIM, generator=g)
    k = torch.randn(1, KV_HEADS, keys, DIM, generator=g)
    v = torch.randn(1, KV_HEADS, keys, DIM, generator=g)
    segment_ids = torch.zeros(keys, dtype=torch.long)
    segment_ids[context] = 1  # segment 0: prefix and question; segment 1: the passages
    mask = torch.ones(1, 1, query_tokens, keys, dtype=torch.bool)  # the question attends causally
    mask[0, 0, :, keys - query_tokens :] = torch.ones(query_tokens, query_tokens, dtype=torch.bool).tril()
    temperature, lse_scale = torch.tensor([1.0, TEMPERATURE]), torch.tensor([1.0, LSE_SCALE])
    return q, k, v, segment_ids, temperature, lse_scale, mask, context


def _best_rates(
    ours: Callable[[], object], baseline: Callable[[], object], rounds: int
) -> tuple[float, float]:
    """Calls per second of each side, best of ``rounds`` alternating rounds of enough calls to take ~20 ms."""
    mine, theirs = best_seconds((ours, baseline), rounds, round_seconds=0.02)
    return 1 / mine, 1 / theirs


def _segmented_rows(rounds: int) -> list[Row]:
    rows = []
    for query_tokens, what in ((QUESTION, "question prefill"), (1, "one decoding step")):
        q, k, v, ids, t, a, mask, context = ape_inputs(query_tokens)
        ours, base = _best_rates(
            lambda: segmented_attention_reference(q, k, v, ids, t, a, mask),  # noqa: B023
            lambda: unfused_ape_attention(q, k, v, context, mask, TEMPERATURE, LSE_SCALE),  # noqa: B023
            rounds,
        )
        keys = k.shape[2]
        measure = f"segmented attention, {what} ({query_tokens} q × {keys} keys)"
        rows.append(Row(measure, ours, base, "calls/s", ">= 1.00×"))
    return rows


def _pq_rows(rounds: int) -> list[Row]:
    g = torch.Generator().manual_seed(0)
    queries, docs, subspaces, ksub, dsub = 32, 5183, 48, 256, 8  # a JPQ step on SciFact under PQ48x8
    centroids = torch.randn(subspaces, ksub, dsub, generator=g, requires_grad=True)
    codes = torch.randint(0, ksub, (docs, subspaces), generator=g)
    q = torch.randn(queries, subspaces * dsub, generator=g, requires_grad=True)
    m = torch.arange(subspaces)

    def adc() -> torch.Tensor:
        tables = torch.einsum("bmd,mkd->bmk", q.view(queries, subspaces, dsub), centroids)
        return pq_adc_reference(tables, codes)

    def decode_then_multiply() -> torch.Tensor:
        return q @ centroids[m, codes].flatten(1).T

    def backward(score: Callable[[], torch.Tensor]) -> Callable[[], object]:
        return lambda: torch.autograd.grad(score().square().sum(), (q, centroids))

    with torch.no_grad():
        forward = _best_rates(adc, decode_then_multiply, rounds)
    both = _best_rates(backward(adc), backward(decode_then_multiply), rounds)
    shape = f"{queries} q × {docs} docs, PQ{subspaces}x8"
    return [
        Row(f"PQ scores, forward ({shape})", *forward, "calls/s"),
        Row(f"PQ scores, forward + backward to q and centroids ({shape})", *both, "calls/s"),
    ]


def _cad_rows(rounds: int) -> list[Row]:
    rows = []
    for rows_count in (1, 8):
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(rows_count, 151_936, generator=g), torch.randn(rows_count, 151_936, generator=g)
        rates = _best_rates(
            lambda: cad_combine_reference(a, b, 0.5),  # noqa: B023
            lambda: 1.5 * a.float().log_softmax(-1) - 0.5 * b.float().log_softmax(-1),  # noqa: B023
            rounds,
        )
        rows.append(Row(f"CAD combine ({rows_count} × 151,936 vocabulary)", *rates, "calls/s"))
    return rows


def run(rounds: int = 15) -> SuiteResult:
    """Time every reference against its unfused baseline; ``rounds`` alternating rounds per measure."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with torch.inference_mode():
        attention, cad = _segmented_rows(rounds), _cad_rows(rounds)
    return SuiteResult(
        suite="kernels",
        title="Kernels: torch references vs the unfused torch code they replace (CPU)",
        baseline="APE's two-call attention with explicit log-sum-exps; decode-then-matmul PQ scoring; two "
        "log-softmaxes for CAD — same inputs, same process",
        rows=[*attention, *_pq_rows(rounds), *cad],
        notes=[
            f"Each side keeps its best of {rounds} alternating rounds; torch uses "
            f"{torch.get_num_threads()} thread(s); 1-minute load average {load:.2f} at the start.",
            f"Segmented attention: {HEADS} query heads over {KV_HEADS} key/value heads of {DIM}, "
            f"{PREFIX}-token prefix + {PASSAGES} × {PASSAGE_LEN}-token passages + {QUESTION}-token question, "
            "float32, the generator's two segments (prefix and question; passages at t = 0.9, scale 0.85).",
            "The Triton kernels are not timed here: they run on CUDA tensors (on a CPU only under "
            "`TRITON_INTERPRET=1`, for the tests).",
        ],
    )
