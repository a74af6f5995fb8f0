"""Pure-torch PQ asymmetric distance: query-side lookup tables gathered at the document codes and summed.

A PQ code gives each document one centroid number per subspace. A query is scored against every document
without decoding any: first its lookup tables, ``tables[q, m, c] = <q_m, centroids[m, c]>`` (the query's
``m``-th sub-vector against each centroid of subspace ``m``), then

    scores[q, n] = Σ_m tables[q, m, codes[n, m]]

The gradient with respect to the tables scatters each score's gradient back to the entries it read,

    grad_tables[q, m, c] = Σ_{n : codes[n, m] = c} grad_scores[q, n]

and autograd carries it on to the query vectors and the centroids the tables were built from.

>>> tables = torch.tensor([[[1.0, 2.0], [10.0, 20.0]]], requires_grad=True)  # [Q=1, M=2, ksub=2]
>>> codes = torch.tensor([[0, 1], [1, 1], [1, 0]])                             # [N=3, M=2]
>>> scores = pq_adc_reference(tables, codes)
>>> scores.tolist()
[[21.0, 22.0, 12.0]]
>>> scores.sum().backward()
>>> tables.grad.tolist()  # how many documents read each entry
[[[1.0, 2.0], [1.0, 2.0]]]
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def pq_adc_forward_reference(
    tables: torch.Tensor,  # [Q, M, ksub] float
    codes: torch.Tensor,  # [N, M] int64, each in 0 .. ksub-1
) -> torch.Tensor:
    """``[Q, N]`` float32: ``Σ_m tables[q, m, codes[n, m]]``.

    One row gather per subspace on tables laid out ``[M, ksub, Q]``, so each document reads its entry for
    all queries as one contiguous row; memory stays at ``[N, Q]`` whatever the number of subspaces.
    """
    check_adc_inputs(tables, codes)
    by_entry = tables.float().permute(1, 2, 0).contiguous()  # [M, ksub, Q]
    scores = by_entry[0].index_select(0, codes[:, 0])  # [N, Q]
    for m in range(1, codes.shape[1]):
        scores += by_entry[m].index_select(0, codes[:, m])
    return scores.T


def pq_adc_backward_reference(
    grad_scores: torch.Tensor,  # [Q, N] float
    codes: torch.Tensor,  # [N, M] int64
    ksub: int,
) -> torch.Tensor:
    """``[Q, M, ksub]`` float32: the gradient of the scores with respect to the tables."""
    by_document = grad_scores.float().T.contiguous()  # [N, Q]
    grad = torch.zeros(codes.shape[1], ksub, grad_scores.shape[0], device=grad_scores.device)  # [M, ksub, Q]
    for m in range(codes.shape[1]):
        grad[m].index_add_(0, codes[:, m], by_document)
    return grad.permute(2, 0, 1)


class LookupSum(torch.autograd.Function):
    """Autograd around a (forward, backward) pair of ADC implementations, the reference's or Triton's."""

    @staticmethod
    def forward(ctx, tables, codes, forward: Callable, backward: Callable):  # type: ignore[override]
        ctx.save_for_backward(codes)
        ctx.ksub, ctx.backward_fn, ctx.dtype = tables.shape[-1], backward, tables.dtype
        return forward(tables, codes)

    @staticmethod
    def backward(ctx, grad_scores):  # type: ignore[override]
        (codes,) = ctx.saved_tensors
        grad = ctx.backward_fn(grad_scores.contiguous(), codes, ctx.ksub).to(ctx.dtype)
        return grad, None, None, None


def pq_adc_reference(tables: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``[Q, N]`` scores of ``[Q, M, ksub]`` tables at ``[N, M]`` codes, differentiable in the tables."""
    return LookupSum.apply(tables, codes, pq_adc_forward_reference, pq_adc_backward_reference)


def check_adc_inputs(tables: torch.Tensor, codes: torch.Tensor) -> None:
    """Raise ``ValueError`` on shapes the lookup cannot take."""
    if tables.dim() != 3 or codes.dim() != 2 or codes.shape[1] != tables.shape[1]:
        raise ValueError(
            f"expected tables [Q, M, ksub] and codes [N, M]; got {tuple(tables.shape)}, {tuple(codes.shape)}"
        )
    if codes.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"codes must be int32 or int64, got {codes.dtype}")
