"""Pure-torch CAD combine: ``(1 + α)·log_softmax(a) − α·log_softmax(b)`` over the vocabulary.

Context-aware decoding (:mod:`rag.generation.decode.cad`) scores the next token with the logits given the
passages (``a``) against the logits given the question only (``b``). The reference keeps torch's fused
log-softmax for each row and combines the two in place: two ``[rows, vocab]`` allocations where the
written-out formula makes five (at a 151,936-token vocabulary each is a fresh, page-faulted block). The
Triton kernel reads each row twice (an online log-sum-exp of both, then the combined write) and allocates
only the output.

>>> a, b = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[3.0, 0.0, 0.0]])
>>> cad_combine_reference(a, b, 1.0).argmax(-1).tolist()
[1]
"""

from __future__ import annotations

import torch


def cad_combine_reference(
    a: torch.Tensor,  # [..., vocab] logits given the passages and the question
    b: torch.Tensor,  # [..., vocab] logits given the question only
    alpha: float,
) -> torch.Tensor:
    """``[..., vocab]`` float32: ``(1 + α)·log_softmax(a) − α·log_softmax(b)`` along the last dimension."""
    check_cad_inputs(a, b, alpha)
    return a.float().log_softmax(dim=-1).mul_(1 + alpha).add_(b.float().log_softmax(dim=-1), alpha=-alpha)


def check_cad_inputs(a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
    """Raise ``ValueError`` on inputs the combine cannot take."""
    if a.shape != b.shape or a.dim() == 0:
        raise ValueError(
            f"expected two logits tensors of one shape [..., vocab]; got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
