"""Retrieval-augmented drafting: propose continuations by matching the newest tokens against the prompt.

RAG answers copy from their passages: names, dates, whole phrases. The prompt (which holds the passages) and
the answer so far are searched for earlier occurrences of the answer's last ``n`` tokens, longest ``n`` first
and, among occurrences of one length, the most recent first; the tokens that followed each occurrence are
draft continuations. The generator merges them into a token tree
(:mod:`rag.generation.token_tree`) and verifies the whole tree in one forward
(:mod:`rag.generation.speculative`), so drafting never changes what greedy decoding outputs, only how many
forwards it takes.

>>> drafter = RetrievalDrafter(max_ngram=2, branches=3)
>>> #          0   1   2   3   4   5   6   7   8   9
>>> context = [5,  7,  8,  9,  1,  7,  8,  2,  4,  7]
>>> drafter.propose(context, max_tokens=3)
[[8, 2, 4], [8, 9, 1]]

The last token, 7, occurred at 1 and at 5 (a 1-gram match; the 2-gram ``[4, 7]`` occurs nowhere earlier);
the three tokens after each occurrence are the two drafts, the one after 5 first. With ``[2, 4, 7]`` at the
end instead, the 2-gram ``[4, 7]`` would have matched first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rag.errors import ConfigError

# The draft length that was fastest on a 2-core AMD EPYC: a tree of up to 4 nodes verified at ~1.4x the cost
# of a one-token step, longer ones cost much more. Other CPUs differ (a 2-core Xeon: 15);
# rag.generation.draft_length measures it. Drafting stays off by default.
CPU_DRAFT_TOKENS = 3


@dataclass(frozen=True)
class RetrievalDrafter:
    """Draft from n-gram matches in the context: up to ``branches`` distinct continuations, longest first.

    ``max_ngram`` / ``min_ngram`` bound the length of the matched suffix; among matches of one length, later
    occurrences are taken first: the answer so far, then the passages from the last one back (replayed on 12
    long XQuAD answers of Qwen2.5-0.5B: 2.54 tokens per verification forward against 2.47 taking the earliest
    occurrence first; docs/generation.md).
    """

    max_ngram: int = 3
    min_ngram: int = 1
    branches: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ConfigError(f"need 1 <= min_ngram <= max_ngram, got {self.min_ngram}, {self.max_ngram}")
        if self.branches < 1:
            raise ConfigError(f"branches must be at least 1, got {self.branches}")

    def propose(self, context: Sequence[int], max_tokens: int) -> list[list[int]]:
        """Distinct continuations of ``context`` (prompt + answer so far), at most ``max_tokens`` long."""
        if max_tokens < 1:
            return []
        ids = np.asarray(context, dtype=np.int64)  # [length]
        length = len(ids)
        drafts: list[list[int]] = []
        seen: set[tuple[int, ...]] = set()
        for n in range(min(self.max_ngram, length - 1), self.min_ngram - 1, -1):
            suffix = ids[length - n :]  # [n]
            # Starts i of earlier occurrences; i < length - n leaves at least one token after the match.
            starts = np.flatnonzero(ids[: length - n] == suffix[0])
            for k in range(1, n):
                starts = starts[ids[starts + k] == suffix[k]]
            for start in starts[::-1]:  # the most recent occurrence first
                draft = tuple(ids[start + n : start + n + max_tokens].tolist())
                if draft not in seen:
                    seen.add(draft)
                    drafts.append(list(draft))
                    if len(drafts) == self.branches:
                        return drafts
        return drafts
