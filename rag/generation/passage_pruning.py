"""Path pruning for parallel contexts: keep the passages under which the question is most likely.

Superposition prompting (Merth et al., ICML 2024) answers over parallel paths ``prefix → passage i →
question`` and drops the paths whose passage does not explain the question. Here each passage's score is
``log P(question | prefix, passage i)``: the question's tokens are appended once per passage, copy ``i``
attending to the prefix, passage ``i`` and itself at the positions right after passage ``i`` (what a
sequential prompt holding passage ``i`` alone computes), all copies in one forward over the cached blocks.
The answer then attends over the kept passages only; the question still reads every passage once, through
its copy, for the price of one forward over ``passages × question`` tokens.

On Qwen2.5-0.5B and XQuAD-en (top-5 MiniLM paragraphs) the most likely passage was the gold paragraph more
often than the retriever's first hit (docs/generation.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from rag.generation.kv_batch import additive_mask
from rag.generation.passage_kv_store import PassageKV


def stacked_cache(model: Any, blocks: Sequence[PassageKV]) -> DynamicCache:
    """A one-row cache holding ``blocks`` one after another, in order."""
    cache = DynamicCache(config=model.config)
    for layer in range(len(blocks[0].keys)):
        k = torch.cat([b.keys[layer] for b in blocks], dim=1)[None]  # [1, kv_heads, cached, head_dim]
        v = torch.cat([b.values[layer] for b in blocks], dim=1)[None]
        cache.update(k, v, layer)
    return cache


@torch.inference_mode()
def question_log_likelihoods(
    model: Any,
    prefix: PassageKV,
    passages: Sequence[PassageKV],
    question_ids: torch.Tensor,  # [m]
) -> torch.Tensor:
    """``log P(question_ids[1:] | prefix, passage i, question_ids[0])`` for each passage ``# [n]``.

    One forward over ``n`` copies of the question (plain attention; positions as in the sequential prompt
    of the prefix and passage ``i`` alone). The first question token is not scored: its prediction would
    come from the passage's last position, whose logits a cached block does not keep.
    """
    device = question_ids.device
    n, m = len(passages), len(question_ids)
    lengths = torch.tensor([p.tokens for p in passages], device=device)  # [n]
    cached = prefix.tokens + int(lengths.sum())
    starts = prefix.tokens + lengths.cumsum(0) - lengths  # [n] first column of each passage
    copy = torch.arange(n, device=device).repeat_interleave(m)  # [n * m] the passage each copy token reads
    offset = torch.arange(m, device=device).repeat(n)  # [n * m] the token's place in its copy
    columns = torch.arange(cached, device=device)  # [cached]
    sees_passage = (columns >= starts[copy, None]) & (columns < (starts + lengths)[copy, None])
    sees_cached = sees_passage | (columns < prefix.tokens)  # [n * m, cached]
    new = torch.arange(n * m, device=device)
    sees_new = (copy[:, None] == copy[None, :]) & (new[:, None] >= new[None, :])  # [n * m, n * m]
    allowed = torch.cat([sees_cached, sees_new], dim=1)  # [n * m, cached + n * m]
    output = model(
        input_ids=question_ids.repeat(n)[None],
        attention_mask=additive_mask(allowed[None, None], model.dtype),
        position_ids=(prefix.tokens + lengths[copy] + offset)[None],
        cache=stacked_cache(model, [prefix, *passages]),
        use_cache=True,
    )
    # a copy's last token predicts nothing scored
    logits = output.logits.view(n, m, -1)[:, :-1].float()  # [n, m - 1, vocab]
    targets = question_ids[1:].expand(n, -1)  # [n, m - 1]
    logprobs = logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)  # [n, m - 1]
    return logprobs.sum(dim=1)  # [n]


def most_likely_passages(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the ``keep`` highest ``scores`` ``# [n]``, in their original order.

    >>> most_likely_passages(torch.tensor([-9.0, -3.0, -5.0, -1.0]), 2)
    [1, 3]
    """
    return sorted(scores.topk(min(keep, len(scores))).indices.tolist())
