"""Pointwise relevance: ask about each passage alone and score it by log P("yes") - log P("no").

The simple baseline: each candidate judged alone, no interaction between candidates; the prompts of
:data:`BATCH` candidates share one (left-padded) forward pass.

>>> reranker = PointwiseReranker(LMRerankerConfig(model="smollm2-135m-instruct"))  # doctest: +SKIP
>>> reranker.score("what do cats say?", docs)  # doctest: +SKIP
[3.1, -2.4]
"""

from __future__ import annotations

from functools import cached_property

import torch

from rag.errors import ConfigError
from rag.registry import register
from rag.rerankers.lm import LMReranker, LMRerankerConfig
from rag.types import Document

POINTWISE_SYSTEM = "You judge whether a passage answers or is relevant to a search query."
BATCH = 8  # passages scored in one forward pass


@register("reranker", "pointwise", LMRerankerConfig)
class PointwiseReranker(LMReranker):
    name = "pointwise"

    def order(self, query: str, docs: list[Document]) -> tuple[list[int], list[float]]:
        scores = self.score(query, docs)
        return sorted(range(len(docs)), key=lambda i: (-scores[i], i)), scores

    def score(self, query: str, docs: list[Document]) -> list[float]:
        """``log P(yes) - log P(no)`` of each document, in input order."""
        yes, no = self.answer_tokens
        prompts = [
            self.prompt_ids(
                f"Passage: {self.passage_text(doc)}\n\nSearch query: {query}\n\n"
                "Is the passage relevant to the search query? Answer Yes or No.",
                POINTWISE_SYSTEM,
            )
            for doc in docs
        ]
        scores: list[float] = []
        for start in range(0, len(prompts), BATCH):
            log_probs = torch.log_softmax(self.batch_next_token_logits(prompts[start : start + BATCH]), -1)
            scores += (log_probs[:, yes] - log_probs[:, no]).tolist()  # [B, vocab] -> [B]
        return scores

    @cached_property
    def answer_tokens(self) -> tuple[int, int]:
        """Token ids of "Yes" and "No" at the start of a reply."""
        ids = [self.encode(word) for word in ("Yes", "No")]
        if any(len(i) != 1 for i in ids):
            raise ConfigError(f"'Yes'/'No' are not single tokens for this tokenizer: {ids}")
        return ids[0][0], ids[1][0]
