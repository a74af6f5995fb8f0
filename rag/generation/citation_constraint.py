"""Constrained decoding that makes an answer cite before it ends.

Small models often answer correctly from the passages but leave out the ``[n]`` markers the prompt asks for.
With ``GenerationParams.require_citation`` the next-token scores are changed, as a function of the tokens
generated so far only, until the answer holds a citation:

* the end-of-answer tokens' probability mass moves to the opening bracket (``" ["``, ``logsumexp`` of the
  scores): where the model would stop, it opens a citation instead, and every other token keeps its
  probability (greedy may also pick the bracket one step earlier, where stopping and citing together
  outweigh the best other token);
* after that bracket only the tokens of ``"1]"`` … ``"n]"`` are allowed, so the model picks the passage
  number by its own probabilities.

Once a marker is in the text the scores pass through unchanged. Because the change depends only on the
generated tokens, speculative verification applies the same rule and greedy drafting stays identical to
greedy decoding. A bracket the model writes itself before any citation is completed the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rag.errors import ConfigError
from rag.generation.prompt import has_citation


class CitationConstraint:
    """Next-token score transform for one answer over ``passage_count`` numbered passages."""

    def __init__(self, tokenizer: Any, passage_count: int, eos_token_ids: Sequence[int]) -> None:
        if passage_count < 1:
            raise ValueError("a citation needs at least one passage")
        self.tokenizer = tokenizer
        self.eos_token_ids = sorted(eos_token_ids)
        self.bracket = _single_token(tokenizer, " [") or _single_token(tokenizer, "[")
        if self.bracket is None:
            raise ConfigError("the tokenizer has no single token for '[': citations cannot be enforced")
        # token ids after the bracket, one sequence per passage number: "2]" -> ids
        self.completions = [
            tuple(tokenizer.encode(f"{n}]", add_special_tokens=False)) for n in range(1, passage_count + 1)
        ]
        # The decoding loops only ever extend ``generated``: once a marker is in it, it stays, so the
        # answer is not detokenized again at every later step.
        self._cited = False

    def __call__(self, generated: Sequence[int], scores: torch.Tensor) -> torch.Tensor:
        """``scores # [vocab]`` for the token after ``generated``, constrained; a new tensor or ``scores``."""
        if self._cited or has_citation(self.tokenizer.decode(list(generated), skip_special_tokens=True)):
            self._cited = True
            return scores
        allowed = self._allowed_after_bracket(generated)
        if allowed is not None:
            constrained = torch.full_like(scores, float("-inf"))
            index = torch.tensor(sorted(allowed), device=scores.device)
            constrained[index] = scores[index]
            return constrained
        eos = torch.tensor(self.eos_token_ids, device=scores.device)
        moved = scores.clone()
        moved[self.bracket] = torch.logsumexp(torch.cat([scores[eos], scores[self.bracket][None]]), dim=0)
        moved[eos] = float("-inf")
        return moved

    def _allowed_after_bracket(self, generated: Sequence[int]) -> set[int] | None:
        """Next tokens of the number completions when the text is inside an opened citation, else None."""
        if self.bracket not in generated:
            return None
        last = len(generated) - 1 - list(reversed(generated)).index(self.bracket)
        typed = tuple(generated[last + 1 :])
        n = len(typed)
        allowed = {c[n] for c in self.completions if len(c) > n and c[:n] == typed}
        return allowed or None


def _single_token(tokenizer: Any, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None
