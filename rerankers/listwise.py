"""RankGPT-style listwise reranking: the model reads a window of numbered passages and writes a ranking.

>>> from rag.rerankers.lm import MemoryDocs
>>> config = ListwiseConfig(model="smollm2-135m-instruct", window=10, stride=5)
>>> reranker = ListwiseReranker(config, docstore=MemoryDocs(docs))  # doctest: +SKIP
>>> reranker.rerank("what do cats say?", hits, k=5)  # doctest: +SKIP

Greedy decoding of ``"[2] > [1] > ..."``; :func:`~rag.rerankers.permutation.parse_permutation` repairs
whatever the model writes, so the output is always a permutation of the window.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rag.lm.kv_cache import new_cache
from rag.registry import register
from rag.rerankers.listwise_base import ListwiseBase, ListwiseConfig
from rag.rerankers.permutation import parse_permutation
from rag.types import Document


@register("reranker", "listwise", ListwiseConfig)
class ListwiseReranker(ListwiseBase):
    name = "listwise"

    def permute(self, query: str, window_docs: Sequence[Document]) -> list[int]:
        identifiers = [str(i) for i in range(1, len(window_docs) + 1)]
        budget = self.reply_budget(len(window_docs))
        ids = self.window_prompt_ids(query, window_docs, identifiers, "", reserve=budget)
        text = self.tokenizer.decode(self.generate(ids, budget), skip_special_tokens=True)
        return parse_permutation(text, len(window_docs))

    def reply_budget(self, count: int) -> int:
        """Most tokens generated for a window of ``count``: the ranking "[1] > ... > [n]" and two more."""
        return len(self.encode(" > ".join(f"[{i}]" for i in range(1, count + 1)))) + 2

    @torch.inference_mode()
    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``ids`` (KV-cached; one forward per token), stopping at end of sequence."""
        stop = self._eos_ids()
        cache = new_cache(self.model)
        step = torch.tensor([ids], device=self.model.device)  # [1, prompt_len], then [1, 1]
        new: list[int] = []
        while len(new) < max_new_tokens:
            self.forward_passes += 1
            logits = self.model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1).logits
            token = int(logits[0, -1].argmax())  # [1, 1, vocab] -> the best id
            if token in stop:
                break
            new.append(token)
            step = torch.tensor([[token]], device=self.model.device)
        return new

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        generation_config = getattr(self.model, "generation_config", None)
        for value in (self.tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif value is not None:
                ids.update(value)
        return ids
