"""APE attention for parallel-encoded passages, plugged in through transformers' ``AttentionInterface``.

The queries of the question and answer tokens attend over two key segments: segment 1 is every passage
(encoded independently, all at the same positions), segment 0 is the rest (the shared prefix, the question,
the answer). Each segment gets its own softmax; the passage logits are divided by APE's temperature and the
passages' log-sum-exp is multiplied by its scale before the two are merged (``lse_context * scale`` in the
APE paper's pseudocode); see :mod:`rag.kernels.segmented_attention_ref` for the exact formula. With
temperature 1 and scale 1 this is ordinary attention over all keys.

:func:`enable_ape_attention` registers a wrapper around the model's own attention implementation (eager or
SDPA) and switches the model to it once. The wrapper is the original implementation unless a forward runs
inside ``with ape_segments(...)``; only that forward takes the segmented path. No model file is forked.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from rag.errors import ConfigError
from rag.kernels import segmented_attention
from rag.lm.grouped_attention import GROUPED_SDPA

_PREFIX = "ragloom_ape_"
_BASES = ("eager", "sdpa", GROUPED_SDPA)


@dataclass(frozen=True)
class ApeSegments:
    """Key columns ``[passage_start, passage_end)`` of the cache are the passages; the rest is segment 0."""

    passage_start: int
    passage_end: int
    temperature: float = 1.0
    scale: float = 1.0

    def segment_ids(self, key_length: int, device: torch.device) -> torch.Tensor:
        """``# [key_length]`` int64: 1 on passage columns, 0 elsewhere."""
        ids = torch.zeros(key_length, dtype=torch.long, device=device)
        ids[self.passage_start : self.passage_end] = 1
        return ids

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a handful of small frozen instances live per request
    def kernel_inputs(self, key_length: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(segment ids, temperatures, log-sum-exp scales), built once per key length, not once a layer."""
        return (
            self.segment_ids(key_length, device),
            torch.tensor([1.0, self.temperature], device=device),
            torch.tensor([1.0, self.scale], device=device),
        )


_ACTIVE: ContextVar[ApeSegments | None] = ContextVar("ragloom_ape_segments", default=None)


@contextlib.contextmanager
def ape_segments(segments: ApeSegments) -> Iterator[None]:
    """Forwards run inside this block (in this thread or task) use segmented APE attention."""
    token = _ACTIVE.set(segments)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def enable_ape_attention(model: Any) -> None:
    """Switch ``model`` to the APE wrapper of its current attention implementation (idempotent)."""
    current = model.config._attn_implementation
    if current.startswith(_PREFIX):
        return
    if current not in _BASES:
        raise ConfigError(f"parallel contexts need eager or SDPA attention; the model uses {current!r}")
    name = _PREFIX + current
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _make_wrapper(current))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    model.set_attn_implementation(name)


def _make_wrapper(base: str) -> Callable[..., tuple[torch.Tensor, None]]:
    def attention(
        module: torch.nn.Module,
        query: torch.Tensor,  # [B, Hq, Lq, D]
        key: torch.Tensor,  # [B, Hk, Lk, D], RoPE applied, the whole cache
        value: torch.Tensor,  # [B, Hk, Lk, D]
        attention_mask: torch.Tensor | None,  # [B, 1, Lq, Lk] additive float
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        segments = _ACTIVE.get()
        if segments is None:
            original = _original(module, base)
            return original(
                module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
            )
        if kwargs.get("sliding_window") is not None or getattr(module.config, "attn_logit_softcapping", None):
            raise ConfigError("parallel contexts need full attention without logit soft-capping")
        if attention_mask is None or attention_mask.dim() != 4:
            raise ConfigError("parallel contexts need the 4-D mask built by the generator")
        allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2  # [B, 1, Lq, Lk] bool
        out = segmented_attention(
            query,
            key,
            value,
            *segments.kernel_inputs(key.shape[2], key.device),
            allowed,
            scaling,
        )  # [B, Hq, Lq, D]
        return out.transpose(1, 2).contiguous(), None  # [B, Lq, Hq, D], as transformers expects

    return attention


def _original(module: torch.nn.Module, base: str) -> Callable[..., Any]:
    if base != "eager":
        return AttentionInterface._global_mapping[base]
    return sys.modules[type(module).__module__].eager_attention_forward  # the model file's own eager
