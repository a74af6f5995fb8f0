"""Context-aware decoding (CAD, Shi et al. 2023): favour what the passages add over what the model believes.

Next-token scores are ``(1 + α)·log p(y | passages, question) − α·log p(y | question)``. The context-free
distribution comes from a second row, the same chat prompt with the passages left out, which the generator
runs in the same batched forward pass as the main prompt (:class:`~rag.generation.decode.kv_batch.KVBatch`).
``α = 0`` is plain decoding. The combined scores then go through the usual logits processors and sampling.

>>> import torch
>>> cad = ContextAwareDecoding(alpha=1.0)
>>> with_passages = torch.tensor([2.0, 1.0, 0.0]).log_softmax(-1)
>>> without = torch.tensor([3.0, 0.0, 0.0]).log_softmax(-1)  # the model's prior already prefers token 0
>>> int(with_passages.argmax()), int(cad(with_passages, without).argmax())
(0, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rag.errors import ConfigError
from rag.generation.prompt import question_turn
from rag.lm import cad_combine


@dataclass(frozen=True)
class ContextAwareDecoding:
    """Combine next-token logits with and without the passages, by ``alpha`` > 0 (0.5 in the bench)."""

    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ConfigError(f"CAD needs alpha > 0, got {self.alpha} (cad=None turns it off)")

    def __call__(
        self,
        with_context: torch.Tensor,  # [..., vocab] logits given passages and question
        without_context: torch.Tensor,  # [..., vocab] logits given the question only
    ) -> torch.Tensor:
        """``(1 + α)·log_softmax(with) − α·log_softmax(without)``, same shape."""
        if with_context.shape != without_context.shape:
            raise ValueError(f"shapes differ: {tuple(with_context.shape)} vs {tuple(without_context.shape)}")
        return cad_combine(with_context, without_context, self.alpha)  # rag.lm: Triton on CUDA, else torch


def context_free_messages(question: str, system_prompt: str, reminder: str = "") -> list[dict[str, str]]:
    """The RAG chat prompt with the passages left out: the same instruction, then only the question (and the
    same reminder of how to answer)."""
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": question_turn(question, reminder)},
    ]
