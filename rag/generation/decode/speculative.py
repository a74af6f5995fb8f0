"""Speculative decoding with a token tree: draft, verify the tree in one forward, keep the accepted path.

Greedy decoding keeps a drafted token only when it is the argmax, so the output is token for token the
plain greedy output. Sampling uses the speculative-sampling acceptance rule for a deterministic drafter,
which leaves the output distribution unchanged (see :func:`choose`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Protocol

import torch

from rag.generation.base import DecodeStats, Drafting, SamplingParams
from rag.generation.decode.kv_batch import KVBatch
from rag.generation.decode.sampling import target_probs
from rag.generation.decode.token_tree import TokenTree

# (tokens generated so far, logits of every row after them # [rows, vocab]) -> next-token scores # [vocab]
Scorer = Callable[[list[int], torch.Tensor], torch.Tensor]


class DraftProposer(Protocol):
    def propose(self, context: Sequence[int], max_tokens: int) -> list[list[int]]:
        """Candidate continuations of ``context``, each at most ``max_tokens`` long."""
        ...


def choose(
    scores: torch.Tensor,  # [vocab]
    drafts: Sequence[int],  # distinct drafted tokens at this tree node, tried in order
    params: SamplingParams,
    rng: torch.Generator | None = None,
) -> tuple[int, int | None]:
    """The next token and the index of the draft it accepts; None when the token is not a draft.

    In vLLM's words, the token is **accepted** (one of ``drafts``), **recovered** (every draft was rejected:
    drawn from the residual distribution) or a **bonus** token (``drafts`` is empty: the node past the end
    of an accepted draft, or the root of a step, scored for free by the same forward).

    Greedy: the argmax, accepted if it was drafted. Sampling: the drafter proposes each draft with
    probability 1, so the standard rule ``accept with min(1, p/q)`` accepts draft ``d`` with probability
    ``p(d)``; on rejection the residual ``max(0, p - q)`` is ``p`` without ``d``, renormalised, and the next
    draft is tried against it. With every draft rejected the recovered token is drawn from the last residual.
    Each token ``t`` thus comes out with probability ``p(t)`` exactly (two drafts:
    ``P(d2) = (1 - p(d1)) · p(d2) / (1 - p(d1)) = p(d2)``).
    """
    if params.temperature == 0:
        token = int(torch.argmax(scores))
        return token, (list(drafts).index(token) if token in drafts else None)
    probs = target_probs(scores, params)  # [vocab]
    for index, draft in enumerate(drafts):
        if torch.rand(1, generator=rng, device=probs.device).item() < probs[draft].item():
            return draft, index
        probs = probs.clone()
        probs[draft] = 0.0
        probs /= probs.sum()
    return int(torch.multinomial(probs, num_samples=1, generator=rng)), None


def speculative_decode(
    batch: KVBatch,
    score: Scorer,
    proposer: DraftProposer,
    prompt: list[int],
    params: SamplingParams,
    drafting: Drafting,
    eos_token_ids: Collection[int],
    rng: torch.Generator | None = None,
    stats: DecodeStats | None = None,
) -> Iterator[int]:
    """Yield new token ids as they are accepted, the final eos included.

    Each step: the root is the last emitted token (not yet in the cache); drafts from ``proposer`` hang
    below it; one forward over the tree gives the scores after every node; walk down from the root,
    choosing a token at each node, while the choice is a drafted child; keep the KV of the walked path; the
    first token that was not drafted is emitted and becomes the next root.
    """
    stats = stats if stats is not None else DecodeStats()
    generated: list[int] = []
    logits = batch.prefill(params.max_new_tokens + drafting.tokens)  # [rows, vocab]
    token, _ = choose(score(generated, logits), (), params, rng)
    while True:
        generated.append(token)
        yield token
        if token in eos_token_ids or len(generated) >= params.max_new_tokens:
            return
        room = min(drafting.tokens, params.max_new_tokens - len(generated))
        tree = TokenTree.build(token, proposer.propose(prompt + generated, room))
        logits = batch.extend(tree.tokens, tree.parents)  # [rows, nodes, vocab]
        stats.decode_steps += 1
        stats.drafted_tokens += len(tree) - 1
        path = [0]
        while True:
            children = tree.children[path[-1]]
            scores = score(generated, logits[:, path[-1]])  # [vocab]
            token, accepted = choose(scores, [tree.tokens[c] for c in children], params, rng)
            if accepted is None:
                break  # ``token`` is recovered (the drafts here were rejected) or the bonus (none drafted)
            path.append(children[accepted])
            stats.accepted_tokens += 1
            generated.append(token)
            yield token
            if token in eos_token_ids or len(generated) >= params.max_new_tokens:
                return
        batch.keep(path)
