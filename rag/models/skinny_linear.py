"""Faster decode-sized matrix products on a CPU: ``weight @ x.T`` where it beats ``linear`` on this host.

A decoding step multiplies a few rows (one sequence, CAD's two rows, a draft tree) by every weight matrix.
Which of torch's CPU paths is fastest for those shapes depends on the CPU and its BLAS: on a 2-core AMD EPYC
with torch 2.13, Qwen2.5-0.5B's LM head (151,936 x 896) cost 45 ms for one row and 100 ms for two with
``linear`` (``x @ weight.T``), while ``weight @ x.T`` with a contiguous two-row ``x`` cost 20 ms; on a 2-core
Intel Xeon (AVX512) with the same torch, ``linear`` of one or two rows runs at memory speed and ``weight @
x.T`` is twice as slow, while 9- and 16-row products are faster as ``weight @ x.T``. So the first product of
each layer shape and row bucket (1, 2, 3-4, 5-8, 9-16, 17-32 rows) times both paths on the real input and
keeps the faster for the process; both compute the same product (to fp32 rounding). Larger inputs (prefill)
keep ``linear``.

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

from rag.timing import best_seconds

MAX_ROWS = 32  # at 64 rows torch's linear is as fast (measured on the 0.5B's shapes)

# (out_features, in_features, row bucket) -> whether weight @ x.T was the faster path on this host
TRANSPOSED_IS_FASTER: dict[tuple[int, int, int], bool] = {}


def row_bucket(rows: int) -> int:
    """The power of two at or above ``rows``: products in one bucket share a measured choice.

    >>> [row_bucket(r) for r in (1, 2, 3, 4, 5, 9, 32)]
    [1, 2, 4, 4, 8, 16, 32]
    """
    return 1 << (rows - 1).bit_length()


class SkinnyLinear(torch.nn.Linear):
    """``nn.Linear`` whose products with at most :data:`MAX_ROWS` input rows run as ``weight @ x.T`` where
    that measured faster on this host (:data:`TRANSPOSED_IS_FASTER`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows == 0 or rows > MAX_ROWS or x.device.type != "cpu":
            return super().forward(x)
        key = (self.out_features, self.in_features, row_bucket(rows))
        transposed = TRANSPOSED_IS_FASTER.get(key)
        if transposed is None:
            transposed = TRANSPOSED_IS_FASTER[key] = self._transposed_is_faster(x)
        if not transposed:
            return super().forward(x)
        return self._transposed(x)

    def _transposed(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        flat = x.reshape(rows, self.in_features)  # [rows, in]
        flat = flat.repeat(2, 1) if rows == 1 else flat.contiguous()  # one row: the slow GEMV path otherwise
        out = (self.weight @ flat.T).T[:rows].contiguous()  # [rows, out]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    @torch.no_grad()
    def _transposed_is_faster(self, x: torch.Tensor, repeats: int = 5) -> bool:
        """Time both paths on ``x`` (after one untimed run each), alternating; compare the best times."""
        stock = super().forward
        linear, transposed = best_seconds((lambda: stock(x), lambda: self._transposed(x)), repeats)
        return transposed < linear


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
