"""RankGPT-style listwise reranking over any OpenAI-compatible chat server (vLLM, SGLang, llama.cpp's server,
Ollama, a hosted API, or a ``rag serve`` under its generator's name).

The same prompt and sliding windows as the local :mod:`~rag.rerankers.listwise`; the server writes the ranking
``"[2] > [1] > ..."`` greedily and :func:`~rag.rerankers.permutation.parse_permutation` repairs it. The
server's tokenizer is not known here, so passages are cut by words (``passage_words``) rather than tokens.

>>> url, model = "http://127.0.0.1:8080/v1", "qwen2.5-coder-1.5b-instruct"
>>> server = OpenAICompatibleConfig(base_url=url, model=model)  # doctest: +SKIP
>>> config = RemoteWindowsConfig(server=server)  # doctest: +SKIP
>>> reranker = RemoteListwiseReranker(config, docstore=MemoryDocs(docs))  # doctest: +SKIP
>>> reranker.rerank("what do cats say?", hits, k=5)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from rag.generation.base import ChatParams
from rag.registry import register
from rag.rerankers.listwise_base import LISTWISE_SYSTEM, ranking_prompt
from rag.rerankers.permutation import parse_permutation
from rag.rerankers.remote import RemoteWindowReranker, RemoteWindowsConfig
from rag.types import Document


@register("reranker", "listwise-remote", RemoteWindowsConfig)
class RemoteListwiseReranker(RemoteWindowReranker):
    name = "listwise-remote"

    def permute(self, query: str, window_docs: Sequence[Document]) -> list[int]:
        """Positions of ``window_docs`` best first, as the server ranks them."""
        n = len(window_docs)
        passages = [self.passage_text(d) for d in window_docs]
        user = ranking_prompt(query, passages, [str(i) for i in range(1, n + 1)])
        messages = [{"role": "system", "content": LISTWISE_SYSTEM}, {"role": "user", "content": user}]
        # "[12] > " is at most 5 tokens for common tokenizers; two more for the end
        params = ChatParams(max_new_tokens=5 * n + 2)
        self.requests += 1
        stream = self.server.chat(messages, params)
        return parse_permutation("".join(stream), n)
