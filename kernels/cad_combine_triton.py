"""Triton CAD combine: one program per row, two passes over the vocabulary.

Same contract as :func:`rag.kernels.cad_combine_ref.cad_combine_reference`. The first pass keeps an online
log-sum-exp of both rows (running maximum and rescaled sum, block by block, so vocabularies of any length,
e.g. Qwen's 151,936, stream through a fixed block); the second writes
``(1 + α)·a − α·b − ((1 + α)·lse(a) − α·lse(b))``. Imported only by the dispatcher (or a test); under
``TRITON_INTERPRET=1`` it runs on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rag.kernels.cad_combine_ref import check_cad_inputs


@triton.jit
def _online_lse(max_, sum_, x):
    """Fold a block ``x`` (-inf where out of range) into a running (max, sum of exp(x - max))."""
    new_max = tl.maximum(max_, tl.max(x, axis=0))
    safe = tl.where(new_max == float("-inf"), 0.0, new_max)
    return new_max, sum_ * tl.exp(max_ - safe) + tl.sum(tl.exp(x - safe), axis=0)


@triton.jit
def _cad_combine_kernel(
    a_ptr, b_ptr, out_ptr, vocab, alpha, sa, sb, so, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    a_row, b_row, out_row = a_ptr + row * sa, b_ptr + row * sb, out_ptr + row * so
    neg_inf = float("-inf")
    max_a, sum_a = tl.full([], neg_inf, tl.float32), tl.zeros([], tl.float32)
    max_b, sum_b = tl.full([], neg_inf, tl.float32), tl.zeros([], tl.float32)
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        ok = cols < vocab
        max_a, sum_a = _online_lse(max_a, sum_a, tl.load(a_row + cols, mask=ok, other=neg_inf).to(tl.float32))
        max_b, sum_b = _online_lse(max_b, sum_b, tl.load(b_row + cols, mask=ok, other=neg_inf).to(tl.float32))
    shift = (1 + alpha) * (max_a + tl.log(sum_a)) - alpha * (max_b + tl.log(sum_b))
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        ok = cols < vocab
        a = tl.load(a_row + cols, mask=ok, other=0.0).to(tl.float32)
        b = tl.load(b_row + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_row + cols, (1 + alpha) * a - alpha * b - shift, mask=ok)


def cad_combine_triton(
    a: torch.Tensor,  # [..., vocab]
    b: torch.Tensor,  # [..., vocab]
    alpha: float,
) -> torch.Tensor:
    """``[..., vocab]`` float32: ``(1 + α)·log_softmax(a) − α·log_softmax(b)`` along the last dimension."""
    check_cad_inputs(a, b, alpha)
    vocab = a.shape[-1]
    a2, b2 = a.reshape(-1, vocab), b.reshape(-1, vocab)
    if a2.stride(-1) != 1 or b2.stride(-1) != 1:
        a2, b2 = a2.contiguous(), b2.contiguous()
    out = torch.empty(a2.shape, dtype=torch.float32, device=a.device)
    if out.numel():
        block = min(4096, max(16, triton.next_power_of_2(vocab)))
        _cad_combine_kernel[(a2.shape[0],)](
            a2, b2, out, vocab, float(alpha), a2.stride(0), b2.stride(0), out.stride(0), BLOCK=block
        )
    return out.view(a.shape)
