"""Selective recompute across parallel-encoded passages (the CacheBlend idea: Yao et al., 2024).

Passages encoded apart (:mod:`~rag.generation.contexts.parallel_prefill`) never attend to each other, which
costs Qwen2.5-0.5B a quarter to two fifths of its F1 on XQuAD (docs/design/2026-11-27-generation-notebook.md).
Blending gives part of it back for part of a full prefill's cost:

1. :func:`shift_block` moves each cached passage block from the shared positions to where the sequential
   prompt puts it. Keys are cached after RoPE, a rotation, so rotating by ``delta`` more positions is exact.
   The cache is then laid out as the sequential prompt, each passage's KV computed without the others.
2. :func:`deviating_columns` runs the first layer and the second layer's attention over the whole context with
   full causal attention (a forward cut short) and picks the passage columns whose second-layer keys differ
   most from the cached ones, a ``ratio`` of the passage tokens: CacheBlend's selection.
3. :func:`recompute` runs those tokens through the whole model in one forward, each attending to the prompt up
   to itself, with the recomputed tokens in place of their cached columns. Their new KV is appended to the
   cache; the caller hides the stale columns from then on.

With ``ratio = 1`` every passage token is recomputed and the cache holds the sequential prompt's KV.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch
from transformers import DynamicCache

from rag.errors import ConfigError
from rag.generation.contexts.passage_kv_store import PassageKV
from rag.generation.decode.kv_batch import additive_mask
from rag.lm.kv_cache import new_cache

_SELECTION_LAYER = 1  # the first layer whose keys depend on the other tokens
_CUT: ContextVar[bool] = ContextVar("ragloom_blend_cut", default=False)


class _CutShort(Exception):
    """Raised inside a forward run under :func:`_cut_short` once the selection layer's KV is cached."""


def shift_block(model: Any, block: PassageKV, delta: int) -> PassageKV:
    """``block`` with its keys rotated ``delta`` positions further (values do not carry positions)."""
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is None or getattr(rotary, "attention_scaling", 1.0) != 1.0:
        raise ConfigError("blending needs a model with plain rotary position embeddings")
    keys = block.keys[0]  # [kv_heads, len, head_dim]
    position = torch.tensor([[delta]], device=keys.device)
    cos, sin = rotary(keys, position)  # each [1, 1, head_dim]
    return PassageKV(tuple(k * cos[0] + _rotate_half(k) * sin[0] for k in block.keys), block.values)


def deviating_columns(
    model: Any,
    cache: DynamicCache,  # one row: prefix and passages at the sequential positions
    context_ids: torch.Tensor,  # [n] the prefix and passage tokens
    first: int,  # the first passage column
    ratio: float,
) -> torch.Tensor:
    """The ``ratio`` of passage columns whose selection-layer keys move most under full attention ``# [k]``.

    Sorted ascending. Costs one layer and one attention over the context, not a prefill.
    """
    n = context_ids.shape[0]
    fresh = new_cache(model)
    allowed = torch.ones(n, n, dtype=torch.bool, device=context_ids.device).tril()
    with _cut_short(model), contextlib.suppress(_CutShort):
        model(
            input_ids=context_ids[None],
            attention_mask=additive_mask(allowed[None, None], model.dtype),
            position_ids=torch.arange(n, device=context_ids.device)[None],
            cache=fresh,
            use_cache=True,
        )
    moved = fresh.layers[_SELECTION_LAYER].keys[0] - cache.layers[_SELECTION_LAYER].keys[0, :, :n]
    deviation = moved[:, first:].float().pow(2).sum(dim=(0, 2))  # [passage tokens]
    count = max(1, round(ratio * deviation.shape[0]))
    return first + deviation.topk(count).indices.sort().values


def recompute(model: Any, cache: DynamicCache, context_ids: torch.Tensor, columns: torch.Tensor) -> None:
    """Append the KV of ``context_ids[columns]`` computed over the cache, the recomputed tokens replacing
    their stale columns. ``cache`` (one row) holds the ``n`` context columns and grows by ``len(columns)``."""
    n = context_ids.shape[0]
    keys = torch.arange(n, device=columns.device)
    old = keys[None, :] <= columns[:, None]  # [k, n] up to itself
    old[:, columns] = False  # but the stale columns of the recomputed tokens
    new = columns[None, :] <= columns[:, None]  # [k, k] the recomputed tokens up to itself
    allowed = torch.cat([old, new], dim=1)  # [k, n + k]
    model(
        input_ids=context_ids[columns][None],
        attention_mask=additive_mask(allowed[None, None], model.dtype),
        position_ids=columns[None],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )


@contextlib.contextmanager
def _cut_short(model: Any) -> Iterator[None]:
    """Forwards run inside stop with :class:`_CutShort` before the selection layer's MLP."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) <= _SELECTION_LAYER or not hasattr(layers[_SELECTION_LAYER], "mlp"):
        raise ConfigError("blending needs a decoder with at least two layers, each with an mlp")
    mlp = layers[_SELECTION_LAYER].mlp
    if not getattr(mlp, "_ragloom_cut", False):  # one hook per model, active only under this context
        mlp.register_forward_pre_hook(_stop_if_cutting)
        mlp._ragloom_cut = True
    token = _CUT.set(True)
    try:
        yield
    finally:
        _CUT.reset(token)


def _stop_if_cutting(module: torch.nn.Module, args: Any) -> None:
    if _CUT.get():
        raise _CutShort


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)
