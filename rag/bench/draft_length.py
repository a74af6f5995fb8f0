"""How many tokens to draft per step on this machine: verification cost measured, acceptance modelled.

Drafting pays when the tokens a verification forward yields outgrow what the forward costs over a one-token
step, and that cost depends on the hardware more than on the model. On a 2-core AMD EPYC a 4-node tree cost
~1.4x a one-token step of Qwen2.5-0.5B and longer ones much more, so 3 drafted tokens were fastest; on a
2-core Intel Xeon (AVX512, 2026-11-29) a 2-row forward costs what a one-row one does, 4 rows about twice as
much, and 16 rows no more than 4, so long drafts are nearly free once a tree has a few nodes: at 3 / 7 / 15
drafted tokens retrieval drafting decoded the 0.5B's long XQuAD answers 1.60x / 1.80x / 2.11x faster than
plain decoding (docs/design/2026-11-27-generation-notebook.md,
"Retrieval drafting"). With ``SkinnyLinear``'s reordered weights
(2026-12-04) 4 / 8 / 16 rows cost 1.1 / 1.3 / 1.6x one row of the 0.5B there, and the pick moves with them.

:func:`measured_draft_tokens` times a forward of ``d + 1`` new tokens for each candidate ``d`` and picks the
one with the most expected tokens per second, the tokens a forward yields modelled by
:func:`expected_tokens_per_forward` (fitted to those runs: 2.5-2.6 / 3.3-3.5 / 4.1-4.2 tokens per forward).

That model is for drafts of a fixed length. Drafts scaled by their match (``RetrievalDrafter.match_scaled``,
the default) are mostly short whatever the cap, and ``rag bench generate`` caps them at
:data:`rag.generation.drafting.retrieval.MATCH_SCALED_DRAFT_TOKENS` instead.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

CANDIDATES = (1, 3, 7, 15)
# tokens per verification forward grew by ~0.8 per doubling of the draft length + 1 (Qwen2.5-0.5B,
# retrieval drafting, long XQuAD answers: 2.5-2.6 / 3.3-3.5 / 4.1-4.2 at 3 / 7 / 15 drafted tokens)
ACCEPTANCE_SLOPE = 0.8


def expected_tokens_per_forward(draft_tokens: int) -> float:
    """Tokens one verification forward yields, modelled: ``1 + 0.8 * log2(draft_tokens + 1)``.

    >>> [round(expected_tokens_per_forward(d), 1) for d in (0, 3, 7, 15)]
    [1.0, 2.6, 3.4, 4.2]
    """
    return 1 + ACCEPTANCE_SLOPE * math.log2(draft_tokens + 1)


@torch.inference_mode()
def forward_seconds(model: Any, rows: Sequence[int], cached: int = 512, repeats: int = 5) -> dict[int, float]:
    """Median seconds of one forward of ``n`` new tokens over ``cached`` cached ones, for each ``n`` of
    ``rows`` (after one untimed forward each: first-call costs such as ``SkinnyLinear``'s choice)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    cache = DynamicCache(config=model.config)
    prompt = torch.randint(0, vocab, (1, cached), generator=generator).to(device)
    model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
    seconds: dict[int, list[float]] = {n: [] for n in rows}
    for repeat in range(repeats + 1):
        for n in rows:
            new = torch.randint(0, vocab, (1, n), generator=generator).to(device)
            start = time.perf_counter()
            model(input_ids=new, cache=cache, use_cache=True)
            if repeat:
                seconds[n].append(time.perf_counter() - start)
            cache.crop(-n)
    return {n: statistics.median(times) for n, times in seconds.items()}


def measured_draft_tokens(model: Any, candidates: Sequence[int] = CANDIDATES) -> int:
    """The candidate draft length with the most expected tokens per second on this machine."""
    if not candidates or min(candidates) < 1:
        raise ValueError(f"draft length candidates must be >= 1, got {list(candidates)}")
    seconds = forward_seconds(model, [d + 1 for d in candidates])
    return max(candidates, key=lambda d: expected_tokens_per_forward(d) / seconds[d + 1])
