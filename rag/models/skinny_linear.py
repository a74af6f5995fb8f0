"""Faster decode-sized matrix products on a CPU: ``weight @ x.T`` for inputs of at most 32 rows.

A decoding step multiplies a few rows (one sequence, CAD's two rows, a draft tree) by every weight matrix.
For those shapes torch's CPU ``linear`` (``x @ weight.T``) takes a slow path: measured on a 2-core AMD EPYC
with torch 2.13, Qwen2.5-0.5B's LM head (151,936 x 896) costs 45 ms for one row and 100 ms for two, while
``weight @ x.T`` with a contiguous two-row ``x`` costs 20 ms. A one-row input is therefore doubled, and the
product of two rows is kept. One whole decoding step of the 0.5B model drops from ~180 ms to ~115 ms for one
sequence and from ~370 ms to ~125 ms for two; verifying a 9-token draft tree from ~475 ms to ~340 ms and a
24-token one from ~515 ms to ~430 ms. Larger inputs (prefill) keep ``linear``.

>>> layer = torch.nn.Linear(8, 3)
>>> x = torch.randn(1, 8)
>>> expected = layer(x)
>>> use_skinny_linears(layer)
1
>>> torch.allclose(layer(x), expected, atol=1e-6)
True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

MAX_ROWS = 32  # at 64 rows torch's linear is as fast (measured on the 0.5B's shapes)


class SkinnyLinear(torch.nn.Linear):
    """``nn.Linear`` whose products with at most :data:`MAX_ROWS` input rows run as ``weight @ x.T``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > MAX_ROWS or x.device.type != "cpu":
            return super().forward(x)
        flat = x.reshape(rows, self.in_features)  # [rows, in]
        flat = flat.repeat(2, 1) if rows == 1 else flat.contiguous()  # one row: the slow GEMV path otherwise
        out = (self.weight @ flat.T).T[:rows].contiguous()  # [rows, out]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def use_skinny_linears(model: torch.nn.Module) -> int:
    """Make every plain float32 ``nn.Linear`` of ``model`` (the model itself included) a
    :class:`SkinnyLinear`, in place, keeping its parameters; returns how many were changed."""
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32:
            module.__class__ = SkinnyLinear
            changed += 1
    return changed


@contextmanager
def stock_linears(*models: torch.nn.Module | None) -> Iterator[None]:
    """Within the block, the :class:`SkinnyLinear` layers of ``models`` are plain ``nn.Linear`` again (what a
    user of transformers runs: the benchmarks' baselines)."""
    swapped = [
        module
        for model in models
        if model is not None
        for module in model.modules()
        if type(module) is SkinnyLinear
    ]
    for module in swapped:
        module.__class__ = torch.nn.Linear
    try:
        yield
    finally:
        for module in swapped:
            module.__class__ = SkinnyLinear
