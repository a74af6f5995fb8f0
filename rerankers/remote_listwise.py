"""RankGPT-style listwise reranking over any OpenAI-compatible chat server (vLLM, SGLang, llama.cpp's server,
Ollama, a hosted API, or a ``rag serve`` under its generator's name).

The same prompt and sliding windows as the local :mod:`~rag.rerankers.listwise`; the server writes the ranking
``"[2] > [1] > ..."`` greedily and :func:`~rag.rerankers.permutation.parse_permutation` repairs it. The
server's tokenizer is not known here, so passages are cut by words (``passage_words``) rather than tokens.

>>> server = OpenAICompatibleConfig(base_url="http://127.0.0.1:8080/v1", model="qwen2.5-coder-1.5b-instruct")
>>> config = RemoteListwiseConfig(server=server)
>>> reranker = RemoteListwiseReranker(config, docstore=MemoryDocs(docs))  # doctest: +SKIP
>>> reranker.rerank("what do cats say?", hits, k=5)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from rag.errors import ConfigError
from rag.generation.base import GenerationParams
from rag.generation.openai_compatible import OpenAICompatibleConfig, OpenAICompatibleGenerator
from rag.registry import register
from rag.rerankers.base import DocumentReranker, DocumentSource
from rag.rerankers.listwise_base import LISTWISE_SYSTEM, order_by_windows, ranking_prompt
from rag.rerankers.permutation import parse_permutation
from rag.types import Document


@dataclass(frozen=True)
class RemoteListwiseConfig:
    server: OpenAICompatibleConfig  # where the server is, its model, key, timeout and retries
    window: int = 20  # passages per prompt
    stride: int = 10  # how far the window moves toward the front after each prompt
    passage_words: int = 96  # each passage is cut to this many words (about 128 tokens)

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ConfigError(f"window must be at least 2, got {self.window}")
        if not 1 <= self.stride <= self.window:
            raise ConfigError(f"stride must be between 1 and window={self.window}, got {self.stride}")
        if self.passage_words < 4:
            raise ConfigError(f"passage_words must be at least 4, got {self.passage_words}")


@register("reranker", "listwise-remote", RemoteListwiseConfig)
class RemoteListwiseReranker(DocumentReranker):
    name = "listwise-remote"

    def __init__(self, config: RemoteListwiseConfig, *, docstore: DocumentSource | None = None) -> None:
        super().__init__(docstore)
        self.config = config
        self.server = OpenAICompatibleGenerator(config.server)
        self.requests = 0  # chat requests sent since creation, one per window

    def order(self, query: str, docs: list[Document]) -> tuple[list[int], None]:
        permute = partial(self.permute, query)
        return order_by_windows(docs, self.config.window, self.config.stride, permute), None

    def permute(self, query: str, window_docs: Sequence[Document]) -> list[int]:
        """Positions of ``window_docs`` best first, as the server ranks them."""
        n = len(window_docs)
        passages = [self.passage_text(d) for d in window_docs]
        user = ranking_prompt(query, passages, [str(i) for i in range(1, n + 1)])
        messages = [{"role": "system", "content": LISTWISE_SYSTEM}, {"role": "user", "content": user}]
        # "[12] > " is at most 5 tokens for common tokenizers; two more for the end
        params = GenerationParams(max_new_tokens=5 * n + 2, keep_passages=0)
        self.requests += 1
        stream = self.server.chat(messages, params)
        return parse_permutation("".join(stream), n)

    def passage_text(self, doc: Document) -> str:
        words = doc.contents.split()
        return " ".join(words[: self.config.passage_words])
