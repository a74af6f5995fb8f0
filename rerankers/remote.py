"""What the rerankers over an OpenAI-compatible server share: the server, sliding windows, passages cut by
words (the server's tokenizer is not known here), a count of requests. A variant implements ``permute``."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from rag.errors import ConfigError
from rag.generation.openai_compatible import OpenAICompatibleConfig, OpenAICompatibleGenerator
from rag.rerankers.base import DocumentReranker, DocumentSource
from rag.rerankers.listwise_base import order_by_windows
from rag.types import Document


@dataclass(frozen=True)
class RemoteWindowsConfig:
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


class RemoteWindowReranker(DocumentReranker):
    """Sliding windows, back to front, each ordered by one request to the server (:meth:`permute`)."""

    def __init__(self, config: RemoteWindowsConfig, *, docstore: DocumentSource | None = None) -> None:
        super().__init__(docstore)
        self.config = config
        self.server = OpenAICompatibleGenerator(config.server)
        self.requests = 0  # chat requests sent since creation, one per window

    def order(self, query: str, docs: list[Document]) -> tuple[list[int], None]:
        permute = partial(self.permute, query)
        return order_by_windows(docs, self.config.window, self.config.stride, permute), None

    @abstractmethod
    def permute(self, query: str, window_docs: Sequence[Document]) -> list[int]:
        """Positions of ``window_docs`` (0-based), most relevant first: a permutation of the window."""

    def passage_text(self, doc: Document) -> str:
        return " ".join(doc.contents.split()[: self.config.passage_words])
