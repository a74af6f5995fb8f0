"""The generator contract and the per-request decoding parameters."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rag.errors import ConfigError
from rag.types import Answer, Document


@dataclass(frozen=True)
class GenerationParams:
    """How to decode one answer. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")


class Generator(ABC):
    @abstractmethod
    def answer(
        self, question: str, passages: Sequence[Document], params: GenerationParams | None = None
    ) -> Answer:
        """Answer ``question`` from ``passages``, citing them by number."""

    @abstractmethod
    def stream(
        self, question: str, passages: Sequence[Document], params: GenerationParams | None = None
    ) -> Iterator[str]:
        """Yield the answer's text piece by piece as tokens are accepted."""
