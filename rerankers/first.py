"""FIRST: listwise reranking from the logits of the first identifier the model would write.

Same prompt and sliding windows as :mod:`~rag.rerankers.listwise`, but one forward pass per window and no
generation: the passages are labelled ``[A]``, ``[B]``, ... and ordered by the next-token logits of their
identifiers at the start of the reply (Reddy et al., 2024, "FIRST: Faster Improved Listwise Reranking with
Single Token Decoding").

>>> reranker = FirstReranker(ListwiseConfig(model="qwen2.5-coder-0.5b-instruct"))  # doctest: +SKIP
>>> reranker.permute("what do cats say?", docs)  # doctest: +SKIP
[2, 0, 1]

Each identifier must be a single token right where the reply starts. Tokenizers that merge the bracket with
the letter into one token for every identifier are scored on those merged tokens; the others (Qwen2.5 writes
``"[A"`` as one token but ``"[O"`` and ``"[Q"`` as two) get ``"["`` appended to the prompt and are scored on
the letter tokens. Anything else raises a ConfigError.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch

from rag.errors import ConfigError
from rag.registry import register
from rag.rerankers.listwise_base import ListwiseBase, ListwiseConfig
from rag.rerankers.lm import single_token
from rag.rerankers.permutation import LETTERS
from rag.types import Document


@register("reranker", "first", ListwiseConfig)
class FirstReranker(ListwiseBase):
    name = "first"

    def permute(self, query: str, window_docs: Sequence[Document]) -> list[int]:
        n = len(window_docs)
        prefix, tokens = self.identifier_tokens
        ids = self.window_prompt_ids(query, window_docs, LETTERS[:n], prefix, reserve=1)
        logits = self.next_token_logits(ids)[tokens[:n]]  # [vocab] -> [n]
        return rank_by_logits(logits)

    @cached_property
    def identifier_tokens(self) -> tuple[str, list[int]]:
        """The text appended to the prompt (``""`` or ``"["``) and the token id of each letter identifier."""
        if self.config.window > len(LETTERS):
            raise ConfigError(
                f"FIRST labels passages A..Z: window must be at most 26, got {self.config.window}"
            )
        letters = LETTERS[: self.config.window]
        merged = [self.encode(f"[{c}") for c in letters]
        if all(len(ids) == 1 for ids in merged):
            return "", [ids[0] for ids in merged]
        try:
            return "[", [single_token(self, c) for c in letters]
        except ConfigError as error:
            raise ConfigError(f"FIRST needs single-token identifiers: {error}") from None


def rank_by_logits(logits: torch.Tensor) -> list[int]:
    """Positions sorted by logit ``# [n]``, highest first; ties keep the earlier (better-ranked) position.

    >>> rank_by_logits(torch.tensor([0.5, 2.0, 0.5, 3.0]))
    [3, 1, 0, 2]
    """
    return sorted(range(len(logits)), key=lambda i: (-float(logits[i]), i))
