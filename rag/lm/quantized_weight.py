"""Weights at their stored precision: 4-bit groups and 8-bit rows, decoded from GGUF blocks.

Two forms, both the inputs of torch's CPU weight-only kernels:

- :class:`Int4Weight`: ``w = (q - 8) * scale + zero`` for each group of ``group_size`` (32) columns, ``q`` in
  0..15. GGUF's Q4_K sub-blocks are exactly this (``d * sc * q - dmin * m``), so Q4_K is repacked without loss
  (:func:`int4_from_q4_k`); any other weight can be rounded to it (:func:`int4_from_float`).
- :class:`Int8Weight`: ``w = q * scale`` with one scale per row, ``q`` in -127..127 (:func:`int8_from_float`).
  Q8_0, Q6_K and Q5_0 blocks have a scale per 16 or 32 columns; one per row keeps their values to within half
  of 1/127 of the row's largest weight.

>>> import numpy as np
>>> w = np.array([[0.5, -1.0, 0.25, 1.0]], dtype=np.float32)
>>> eight = int8_from_float(w)
>>> eight.q.tolist(), np.allclose(eight.dense(), w, atol=1 / 254)
([[64, -127, 32, 127]], True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROUP_SIZE = 32  # columns per int4 scale/zero pair: one Q4_K sub-block


@dataclass(frozen=True)
class Int4Weight:
    """``q`` ``# [rows, cols // 2]`` uint8, column ``2c`` in the low nibble of byte ``c`` and ``2c + 1`` in
    the high one; ``scale`` and ``zero`` ``# [rows, cols // group_size]`` float32."""

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    group_size: int = GROUP_SIZE

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape[0], self.q.shape[1] * 2

    def values(self, rows: slice = slice(None)) -> np.ndarray:
        """The 4-bit values ``# [rows, cols]`` uint8 in 0..15 (of the given rows only, if ``rows``)."""
        q = self.q[rows]
        return np.stack([q & 0x0F, q >> 4], axis=-1).reshape(len(q), -1)

    def dense(self) -> np.ndarray:
        """The weight ``# [rows, cols]`` float32."""
        rows, cols = self.shape
        q = self.values().reshape(rows, cols // self.group_size, self.group_size).astype(np.float32)
        return ((q - 8) * self.scale[..., None] + self.zero[..., None]).reshape(rows, cols)

    def take_rows(self, order: np.ndarray) -> Int4Weight:
        return Int4Weight(self.q[order], self.scale[order], self.zero[order], self.group_size)


@dataclass(frozen=True)
class Int8Weight:
    """``q`` ``# [rows, cols]`` int8 and ``scale`` ``# [rows]`` float32."""

    q: np.ndarray
    scale: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    def dense(self) -> np.ndarray:
        return self.q.astype(np.float32) * self.scale[:, None]

    def take_rows(self, order: np.ndarray) -> Int8Weight:
        return Int8Weight(self.q[order], self.scale[order])


QuantizedWeight = Int4Weight | Int8Weight


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """``# [rows, cols]`` values in 0..15 -> ``# [rows, cols // 2]`` bytes (even column low)."""
    values = values.astype(np.uint8)
    return values[:, 0::2] | (values[:, 1::2] << 4)


def int4_from_q4_k(blocks: np.ndarray, rows: int, cols: int) -> Int4Weight:
    """Repack GGUF Q4_K rows ``# [rows, cols // 256 * 144]`` uint8 exactly into :class:`Int4Weight`.

    A Q4_K block holds 256 columns: fp16 ``d`` and ``dmin``, twelve bytes of 6-bit sub-block scales ``sc``
    and mins ``m`` (eight of each), then 128 bytes of 4-bit values, each 32-byte run holding two sub-blocks
    (low nibbles, then high nibbles). A value decodes as ``d * sc * q - dmin * m``: our ``scale = d * sc``
    and ``zero = 8 * scale - dmin * m``.
    """
    from gguf.quants import Q4_K

    if cols % 256:
        raise ValueError(f"Q4_K rows hold a multiple of 256 columns, got {cols}")
    blocks = blocks.reshape(-1, 144)  # [rows * cols / 256, 144]
    d = blocks[:, 0:2].view(np.float16).astype(np.float32)  # [n, 1]
    dmin = blocks[:, 2:4].view(np.float16).astype(np.float32)
    sc, m = Q4_K.get_scale_min(blocks[:, 4:16])  # [n, 8] each
    scale = d * sc.astype(np.float32)  # [n, 8]
    zero = 8 * scale - dmin * m.astype(np.float32)
    packed = blocks[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = (packed & 0x0F).reshape(rows, cols)  # sub-block order: run 0 low, run 0 high, run 1 low, ...
    return Int4Weight(pack_nibbles(q), scale.reshape(rows, -1), zero.reshape(rows, -1))


def int4_from_float(weight: np.ndarray, group_size: int = GROUP_SIZE) -> Int4Weight:
    """Round ``weight`` ``# [rows, cols]`` to 16 levels between each group's minimum and maximum."""
    rows, cols = weight.shape
    if cols % group_size:
        raise ValueError(f"{cols} columns are not a multiple of the group size {group_size}")
    groups = weight.astype(np.float32).reshape(rows, cols // group_size, group_size)
    low, high = groups.min(axis=-1), groups.max(axis=-1)
    scale = np.maximum((high - low) / 15, np.finfo(np.float32).tiny)
    q = np.clip(np.rint((groups - low[..., None]) / scale[..., None]), 0, 15).reshape(rows, cols)
    return Int4Weight(pack_nibbles(q), scale, low + 8 * scale, group_size)


def int8_from_float(weight: np.ndarray) -> Int8Weight:
    """Round ``weight`` ``# [rows, cols]`` to 255 levels symmetric about 0, one scale per row."""
    weight = weight.astype(np.float32)
    scale = np.maximum(np.abs(weight).max(axis=1) / 127, np.finfo(np.float32).tiny)
    q = np.clip(np.rint(weight / scale[:, None]), -127, 127).astype(np.int8)
    return Int8Weight(q, scale.astype(np.float32))


def int4_from_q4_0(blocks: np.ndarray, rows: int, cols: int) -> Int4Weight:
    """Repack GGUF Q4_0 rows exactly: 32-column blocks of fp16 ``d`` and 16 bytes of values (the first 16
    columns in the low nibbles, the last 16 in the high ones), ``w = d * (q - 8)``: scale ``d``, zero 0."""
    blocks = blocks.reshape(-1, 18)
    d = blocks[:, 0:2].view(np.float16).astype(np.float32)  # [n, 1]
    return _int4_from_blocks(blocks[:, 2:], d, np.zeros_like(d), rows, cols)


def int4_from_q4_1(blocks: np.ndarray, rows: int, cols: int) -> Int4Weight:
    """Repack GGUF Q4_1 rows exactly: fp16 ``d`` and ``m`` per 32 columns, ``w = d * q + m``: scale ``d``,
    zero ``m + 8 d``."""
    blocks = blocks.reshape(-1, 20)
    d = blocks[:, 0:2].view(np.float16).astype(np.float32)
    m = blocks[:, 2:4].view(np.float16).astype(np.float32)
    return _int4_from_blocks(blocks[:, 4:], d, m + 8 * d, rows, cols)


def _int4_from_blocks(
    nibbles: np.ndarray, scale: np.ndarray, zero: np.ndarray, rows: int, cols: int
) -> Int4Weight:
    """32-column blocks of 16 bytes (low nibbles: columns 0-15, high: 16-31), ``[n, 1]`` scale and zero."""
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).reshape(rows, cols)
    return Int4Weight(pack_nibbles(q), scale.reshape(rows, -1), zero.reshape(rows, -1))
