"""Triton PQ asymmetric distance: the gather-and-sum forward and the scatter-add backward.

Same contract as :mod:`rag.kernels.pq_adc_ref`. The forward gives each program a block of queries and a
block of documents and adds, subspace by subspace, the table entries the documents' codes point at. The
backward gives each program a block of queries, one subspace and a block of table entries, and adds the
score gradients of every document whose code is that entry, as the product of the gradient block with a
one-hot block of the codes: no atomics, so the result does not depend on scheduling. Imported only by the
dispatcher (or a test); under ``TRITON_INTERPRET=1`` it runs on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rag.kernels.pq_adc_ref import LookupSum, check_adc_inputs


@triton.jit
def _adc_forward_kernel(
    tables_ptr, codes_ptr, scores_ptr, queries, docs, subspaces,
    stq, stm, stc, scn, scm, ssq, ssn,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    qs = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    q_ok, n_ok = qs < queries, ns < docs
    acc = tl.zeros([BLOCK_Q, BLOCK_N], tl.float32)
    for m in range(subspaces):
        code = tl.load(codes_ptr + ns * scn + m * scm, mask=n_ok, other=0)  # [BLOCK_N]
        entry = tl.load(
            tables_ptr + qs[:, None] * stq + m * stm + code[None, :] * stc,
            mask=q_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        acc += entry.to(tl.float32)
    tl.store(scores_ptr + qs[:, None] * ssq + ns[None, :] * ssn, acc, mask=q_ok[:, None] & n_ok[None, :])


@triton.jit
def _adc_backward_kernel(
    grad_ptr, codes_ptr, out_ptr, queries, docs, ksub,
    sgq, sgn, scn, scm, soq, som, soc,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    qs = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    m = tl.program_id(1)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    q_ok, c_ok = qs < queries, cs < ksub
    acc = tl.zeros([BLOCK_Q, BLOCK_C], tl.float32)
    for n0 in range(0, docs, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        n_ok = ns < docs
        grad = tl.load(
            grad_ptr + qs[:, None] * sgq + ns[None, :] * sgn, mask=q_ok[:, None] & n_ok[None, :], other=0.0
        ).to(tl.float32)  # [BLOCK_Q, BLOCK_N]
        code = tl.load(codes_ptr + ns * scn + m * scm, mask=n_ok, other=-1)  # [BLOCK_N]; -1 matches nothing
        one_hot = (code[:, None] == cs[None, :]).to(tl.float32)  # [BLOCK_N, BLOCK_C]
        acc += tl.dot(grad, one_hot, input_precision="ieee")
    tl.store(
        out_ptr + qs[:, None] * soq + m * som + cs[None, :] * soc, acc, mask=q_ok[:, None] & c_ok[None, :]
    )


def pq_adc_forward_triton(tables: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``[Q, N]`` float32: ``Σ_m tables[q, m, codes[n, m]]``."""
    check_adc_inputs(tables, codes)
    queries, subspaces, _ = tables.shape
    docs, codes = codes.shape[0], codes.to(tables.device)
    scores = torch.empty(queries, docs, dtype=torch.float32, device=tables.device)
    block_q, block_n = 16, 64
    grid = (triton.cdiv(queries, block_q), triton.cdiv(docs, block_n))
    _adc_forward_kernel[grid](
        tables, codes, scores, queries, docs, subspaces,
        *tables.stride(), *codes.stride(), *scores.stride(),
        BLOCK_Q=block_q, BLOCK_N=block_n,
    )  # fmt: skip
    return scores


def pq_adc_backward_triton(grad_scores: torch.Tensor, codes: torch.Tensor, ksub: int) -> torch.Tensor:
    """``[Q, M, ksub]`` float32: the gradient of the scores with respect to the tables."""
    queries, docs = grad_scores.shape
    subspaces = codes.shape[1]
    out = torch.empty(queries, subspaces, ksub, dtype=torch.float32, device=grad_scores.device)
    block_q, block_c = 16, min(128, max(16, triton.next_power_of_2(ksub)))
    grid = (triton.cdiv(queries, block_q), subspaces, triton.cdiv(ksub, block_c))
    _adc_backward_kernel[grid](
        grad_scores, codes, out, queries, docs, ksub,
        *grad_scores.stride(), *codes.stride(), *out.stride(),
        BLOCK_Q=block_q, BLOCK_N=32, BLOCK_C=block_c,
    )  # fmt: skip
    return out


def pq_adc_triton(tables: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``[Q, N]`` scores of ``[Q, M, ksub]`` tables at ``[N, M]`` codes, differentiable in the tables."""
    return LookupSum.apply(tables, codes, pq_adc_forward_triton, pq_adc_backward_triton)
