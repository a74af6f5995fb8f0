"""One dispatcher per kernel: Triton for CUDA tensors when Triton is importable, else the torch reference."""

from __future__ import annotations

import functools
import importlib.util

import torch

from rag.kernels.segmented_attention_ref import segmented_attention_reference


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package is installed (checked once, on first dispatch, never at import)."""
    return importlib.util.find_spec("triton") is not None


def use_triton(tensor: torch.Tensor) -> bool:
    """Triton runs on CUDA tensors only; CPU tensors always take the torch reference."""
    return tensor.is_cuda and triton_available()


def segmented_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment_ids: torch.Tensor,
    temperature: torch.Tensor,
    lse_scale: torch.Tensor,
    mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Segmented attention merged by log-sum-exp; see ``segmented_attention_reference`` for the formula."""
    return segmented_attention_reference(q, k, v, segment_ids, temperature, lse_scale, mask, sm_scale)
