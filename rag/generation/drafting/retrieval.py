"""Retrieval-augmented drafting: propose continuations by matching the newest tokens against the prompt.

RAG answers copy from their passages: names, dates, whole phrases. The prompt (which holds the passages) and
the answer so far are searched for earlier occurrences of the answer's last ``n`` tokens, longest ``n`` first
and, among occurrences of one length, the most recent first; the tokens that followed each occurrence are
draft continuations, each as long as its match makes likely: after a match of ``L`` tokens (counted back past
the matched n-gram for as long as the tokens agree), at most ``2L - 1``. The generator merges them into a
token tree (:mod:`rag.generation.decode.token_tree`) and verifies the whole tree in one forward
(:mod:`rag.generation.decode.speculative`), so drafting never changes what greedy decoding outputs, only how
many forwards it takes.

>>> drafter = RetrievalDrafter(max_ngram=2, branches=3, match_scaled=False)
>>> #          0   1   2   3   4   5   6   7   8   9
>>> context = [5,  7,  8,  9,  1,  7,  8,  2,  4,  7]
>>> drafter.propose(context, max_tokens=3)
[[8, 2, 4], [8, 9, 1]]

The last token, 7, occurred at 1 and at 5 (a 1-gram match; the 2-gram ``[4, 7]`` occurs nowhere earlier);
the three tokens after each occurrence are the two drafts, the one after 5 first. With ``[2, 4, 7]`` at the
end instead, the 2-gram ``[4, 7]`` would have matched first. Scaled by their matches (the default), both
drafts are one token long: a 1-token match drafts 1 token, and only ``[8]`` is left. After a 3-token match,
five tokens may follow:

>>> RetrievalDrafter().propose([9, 1, 7, 8, 2, 4, 5, 6, 9, 1, 7], max_tokens=7)
[[8, 2, 4, 5, 6]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rag.errors import ConfigError

# The cap on drafts scaled by their match (the default): most steps draft a few tokens, and only a verbatim
# run of 16 or more tokens drafts 31. Replayed on the greedy long XQuAD answers of both Qwen2.5 models with
# forward costs measured on a 2-core Xeon, 31 beat every fixed length and every smaller cap
# (docs/design/2026-11-27-generation-notebook.md). Unscaled drafts were fastest at 3 tokens on a 2-core AMD
# EPYC and at 7-15 on the Xeon (rag.bench.draft_length measures it). Drafting stays off by default.
MATCH_SCALED_DRAFT_TOKENS = 31


@dataclass(frozen=True)
class RetrievalDrafter:
    """Draft from n-gram matches in the context: up to ``branches`` distinct continuations, longest first.

    ``max_ngram`` / ``min_ngram`` bound the length of the matched suffix; among matches of one length, later
    occurrences are taken first: the answer so far, then the passages from the last one back (replayed on 12
    long XQuAD answers of Qwen2.5-0.5B: 2.54 tokens per verification forward against 2.47 taking the earliest
    occurrence first; docs/design/2026-11-27-generation-notebook.md).

    ``match_scaled`` drafts at most ``2L - 1`` tokens after a match of ``L`` tokens: a long verbatim run is
    likely to go on, a one-token match rarely does (on 10 long XQuAD answers of Qwen2.5-1.5B, the first
    drafted token was accepted after 19% of 1-token matches and 94% of 10-or-longer ones), and each drafted
    token costs verification work (docs/design/2026-11-27-generation-notebook.md,
    "Draft length scaled by the match").
    """

    max_ngram: int = 3
    min_ngram: int = 1
    branches: int = 1
    match_scaled: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ConfigError(f"need 1 <= min_ngram <= max_ngram, got {self.min_ngram}, {self.max_ngram}")
        if self.branches < 1:
            raise ConfigError(f"branches must be at least 1, got {self.branches}")

    def propose(self, context: Sequence[int], max_tokens: int) -> list[list[int]]:
        """Distinct continuations of ``context`` (prompt + answer so far), at most ``max_tokens`` long."""
        return [draft for draft, _ in self.matches(context, max_tokens)]

    def matches(self, context: Sequence[int], max_tokens: int) -> list[tuple[list[int], int]]:
        """:meth:`propose`'s drafts, each with the length of the match it follows (counted back past the
        matched n-gram while the tokens agree, up to what ``max_tokens`` needs)."""
        if max_tokens < 1:
            return []
        ids = np.asarray(context, dtype=np.int64)  # [length]
        length = len(ids)
        found: list[tuple[list[int], int]] = []
        seen: set[tuple[int, ...]] = set()
        for n in range(min(self.max_ngram, length - 1), self.min_ngram - 1, -1):
            suffix = ids[length - n :]  # [n]
            # Starts i of earlier occurrences; i < length - n leaves at least one token after the match.
            starts = np.flatnonzero(ids[: length - n] == suffix[0])
            for k in range(1, n):
                starts = starts[ids[starts + k] == suffix[k]]
            for start in starts[::-1]:  # the most recent occurrence first
                matched = _match_length(ids, start, n, (max_tokens + 2) // 2)
                room = min(max_tokens, 2 * matched - 1) if self.match_scaled else max_tokens
                draft = tuple(ids[start + n : start + n + room].tolist())
                if draft not in seen:
                    seen.add(draft)
                    found.append((list(draft), matched))
                    if len(found) == self.branches:
                        return found
        return found


def _match_length(ids: np.ndarray, start: int, n: int, limit: int) -> int:
    """How many tokens before the context's end agree with those before ``start + n`` (at least the ``n``
    matched ones), counted up to ``limit``."""
    end = len(ids)
    matched = n
    while (
        matched < limit
        and start + n - matched - 1 >= 0
        and ids[start + n - matched - 1] == ids[end - matched - 1]
    ):
        matched += 1
    return matched
