"""A KV cache that appends in place: transformers' ``DynamicCache`` with spare room behind every layer.

``DynamicLayer.update`` concatenates, copying the whole cache of every layer at every decode step (for
Qwen2.5-1.5B over 1,000 cached tokens, 28 layers x 1 MB). :class:`GrowingLayer` keeps each layer in a buffer
with room to spare (doubled when full) and writes the new keys and values after the cached ones; the layer's
``keys``/``values`` are views of the buffer's first rows. Code that replaces them (a draft tree's rejected
nodes cut off, rows kept by ``index_select``) just does so: the next update sees that ``keys`` is no longer a
prefix of its buffer and starts a new one from it.

>>> import torch
>>> layer = GrowingLayer()
>>> k, v = layer.update(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
>>> k, v = layer.update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
>>> k.shape, k.data_ptr() == layer._buffers[0].data_ptr()
(torch.Size([1, 2, 4, 4]), True)
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

_MIN_ROOM = 256  # tokens a new buffer holds at least


class GrowingLayer(DynamicLayer):
    """A :class:`DynamicLayer` whose ``update`` writes into spare capacity instead of concatenating."""

    def __init__(self) -> None:
        super().__init__()
        self._buffers: list[torch.Tensor | None] = [None, None]  # keys, values: [batch, heads, room, dim]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = self._append(0, self.keys, key_states)
        self.values = self._append(1, self.values, value_states)
        return self.keys, self.values

    def _append(
        self,
        slot: int,
        cached: torch.Tensor,  # [batch, heads, length, dim], or empty
        new: torch.Tensor,  # [batch, heads, n, dim]
    ) -> torch.Tensor:
        buffer = self._buffers[slot]
        length = cached.shape[-2] if cached.numel() else 0
        end = length + new.shape[-2]
        if not _holds(buffer, cached, new, end):
            room = max(2 * end, _MIN_ROOM)
            buffer = new.new_empty(*new.shape[:-2], room, new.shape[-1])
            if length:
                buffer[..., :length, :] = cached
            self._buffers[slot] = buffer
        assert buffer is not None
        buffer[..., length:end, :] = new
        return buffer[..., :end, :]

    def reset(self) -> None:
        self._buffers = [None, None]
        super().reset()


def _holds(buffer: torch.Tensor | None, cached: torch.Tensor, new: torch.Tensor, end: int) -> bool:
    """Whether ``cached`` is the first rows of ``buffer`` and ``buffer`` has room up to ``end``."""
    if buffer is None or buffer.shape[-2] < end or buffer.shape[:-2] != new.shape[:-2]:
        return False
    if buffer.dtype != new.dtype or buffer.device != new.device:
        return False
    return cached.numel() == 0 or (
        cached.data_ptr() == buffer.data_ptr() and cached.stride() == buffer.stride()
    )


class GrowingCache(DynamicCache):
    """``DynamicCache(config=config)`` whose full-attention layers are :class:`GrowingLayer` s."""

    def __init__(self, config: Any) -> None:
        super().__init__(config=config)
        self.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in self.layers]


def new_cache(model: Any) -> DynamicCache:
    """An empty KV cache for ``model``, the kind the runtime decodes with."""
    return GrowingCache(model.config)
