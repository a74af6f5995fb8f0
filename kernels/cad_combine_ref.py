"""Pure-torch CAD combine: ``(1 + α)·log_softmax(a) − α·log_softmax(b)`` over the vocabulary.

Context-aware decoding (:mod:`rag.generation.cad`) scores the next token with the logits given the passages
(``a``) against the logits given the question only (``b``). Written out,

    out = (1 + α)·a − α·b − ((1 + α)·logsumexp(a) − α·logsumexp(b))

so the two log-softmaxes are two row reductions and one fused elementwise pass, without the two
``[rows, vocab]`` log-softmax intermediates.

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
    af, bf = a.float(), b.float()
    shift = (1 + alpha) * torch.logsumexp(af, dim=-1, keepdim=True) - alpha * torch.logsumexp(
        bf, dim=-1, keepdim=True
    )  # [..., 1]
    return torch.add(af * (1 + alpha), bf, alpha=-alpha).sub_(shift)


def check_cad_inputs(a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
    """Raise ``ValueError`` on inputs the combine cannot take."""
    if a.shape != b.shape or a.dim() == 0:
        raise ValueError(
            f"expected two logits tensors of one shape [..., vocab]; got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
