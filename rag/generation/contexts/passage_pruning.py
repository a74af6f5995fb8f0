"""Path pruning for parallel contexts: keep the passages under which the question is most likely.

Superposition prompting (Merth et al., ICML 2024) answers over parallel paths ``prefix → passage i →
question`` and drops the paths whose passage does not explain the question. Here each passage's score is
``log P(question | prefix, passage i)``: the question's tokens are appended once per passage, copy ``i``
attending to the prefix, passage ``i`` and itself at the positions right after passage ``i`` (what a
sequential prompt holding passage ``i`` alone computes), all copies in one forward over the cached blocks.
The answer then attends over the kept passages only; the question still reads every passage once, through
its copy, for the price of one forward over ``passages × question`` tokens. Only the question's own tokens
are scored (the template around them says little about a passage, and its tokens cost a forward each); when
one passage is kept, the answer goes on from its copy's KV: the cache is then the sequential prompt's of the
prefix and that passage, and the question is not run a second time.

That forward (~75 rows for five passages) runs in the model as loaded: with quantized weights
(rag.lm) more than a few rows multiply the weights expanded to bf16, on AMX tiles where the CPU has them.

On Qwen2.5-0.5B and XQuAD-en (top-5 MiniLM paragraphs) the most likely passage was the gold paragraph more
often than the retriever's first hit (docs/design/2026-11-27-generation-notebook.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from rag.generation.contexts.passage_kv_store import PassageKV
from rag.generation.decode.kv_batch import additive_mask
from rag.lm.kv_cache import new_cache


def stacked_cache(model: Any, blocks: Sequence[PassageKV], dtype: torch.dtype | None = None) -> DynamicCache:
    """A one-row cache holding ``blocks`` one after another, in order (in ``dtype``; None: the blocks')."""
    cache = new_cache(model)
    for layer in range(len(blocks[0].keys)):
        k = torch.cat([b.keys[layer] for b in blocks], dim=1)[None]  # [1, kv_heads, cached, head_dim]
        v = torch.cat([b.values[layer] for b in blocks], dim=1)[None]
        cache.update(k.to(dtype), v.to(dtype), layer)
    return cache


@dataclass
class QuestionReading:
    """The question part read once after each passage apart: the scores, and the copies' KV to answer from.

    ``cache`` holds ``[prefix | passage 1 | ... | passage n | copy 1 | ... | copy n | rest]``: each copy the
    first ``read`` tokens of the question part at the positions right after its passage, and, when
    ``answered`` is a passage index, the rest of the question part after that passage's copy, whose last
    logits are ``first_logits``: the answer's first token is then ready if that passage is kept alone.
    """

    scores: torch.Tensor  # [n] log P(question | prefix, passage i)
    cache: DynamicCache
    prefix_tokens: int
    lengths: tuple[int, ...]  # [n] tokens of each passage
    read: int  # question-part tokens each copy holds
    answered: int | None = None  # the passage whose copy holds the whole question part
    first_logits: torch.Tensor | None = None  # [vocab] next-token logits after it

    def path(self, model: Any, prefix: PassageKV, passage: PassageKV, i: int) -> DynamicCache:
        """A one-row cache ``[prefix | passage i | copy i]``: the sequential prompt of passage ``i`` alone
        (to the end of the question part when ``i`` is ``answered``). The prefix and the passage come from
        their blocks as given, the copy from the reading, in ``model``'s dtype."""
        copies = self.prefix_tokens + sum(self.lengths)
        copy = copies + i * self.read
        spans = [(copy, copy + self.read)]
        if i == self.answered:
            spans.append((copies + len(self.lengths) * self.read, self.cache.get_seq_length()))
        path = new_cache(model)
        for layer, cached in enumerate(self.cache.layers):
            k = _joined(prefix.keys[layer], passage.keys[layer], cached.keys[0], spans, model.dtype)
            v = _joined(prefix.values[layer], passage.values[layer], cached.values[0], spans, model.dtype)
            path.update(k[None], v[None], layer)
        return path


def _joined(
    prefix: torch.Tensor,  # [kv_heads, len, head_dim], as passage and copies
    passage: torch.Tensor,
    copies: torch.Tensor,
    spans: list[tuple[int, int]],
    dtype: torch.dtype,
) -> torch.Tensor:
    """``prefix``, ``passage`` and the ``spans`` of ``copies`` in a row, in ``dtype``."""
    return torch.cat([t.to(dtype) for t in (prefix, passage, *(copies[:, a:b] for a, b in spans))], dim=1)


def scored_tokens(question_len: int, span: tuple[int, int] | None) -> tuple[int, int]:
    """``(first, read)``: the copies hold ``question_ids[:read]`` and score tokens ``first .. read - 1``.

    The question's own tokens are scored (the whole question part when ``span`` is None); the first token
    is not (its prediction comes from the passage's last position, whose logits a cached block does not
    keep), nor is the last (at least one token is left for the answer's prefill to run).

    >>> scored_tokens(20, (3, 15)), scored_tokens(20, None), scored_tokens(20, (0, 20))
    ((3, 15), (1, 19), (1, 19))
    """
    if question_len < 3:
        raise ValueError(f"a question part of {question_len} tokens is too short to score")
    first, end = span if span is not None else (1, question_len)
    first, read = max(first, 1), min(end, question_len - 1)
    return (first, read) if first < read else (1, question_len - 1)


@torch.inference_mode()
def read_question(
    model: Any,
    prefix: PassageKV,
    passages: Sequence[PassageKV],
    question_ids: torch.Tensor,  # [m]
    span: tuple[int, int] | None = None,  # question_ids[a:b] are the question's own tokens
    answer_after: int | None = None,  # also read the rest of the question part after this passage's copy
) -> QuestionReading:
    """Score each passage by ``log P(question | prefix, passage i)`` (see :func:`scored_tokens`).

    One forward over ``n`` copies of the question part (plain attention; positions as in the sequential
    prompt of the prefix and passage ``i`` alone); logits only where a scored token is predicted. With
    ``answer_after = g`` the rest of the question part follows copy ``g`` in the same forward, for a few
    tokens more: if passage ``g`` is the one kept, the answer's first token needs no further forward.
    """
    device = question_ids.device
    m, n = len(question_ids), len(passages)
    first, read = scored_tokens(m, span)
    lengths = torch.tensor([p.tokens for p in passages], device=device)  # [n]
    cached = prefix.tokens + int(lengths.sum())
    starts = prefix.tokens + lengths.cumsum(0) - lengths  # [n] first column of each passage
    copy = torch.arange(n, device=device).repeat_interleave(read)  # [new] the passage each new token reads
    offset = torch.arange(read, device=device).repeat(n)  # [new] the token's place in the question part
    ids = question_ids[:read].repeat(n)  # [new]
    if answer_after is not None:
        copy = torch.cat([copy, copy.new_full((m - read,), answer_after)])
        offset = torch.cat([offset, torch.arange(read, m, device=device)])
        ids = torch.cat([ids, question_ids[read:]])
    columns = torch.arange(cached, device=device)  # [cached]
    sees_passage = (columns >= starts[copy, None]) & (columns < (starts + lengths)[copy, None])
    sees_cached = sees_passage | (columns < prefix.tokens)  # [new, cached]
    new = torch.arange(len(ids), device=device)
    sees_new = (copy[:, None] == copy[None, :]) & (new[:, None] >= new[None, :])  # [new, new]
    allowed = torch.cat([sees_cached, sees_new], dim=1)  # [new, cached + new]
    # row t - 1 of each copy predicts token t; then the last row, which predicts the answer's first token
    rows = torch.arange(first - 1, read - 1, device=device)  # [scored]
    keep = (torch.arange(n, device=device)[:, None] * read + rows).view(-1)
    if answer_after is not None:
        keep = torch.cat([keep, keep.new_tensor([len(ids) - 1])])
    cache = stacked_cache(model, [prefix, *passages], model.dtype)
    hidden = model.get_decoder()(
        input_ids=ids[None],
        attention_mask=additive_mask(allowed[None, None], model.dtype),
        position_ids=(prefix.tokens + lengths[copy] + offset)[None],
        cache=cache,
        use_cache=True,
    ).last_hidden_state[0, keep]  # [kept, hidden]
    output = model.get_output_embeddings()
    targets = question_ids[first:read].repeat(n)  # [n * scored]
    logprobs = token_logprobs(output(hidden[: len(targets)]), targets).view(n, -1)
    ready = output(hidden[-1:])[0] if answer_after is not None else None  # [vocab]
    sizes = tuple(p.tokens for p in passages)
    return QuestionReading(logprobs.sum(dim=1), cache, prefix.tokens, sizes, read, answer_after, ready)


def token_logprobs(
    logits: torch.Tensor,  # [rows, vocab]
    targets: torch.Tensor,  # [rows] the token each row predicts
) -> torch.Tensor:
    """``log P(target)`` of each row ``# [rows]``, in fp32."""
    logits = logits.float()
    return logits.gather(1, targets[:, None])[:, 0] - logits.logsumexp(-1)


def most_likely_passages(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the ``keep`` highest ``scores`` ``# [n]``, in their original order.

    >>> most_likely_passages(torch.tensor([-9.0, -3.0, -5.0, -1.0]), 2)
    [1, 3]
    """
    return sorted(scores.topk(min(keep, len(scores))).indices.tolist())
