"""Draft model + retrieval drafts in one token tree: RASD (retrieval-augmented speculative decoding).

The two drafters fail in opposite places. Retrieval drafts (:mod:`rag.generation.drafting.retrieval`) are long
and free where the answer copies its passages, and wrong everywhere else; a draft model
(:mod:`rag.generation.drafting.draft_model`) costs a forward per drafted token but guesses the target's words
in free text too. The fused drafter proposes both: the draft model's greedy continuation, plus the retrieval
drafts that the draft model finds plausible. The prune rule looks at a retrieval draft's first token only:

* kept when it is the draft model's own next token (the branch then shares the model draft's first node), or
  when the draft model gives it probability ``>= min_prob``;
* dropped otherwise: the draft model (standing in for the target) does not expect the continuation to start
  there, and every drafted node costs the target verification work.

The survivors follow the model draft, in the retrieval drafter's order;
:class:`~rag.generation.decode.token_tree.TokenTree` merges their shared prefixes. Both drafters are
deterministic, so the fused drafts are too.

After a long match the retrieval draft is usually right and the draft model's forwards are wasted:
with ``model_below`` set, the draft model is asked only when no retrieval match is ``model_below`` tokens or
longer; otherwise the retrieval drafts are proposed alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from rag.errors import ConfigError
from rag.generation.drafting.retrieval import RetrievalDrafter


class ModelDrafter(Protocol):
    """What fusion needs of a draft model, as :class:`rag.generation.drafting.draft_model.DraftModelProposer`
    has."""

    def next_token_probs(self, context: Sequence[int]) -> torch.Tensor:
        """The next-token distribution after ``context`` ``# [vocab]``."""
        ...

    def propose(self, context: Sequence[int], max_tokens: int) -> list[list[int]]:
        """The greedy continuation of ``context`` (one draft, or none)."""
        ...


def keep_retrieval_draft(first_token: int, probs: torch.Tensor, min_prob: float) -> bool:
    """The prune rule: keep a retrieval draft starting with ``first_token`` given the draft model's next-token
    distribution ``probs # [vocab]``."""
    return first_token == int(probs.argmax()) or float(probs[first_token]) >= min_prob


@dataclass
class FusedDrafter:
    """The draft model's greedy continuation, then the retrieval drafts :func:`keep_retrieval_draft` keeps."""

    retrieval: RetrievalDrafter
    draft: ModelDrafter
    min_prob: float = 0.1
    model_below: int | None = None  # ask the draft model only after retrieval matches shorter than this

    def __post_init__(self) -> None:
        if not 0 <= self.min_prob <= 1:
            raise ConfigError(f"min_prob must be in [0, 1], got {self.min_prob}")
        if self.model_below is not None and self.model_below < 1:
            raise ConfigError(f"model_below must be at least 1 or None, got {self.model_below}")

    def propose(self, context: Sequence[int], max_tokens: int) -> list[list[int]]:
        """Candidate continuations of ``context`` (prompt + answer so far), at most ``max_tokens`` long."""
        if max_tokens < 1 or not context:
            return []
        matches = self.retrieval.matches(context, max_tokens)
        retrieved = [draft for draft, _ in matches]
        if self.model_below is not None and any(matched >= self.model_below for _, matched in matches):
            return retrieved
        # The distribution first: it is the one after ``context``; propose() moves the cache past the drafts.
        probs = self.draft.next_token_probs(context) if retrieved else None  # [vocab]
        drafts = self.draft.propose(context, max_tokens)
        for candidate in retrieved:
            assert probs is not None
            if candidate not in drafts and keep_retrieval_draft(candidate[0], probs, self.min_prob):
                drafts.append(candidate)
        return drafts
