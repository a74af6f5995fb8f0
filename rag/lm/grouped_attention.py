"""SDPA whose few-query masked attention runs on the key/value heads as they are, not repeated per query head.

transformers' SDPA attention repeats every key/value head for the query heads sharing it (``repeat_kv``)
whenever several query tokens come with a mask, as a draft tree's verification or a question encoded over
cached passages do: a copy of the whole cache in every layer and step. Qwen2.5-1.5B shares each of its 2
key/value heads among 6 query heads, so an 8-token tree over 1,000 cached tokens copied 12 MB per layer.

:data:`GROUPED_SDPA` folds each head group's queries into one query block, ``[B, Hk, G * Lq, D]``, and runs
the eager attention arithmetic over the unrepeated keys, which measured faster than torch's SDPA kernel on
that layout. Everything else (prefill, no mask, no head groups) goes to transformers' own SDPA function
unchanged.

A token verified in a draft tree gets the logits it gets decoded alone, bit for bit (greedy drafting stays
token-identical to greedy decoding): each of several queries is attended on its own, over the keys a decode
step of that token would see (the cached ones and its own ancestors among the new ones), in the very call a
decode step makes. One call over all the queries, each masking the keys it may not see, is not enough: the
masked columns add exact zeros, but torch's bf16 matrix products (oneDNN) group a row's sum by the number of
keys, so a token among several queries came out up to a bf16 step apart from the token alone (SmolLM2-135M,
int4/int8 weights: its greedy answers then parted after a few dozen tokens). On a CPU the arithmetic runs in
float32 (:func:`_compute_dtype`).

>>> import torch
>>> module = type("Attention", (), {"num_key_value_groups": 2})()
>>> q, k, v = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
>>> mask = torch.zeros(1, 1, 3, 5)
>>> grouped, _ = grouped_sdpa_attention(module, q, k, v, mask)
>>> stock, _ = sdpa_attention_forward(module, q, k, v, mask)
>>> torch.allclose(grouped, stock, atol=1e-6)
True
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

GROUPED_SDPA = "ragloom_grouped_sdpa"
MAX_GROUPED_QUERIES = 64  # query tokens up to which the grouped layout is used (decode steps, draft trees)


def grouped_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, Hq, Lq, D]
    key: torch.Tensor,  # [B, Hk, Lk, D]
    value: torch.Tensor,  # [B, Hk, Lk, D]
    attention_mask: torch.Tensor | None,  # [B, 1, Lq, Lk] additive float
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention output ``# [B, Lq, Hq, D]``, as transformers' attention functions return it."""
    heads, queries, dim = query.shape[1:]
    groups = heads // key.shape[1]
    if (
        groups == 1
        or queries > MAX_GROUPED_QUERIES
        or attention_mask is None
        or attention_mask.dim() != 4
        or attention_mask.shape[1] != 1
        or attention_mask.dtype == torch.bool
        or dropout
        or kwargs.get("softcap") is not None
        or getattr(module, "training", False)
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    scaling = dim**-0.5 if scaling is None else scaling
    dtype = _compute_dtype(query)
    if queries == 1:  # a decode step
        return _attend(query, key.to(dtype), value.to(dtype), attention_mask, scaling), None
    rows = _keys_of_each_query(attention_mask, key.shape[2] - queries)
    key, value = key.to(dtype), value.to(dtype)  # once for all the queries
    if rows is None:
        return _attend(query, key, value, attention_mask, scaling), None
    outs = []
    for row, seen in enumerate(rows):  # each query as a decode step of its token runs it
        mask = attention_mask[:, :, row : row + 1]  # [B, 1, 1, Lk]
        if isinstance(seen, int):  # the cached keys and the first new ones (a chain's prefix)
            k, v, mask = key[:, :, :seen], value[:, :, :seen], mask[..., :seen]
        else:  # a tree node: the cached keys and its ancestors' (a copy)
            k, v, mask = key[:, :, seen], value[:, :, seen], mask[..., seen]
        outs.append(_attend(query[:, :, row : row + 1], k, v, mask, scaling))  # [B, 1, Hq, D]
    return torch.cat(outs, dim=1), None


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    """float32 on a CPU: torch's bf16 matrix products there (oneDNN) build a kernel for every new number of
    keys, about 1 ms each, so that every decode step paid it once and a draft tree once per node; float32's
    (MKL) take any shape as it comes. The products and sums of bf16 numbers are then also exact or closer."""
    return torch.float32 if query.device.type == "cpu" else query.dtype


def _attend(
    query: torch.Tensor,  # [B, Hq, Lq, D]
    key: torch.Tensor,  # [B, Hk, Lk, D]
    value: torch.Tensor,  # [B, Hk, Lk, D]
    attention_mask: torch.Tensor,  # [B, 1, Lq, Lk] additive float
    scaling: float,
) -> torch.Tensor:
    """The eager attention arithmetic, each head group's queries folded into one block, in ``key``'s dtype;
    ``# [B, Lq, Hq, D]`` in ``query``'s."""
    batch, heads, queries, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    folded = query.reshape(batch, kv_heads, groups * queries, dim).to(
        key.dtype
    )  # head h: kv head h // groups
    scores = torch.matmul(folded, key.transpose(2, 3)) * scaling  # [B, Hk, G * Lq, Lk]
    scores = scores.view(batch, kv_heads, groups, queries, keys) + attention_mask[:, :, None]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs.view(batch, kv_heads, groups * queries, keys), value)  # [B, Hk, G * Lq, D]
    return out.view(batch, heads, queries, dim).transpose(1, 2).to(query.dtype).contiguous()


def _keys_of_each_query(
    attention_mask: torch.Tensor,  # [B, 1, Lq, Lk] additive float
    cached: int,  # keys before the queries' own: the last Lq keys are the queries'
) -> list[int | torch.Tensor] | None:
    """For each query, the keys a decode step of its token would attend over: the cached ones and the new ones
    it may see (in any row of the batch), as a length where those are the first keys, else as an index
    ``# [keys]``. None where a query sees no key at all (its softmax spreads over the masked ones: one
    call)."""
    queries = attention_mask.shape[2]
    allowed = attention_mask[:, 0] > torch.finfo(attention_mask.dtype).min  # [B, Lq, Lk]
    if not bool(allowed.any(dim=-1).all()):
        return None
    new = allowed[:, :, cached:].any(dim=0)  # [Lq, Lq]
    seen = new.sum(dim=-1)  # [Lq]
    prefix = (new == (torch.arange(queries, device=new.device) < seen[:, None])).all(dim=-1)  # [Lq]
    rows: list[int | torch.Tensor] = []
    for row, (count, first) in enumerate(zip(seen.tolist(), prefix.tolist(), strict=True)):
        if first:
            rows.append(cached + count)
        else:
            own = cached + new[row].nonzero()[:, 0]
            rows.append(torch.cat([torch.arange(cached, device=new.device), own]))
    return rows


def register_grouped_sdpa() -> str:
    """Make :data:`GROUPED_SDPA` known to transformers (idempotent); returns its name."""
    if GROUPED_SDPA not in AttentionInterface._global_mapping:
        AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention)
        AttentionMaskInterface.register(GROUPED_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return GROUPED_SDPA
