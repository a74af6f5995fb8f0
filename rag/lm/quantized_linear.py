"""Linear and embedding layers that keep int4/int8 weights and multiply with torch's CPU weight-only kernels.

A decode step multiplies one to a few rows by every weight of the model, so its time is the time to read
the weights: int4 reads a quarter of what bf16 does. Up to :data:`KERNEL_MAX_ROWS` rows go through
``aten._weight_int4pack_mm_for_cpu`` / ``aten._weight_int8pack_mm``; both compute each row on its own, so a
row's result does not depend on how many rows share the call (a drafted token verified in a tree gets the
logits it would get alone, and greedy drafting stays token-identical to greedy decoding). A prompt of more
rows is compute-bound instead: the weight is expanded to bf16 for that call and multiplied by oneDNN (AMX
tiles where the CPU has them), several times faster than the int4 kernel on hundreds of rows. The expansion
goes into a buffer that every layer of that shape reuses: a fresh tensor each time cost more in page faults
than the expansion itself (an 8960 x 1536 int8 weight: 23 ms fresh, 3.3 ms reused).

Activations are bf16 in and out, or float32 on a CPU without bf16 units (``dtype``,
:attr:`rag.lm.policy.RuntimePolicy.activation_dtype`). The kernels always take bf16 rows and bf16 scales and
zero points: with float32 activations they run scalar code on an AVX2 CPU (0.5 ms against 4-6 ms a row for a
4864 x 896 weight), so a few rows are rounded to bf16 for the kernel and its result widened again. A prompt's
weight is expanded to the activations' dtype: on an AVX2 CPU a float32 product of 200 rows took 20 ms where
bf16, emulated, took 106.

>>> import numpy as np, torch
>>> from rag.lm.quantized_weight import int8_from_float
>>> layer = QuantizedLinear(int8_from_float(np.eye(64, dtype=np.float32)))
>>> layer(torch.ones(1, 64)).tolist()[0][:3]
[1.0, 1.0, 1.0]
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from rag.lm.quantized_weight import Int4Weight, Int8Weight, QuantizedWeight

_ALIGN = 64  # bytes: aten._weight_int8pack_mm crashes (SIGSEGV) on 2-64 rows of a weight at an 8-byte offset
KERNEL_MAX_ROWS = 64  # rows up to which the weight-only kernels run; more rows run on the expanded weight
_BLOCK_ROWS = 64  # the CPU int4 layout packs rows in blocks of 64
_CHUNK_FLOATS = 1 << 20  # float32 values of an int4 weight expanded at a time (4 MB: stays in cache)


def int4_supported(rows: int, cols: int, group_size: int) -> bool:
    """Whether torch's CPU int4 kernel takes a ``rows x cols`` weight with this group size."""
    return (
        hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
        and rows % _BLOCK_ROWS == 0
        and cols % group_size == 0
        and group_size in (32, 64, 128, 256)
    )


class QuantizedLinear(torch.nn.Module):
    """``y = x @ w.T + b`` with ``w`` held as an :class:`Int4Weight` or :class:`Int8Weight`, activations in
    ``dtype`` (bf16 or float32)."""

    def __init__(
        self,
        weight: QuantizedWeight,
        bias: np.ndarray | torch.Tensor | None = None,
        dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bits = 4 if isinstance(weight, Int4Weight) else 8
        self.dtype = dtype
        if isinstance(weight, Int4Weight):
            if not int4_supported(self.out_features, self.in_features, weight.group_size):
                raise ValueError(f"torch's CPU int4 kernel does not take a {weight.shape} weight")
            self.group_size = weight.group_size
            self.register_buffer("packed", _pack_int4(weight))
            scale_zero = np.stack([weight.scale.T, weight.zero.T], axis=-1)  # [groups, rows, 2]
            self.register_buffer("scale_zero", torch.from_numpy(scale_zero).to(torch.bfloat16).contiguous())
        else:
            self.register_buffer("q", _aligned(torch.from_numpy(np.ascontiguousarray(weight.q))))
            self.register_buffer("scale", torch.from_numpy(weight.scale).to(torch.bfloat16))
        bias_tensor = None if bias is None else torch.as_tensor(bias).to(dtype)
        self.register_buffer("bias", bias_tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out] in self.dtype
        rows = x.numel() // self.in_features
        flat = x.reshape(rows, self.in_features)
        if rows > KERNEL_MAX_ROWS:
            with _borrowed(self.out_features, self.in_features, self.dtype) as weight:
                out = F.linear(flat.to(self.dtype), self.dense(weight))
        else:
            flat = flat.to(torch.bfloat16).contiguous()  # the kernels want it packed
            if self.bits == 4:
                out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                    flat, self.packed, self.group_size, self.scale_zero
                )
            else:
                out = torch.ops.aten._weight_int8pack_mm(flat, self.q, self.scale)
            out = out.to(self.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def dense(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The weight expanded to ``self.dtype`` ``# [out, in]``, into ``out`` when given."""
        rows, cols = self.out_features, self.in_features
        out = torch.empty(rows, cols, dtype=self.dtype) if out is None else out
        if self.bits == 8:
            return out.copy_(self.q).mul_(self.scale[:, None])
        # a block of rows at a time (4 MB of float32: stays in cache); for bf16, expanded in float32 and
        # rounded once: the value the int4 kernel multiplies by
        chunk = min(rows, max(1, _CHUNK_FLOATS // (cols * _BLOCK_ROWS)) * _BLOCK_ROWS)
        if self.dtype == torch.float32:
            for start in range(0, rows, chunk):
                self._expand_int4(out[start : start + chunk], start, min(rows, start + chunk))
            return out
        with _borrowed(chunk, cols, torch.float32) as buffer:
            for start in range(0, rows, chunk):
                stop = min(rows, start + chunk)
                out[start:stop].copy_(self._expand_int4(buffer[: stop - start], start, stop))
        return out

    def _expand_int4(self, values: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the int4 weight in float32, written into ``values``
        ``# [stop - start, in]``."""
        nibbles = unpack_int4(self.packed[start:stop], stop - start, self.in_features)
        values.copy_(nibbles)
        scale, zero = self.scale_zero[:, start:stop].transpose(0, 1).float().unbind(-1)  # [n, groups]
        grouped = values.view(stop - start, -1, self.group_size)
        grouped.mul_(scale[..., None]).add_((zero - 8 * scale)[..., None])
        return values

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


class QuantizedEmbedding(torch.nn.Module):
    """Token embeddings held as int8 rows; a lookup expands only the rows it reads, to ``dtype``."""

    def __init__(self, weight: Int8Weight, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        self.register_buffer("q", torch.from_numpy(np.ascontiguousarray(weight.q)))
        self.register_buffer("scale", torch.from_numpy(weight.scale).to(dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [...] -> [..., dim] in the scale's dtype
        return self.q[ids].to(self.scale.dtype) * self.scale[ids, None]


_FREE: dict[tuple[int, int, torch.dtype], list[torch.Tensor]] = {}  # buffers not in use, by shape
_FREE_LOCK = threading.Lock()


@contextmanager
def _borrowed(rows: int, cols: int, dtype: torch.dtype) -> Iterator[torch.Tensor]:
    """A ``# [rows, cols]`` buffer of ``dtype`` for one expansion, returned for the next: every layer of a
    shape reuses the same memory, and a shape has as many buffers as expansions ever ran at once."""
    key = (rows, cols, dtype)
    with _FREE_LOCK:
        free = _FREE.setdefault(key, [])
        buffer = free.pop() if free else None
    if buffer is None:
        buffer = torch.empty(rows, cols, dtype=dtype)
    try:
        yield buffer
    finally:
        with _FREE_LOCK:
            _FREE[key].append(buffer)


def _aligned(q: torch.Tensor) -> torch.Tensor:
    """``q`` itself where its data starts on a 64-byte boundary, else a copy that does (a tensor memory-mapped
    from the cache file lies where the file puts it)."""
    return q if q.data_ptr() % _ALIGN == 0 else q.clone()


def _pack_int4(weight: Int4Weight, chunk_rows: int = 64 * _BLOCK_ROWS) -> torch.Tensor:
    """``aten._convert_weight_to_int4pack_for_cpu`` of the weight's values, a few blocks of rows at a time:
    the layout is block-major, so the chunks' packings laid end to end are the whole weight's (and the int32
    values the op takes never exist for the whole weight: 0.6 GB for Qwen's output layer)."""
    rows = weight.shape[0]
    chunks = []
    for start in range(0, rows, chunk_rows):
        values = torch.from_numpy(weight.values(slice(start, start + chunk_rows)).astype(np.int32))
        chunks.append(torch.ops.aten._convert_weight_to_int4pack_for_cpu(values, 1))
    return torch.cat(chunks)


def unpack_int4(packed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The values ``# [rows, cols]`` uint8 of ``aten._convert_weight_to_int4pack_for_cpu``'s layout.

    That layout (torch 2.6-2.13) stores rows in blocks of ``b`` = 4 float vectors (64 rows with AVX-512, 32
    with AVX2): byte ``[block, col, j]`` holds row ``b * block + j`` in its low nibble and row
    ``b * block + b / 2 + j`` in its high one. The layout is torch's own, so it is checked once against the
    packing op; where it is neither, the values are read back through the kernel itself (slower, same result).
    """
    block = _packed_block_rows()
    if block is None:
        eye = torch.eye(cols, dtype=torch.bfloat16)
        ones = torch.zeros(cols // 32, rows, 2, dtype=torch.bfloat16)
        ones[..., 0] = 1  # scale 1, zero 0: the kernel returns q - 8
        values = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, 32, ones)  # [cols, rows]
        return (values.t() + 8).to(torch.uint8)
    blocks = packed.view(rows // block, cols, block // 2)
    halves = torch.stack([blocks & 0x0F, blocks >> 4], dim=1)  # [blocks, 2, cols, block / 2]
    return halves.transpose(2, 3).reshape(rows, cols)


@lru_cache(maxsize=1)
def _packed_block_rows() -> int | None:
    """The rows of a block of torch's CPU int4 layout on this CPU (see :func:`unpack_int4`), or None."""
    rows = 2 * _BLOCK_ROWS
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 16, (rows, 64), dtype=torch.int32, generator=generator)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(values, 1)
    if packed.shape != (rows, 32) or packed.dtype != torch.uint8:
        return None
    for block in (64, 32):
        blocks = packed.view(rows // block, 64, block // 2)
        halves = torch.stack([blocks & 0x0F, blocks >> 4], dim=1)
        if torch.equal(halves.transpose(2, 3).reshape(rows, 64).int(), values):
            return block
    return None
