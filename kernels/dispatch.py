"""One dispatcher per kernel: Triton for CUDA tensors when Triton is importable, else the torch reference.

The choice is made per call from the input tensor's device, so a CPU run never imports Triton and nothing
compiles or probes hardware at import: the Triton modules are imported on the first call that needs them,
and Triton compiles a kernel on its first launch.

>>> import torch
>>> use_triton(torch.zeros(1))  # a CPU tensor always takes the reference
False
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from rag.kernels.cad_combine_ref import cad_combine_reference
from rag.kernels.pq_adc_ref import pq_adc_reference
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
    if use_triton(q):
        from rag.kernels.segmented_attention_triton import segmented_attention_triton

        return segmented_attention_triton(q, k, v, segment_ids, temperature, lse_scale, mask, sm_scale)
    return segmented_attention_reference(q, k, v, segment_ids, temperature, lse_scale, mask, sm_scale)


def pq_adc(tables: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``[Q, N]`` PQ scores from ``[Q, M, ksub]`` lookup tables at ``[N, M]`` codes; see ``pq_adc_ref``."""
    if use_triton(tables):
        from rag.kernels.pq_adc_triton import pq_adc_triton

        return pq_adc_triton(tables, codes)
    return pq_adc_reference(tables, codes)


def cad_combine(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 + α)·log_softmax(a) − α·log_softmax(b)`` along the last dimension, float32; see the reference."""
    if use_triton(a):
        from rag.kernels.cad_combine_triton import cad_combine_triton

        return cad_combine_triton(a, b, alpha)
    return cad_combine_reference(a, b, alpha)
