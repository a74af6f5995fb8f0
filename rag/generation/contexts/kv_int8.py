"""Symmetric int8 quantisation of cached KV blocks, the KIVI recipe: keys per channel, values per token.

Keys have a few large channels (RoPE dimensions), so each (head, channel) gets its own scale over the
tokens; values are spread evenly over channels, so each (head, token) gets its own. ``x ≈ q · scale`` with
``q = round(x / scale)`` in ``[-127, 127]`` and ``scale = max|x| / 127``, so the error of an element is at
most half its scale.

>>> import torch
>>> x = torch.tensor([[[1.0, -100.0], [0.5, 50.0]]])  # [heads=1, tokens=2, dim=2]; channel 1 is large
>>> q, scale = quantize(x, dim=1)  # one scale per channel, over the tokens
>>> torch.allclose(scale.squeeze(), torch.tensor([1 / 127, 100 / 127])), q.dtype
(True, torch.int8)
>>> bool(dequantize(q, scale).sub(x).abs().max() <= scale.max() / 2)
True
"""

from __future__ import annotations

import torch

KEY_DIM = 1  # keys: reduce over tokens -> one scale per (head, channel)
VALUE_DIM = 2  # values: reduce over channels -> one scale per (head, token)


def quantize(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``# [heads, tokens, dim]`` -> int8 of the same shape and float32 scales reduced over ``dim``."""
    # [heads, 1, dim] (keys) or [heads, tokens, 1] (values)
    scale = x.float().abs().amax(dim=dim, keepdim=True).clamp(min=1e-8) / 127
    q = torch.round(x.float() / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale).to(dtype)
