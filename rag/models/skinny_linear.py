"""Faster decode-sized matrix products on a CPU: ``weight @ x.T`` where it beats ``linear`` on this host.

A decoding step multiplies a few rows (one sequence, CAD's two rows, a draft tree) by every weight matrix.
Which of torch's CPU paths is fastest for those shapes depends on the CPU and its BLAS: on a 2-core AMD EPYC
with torch 2.13, Qwen2.5-0.5B's LM head (151,936 x 896) cost 45 ms for one row and 100 ms for two with
``linear`` (``x @ weight.T``), while ``weight @ x.T`` with a contiguous two-row ``x`` cost 20 ms; on a 2-core
Intel Xeon (AVX512) with the same torch, ``linear`` of one or two rows runs at memory speed and ``weight @
x.T`` is twice as slow, while 9- and 16-row products are faster as ``weight @ x.T``. So the first product of
each layer shape, dtype and row bucket (1, 2, 3-4, 5-8, 9-16, 17-32 rows) times both paths on the real input
and keeps the faster for the process; both compute the same product (to fp32 rounding). Larger inputs
(prefill) keep ``linear``.

Products of 4 to 32 rows (draft trees, a question encoded over cached passages) go faster still through oneDNN
with the weight reordered once into its blocked layout: on the Xeon, a whole forward of 4 / 8 / 16 new tokens
over 900 cached ones cost 134 / 157 / 190 ms instead of 210 / 247 / 242 for Qwen2.5-0.5B and 355 / 410 / 515
ms instead of 558 / 580 / 590 for Qwen2.5-1.5B, while one to three float32 rows stay faster on the plain
weight (2026-12-05, 1.5B: 214 / 237 / 242 ms against 252 / 282 / 297 reordered; oneDNN's three-row product is
slower than its four-row one). That path is a rule, not a measured choice: timed one layer at a time, the
weight stays in this CPU's 480 MB L3 cache and the figures mislead. The reordered copy doubles a layer's
weight memory, so it is made on a layer's first 4-to-32-row product and only while the machine keeps
:data:`PACK_RESERVE_BYTES` available after it (:func:`available_bytes`; else that layer keeps the paths
above); ``use_skinny_linears(model, prepack=False)`` turns it off.

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
# the fewest rows whose products use the reordered weight (where there is one), by weight dtype: oneDNN's
# float32 products of 1-3 rows are slower than the plain weight's; its bf16 ones are faster from one row
PACKED_MIN_ROWS: dict[torch.dtype, int] = {torch.float32: 4, torch.bfloat16: 1}
PACK_RESERVE_BYTES = 2 << 30  # memory left available after reordering a weight

PathKey = tuple[int, int, int, torch.dtype]  # (out_features, in_features, row bucket, weight dtype)
# whether weight @ x.T measured faster than linear on this host, per layer shape, row bucket and dtype
TRANSPOSED_IS_FASTER: dict[PathKey, bool] = {}


def row_bucket(rows: int) -> int:
    """The power of two at or above ``rows``: products in one bucket share a measured choice.

    >>> [row_bucket(r) for r in (1, 2, 3, 4, 5, 9, 32)]
    [1, 2, 4, 4, 8, 16, 32]
    """
    return 1 << (rows - 1).bit_length()


class SkinnyLinear(torch.nn.Linear):
    """``nn.Linear`` whose products with at most :data:`MAX_ROWS` input rows run as ``weight @ x.T`` where
    that measured faster on this host (:data:`TRANSPOSED_IS_FASTER`), and those of :data:`PACKED_MIN_ROWS` or
    more rows (by dtype) on a oneDNN-reordered copy of the weight where one can be made."""

    prepack: bool = True  # products of PACKED_MIN_ROWS to MAX_ROWS rows may use a reordered weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows == 0 or rows > MAX_ROWS or x.device.type != "cpu":
            return super().forward(x)
        if self.packs(rows):
            packed = self._packed_weight()
            if packed is not None:
                flat = x.reshape(rows, self.in_features)  # [rows, in]
                out = torch.ops.mkldnn._linear_pointwise(flat, packed, self.bias, "none", [], "")
                return out.reshape(*x.shape[:-1], self.out_features)
        key: PathKey = (self.out_features, self.in_features, row_bucket(rows), self.weight.dtype)
        transposed = TRANSPOSED_IS_FASTER.get(key)
        if transposed is None:
            transposed = TRANSPOSED_IS_FASTER[key] = self._transposed_is_faster(x)
        if not transposed:
            return super().forward(x)
        return self._transposed(x)

    def packs(self, rows: int) -> bool:
        """Whether a product of ``rows`` rows runs on the reordered weight (where one can be made): from
        :data:`PACKED_MIN_ROWS` rows for the weight's dtype (bf16 from one row: a bf16 copy of the 1.5B took
        202 ms a one-token forward instead of 240 with torch's linear, 2026-12-05)."""
        min_rows = PACKED_MIN_ROWS.get(self.weight.dtype)
        return self.prepack and min_rows is not None and min_rows <= rows <= MAX_ROWS

    def _packed_weight(self) -> torch.Tensor | None:
        """The weight in oneDNN's blocked layout, reordered on first use and again after the weight changes;
        None where it cannot be used: gradients wanted, no oneDNN, or too little memory for the copy."""
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return None
        weight = self.weight
        # an inference tensor has no version counter: made in inference mode, it is taken as never changing
        stamp = (weight.data_ptr(), None if weight.is_inference() else weight._version)
        cached = getattr(self, "_packed", None)  # (stamp, reordered weight or None)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        packed = None
        weight_bytes = weight.numel() * weight.element_size()
        if torch.backends.mkldnn.is_available() and can_spare(weight_bytes):
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 4)
        self._packed = (stamp, packed)
        return packed

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


def can_spare(nbytes: int) -> bool:
    """Whether ``nbytes`` more still leave :data:`PACK_RESERVE_BYTES` of the machine's memory available."""
    return available_bytes() - nbytes >= PACK_RESERVE_BYTES


def available_bytes(meminfo: str = "/proc/meminfo") -> int:
    """Memory the machine can still hand out without evicting memory-mapped files (Linux ``MemAvailable`` less
    ``Mapped``; 0 where it cannot be read). ``MemAvailable`` counts mapped pages as reclaimable, but the
    models' safetensors weights are mapped: reclaimed, they are read back from disk on every forward (the
    2026-12-05 bench run of the 1.5B with its draft models stalled so, with ``MemAvailable`` still 5.5 GB)."""
    fields: dict[str, int] = {}
    try:
        with open(meminfo) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("MemAvailable", "Mapped"):
                    fields[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    if "MemAvailable" not in fields:
        return 0
    return max(fields["MemAvailable"] - fields.get("Mapped", 0), 0)


def use_skinny_linears(model: torch.nn.Module, prepack: bool = True) -> int:
    """Make every plain float32 or bfloat16 ``nn.Linear`` of ``model`` (the model itself included) a
    :class:`SkinnyLinear`, in place, keeping its parameters; returns how many were changed. ``prepack``
    allows the reordered weights of 4-to-32-row products (on every SkinnyLinear of ``model``)."""
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype in (torch.float32, torch.bfloat16):
            module.__class__ = SkinnyLinear
            changed += 1
        if isinstance(module, SkinnyLinear):
            module.prepack = prepack
    return changed


@torch.inference_mode()
def prime(model: torch.nn.Module, max_rows: int = MAX_ROWS) -> None:
    """Do the first-call work of ``model``'s :class:`SkinnyLinear` layers now, for the products of up to
    ``max_rows`` rows that run on the reordered weight (:meth:`SkinnyLinear.packs`): the reordered weight, and
    oneDNN's kernel for each row count, which the first product of a new count builds (~1 ms a layer: ~0.25 s
    per count for the 1.5B's 197 layers, 2026-12-04). Draft trees come in every size up to the draft length,
    so a drafted answer would otherwise pay this, several seconds, on its first steps."""
    for module in model.modules():
        if isinstance(module, SkinnyLinear):
            weight = module.weight
            for rows in filter(module.packs, range(1, max_rows + 1)):
                module(torch.zeros(rows, module.in_features, dtype=weight.dtype, device=weight.device))


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
