"""SDPA whose few-query masked attention runs on the key/value heads as they are, not repeated per query head.

transformers' SDPA attention repeats every key/value head for the query heads sharing it (``repeat_kv``)
whenever several query tokens come with a mask, as a draft tree's verification or a question encoded over
cached passages do: a copy of the whole cache in every layer and step. Qwen2.5-1.5B shares each of its 2
key/value heads among 6 query heads, so an 8-token tree over 1,000 cached tokens copied 12 MB per layer.

:data:`GROUPED_SDPA` folds each head group's queries into one query block, ``[B, Hk, G * Lq, D]``, and runs
the eager attention arithmetic over the unrepeated keys, which measured faster than torch's SDPA kernel on
that layout. A decode step (one query token) takes the same arithmetic: a query's result then does not depend
on how many queries share the call (torch's matrix products compute each row alike, and masked columns add
exact zeros), so a token verified in a draft tree gets the bf16 logits it gets decoded alone. Everything else
(prefill, no mask, no head groups) goes to transformers' own SDPA function unchanged.

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
    batch, heads, queries, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups = heads // kv_heads
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
    folded = query.reshape(batch, kv_heads, groups * queries, dim)  # head h = kv head h // groups
    scores = torch.matmul(folded, key.transpose(2, 3)) * scaling  # [B, Hk, G * Lq, Lk]
    scores = scores.view(batch, kv_heads, groups, queries, keys) + attention_mask[:, :, None]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs.view(batch, kv_heads, groups * queries, keys), value)  # [B, Hk, G * Lq, D]
    return out.view(batch, heads, queries, dim).transpose(1, 2).contiguous(), None


def register_grouped_sdpa() -> str:
    """Make :data:`GROUPED_SDPA` known to transformers (idempotent); returns its name."""
    if GROUPED_SDPA not in AttentionInterface._global_mapping:
        AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention)
        AttentionMaskInterface.register(GROUPED_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return GROUPED_SDPA
