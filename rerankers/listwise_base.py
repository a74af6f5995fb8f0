"""Sliding windows over a candidate list, back to front: the part every listwise reranker shares.

A variant implements only ``permute(query, window_docs) -> list[int]`` (window positions, best first).
With 25 candidates, window 10 and stride 5 the windows are, in order::

    >>> sliding_windows(25, window=10, stride=5)
    [(15, 25), (10, 20), (5, 15), (0, 10)]

Each window reorders its slice of the current list in place, so a relevant passage found at the back can
climb by ``window - stride`` places per window and reach the top in one sweep.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from rag.errors import ConfigError
from rag.rerankers.lm import LMReranker, LMRerankerConfig
from rag.types import Document

LISTWISE_SYSTEM = "You are a search assistant that ranks passages by how relevant they are to a search query."


@dataclass(frozen=True)
class ListwiseConfig(LMRerankerConfig):
    window: int = 20  # passages per prompt
    stride: int = 10  # how far the window moves toward the front after each prompt

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 2:
            raise ConfigError(f"window must be at least 2, got {self.window}")
        if not 1 <= self.stride <= self.window:
            raise ConfigError(f"stride must be between 1 and window={self.window}, got {self.stride}")


def sliding_windows(count: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``(start, end)`` slices from the back of a ``count``-long list to its front; the last starts at 0.

    Every window is ``window`` long (or ``count`` when shorter), so the front window is full even when
    ``count - window`` is not a multiple of ``stride``.
    """
    if count <= 0:
        return []
    spans = []
    end = count
    while True:
        start = max(end - window, 0)
        spans.append((start, min(start + window, count)))
        if start == 0:
            return spans
        end -= stride


def order_by_windows(
    docs: Sequence[Document], window: int, stride: int, permute: Callable[[list[Document]], list[int]]
) -> list[int]:
    """Positions of ``docs`` best first: each window's slice of the current order, back to front, reordered
    by ``permute`` (a permutation of the window's positions, best first)."""
    current = list(range(len(docs)))  # current[i]: the input position now at rank i
    for start, end in sliding_windows(len(docs), window, stride):
        slice_ = current[start:end]
        permutation = permute([docs[p] for p in slice_])
        if sorted(permutation) != list(range(len(slice_))):
            raise AssertionError(f"permute returned {permutation} for a window of {len(slice_)}")
        current[start:end] = [slice_[i] for i in permutation]
    return current


def ranking_prompt(query: str, passages: Sequence[str], identifiers: Sequence[str]) -> str:
    """The RankGPT user message: the query, the passages labelled ``[id]``, then the instruction."""
    n = len(passages)
    listing = "\n".join(f"[{i}] {p}" for i, p in zip(identifiers, passages, strict=True))
    example = f"[{identifiers[1]}] > [{identifiers[0]}]" if n > 1 else f"[{identifiers[0]}]"
    return (
        f"I will give you {n} passages, each labelled with an identifier in square brackets. "
        f"Rank them by relevance to the search query: {query}\n\n{listing}\n\n"
        f"Search query: {query}\n"
        f"Rank the {n} passages above from most to least relevant to the search query. List every "
        f"passage once by its identifier, in the format {example} > ... Answer with the ranking only."
    )


class ListwiseBase(LMReranker):
    """Reranks with sliding windows; subclasses implement :meth:`permute` for one window."""

    config: ListwiseConfig

    @classmethod
    def default_config(cls) -> ListwiseConfig:
        return ListwiseConfig()

    def order(self, query: str, docs: list[Document]) -> tuple[list[int], None]:
        permute = partial(self.permute, query)
        return order_by_windows(docs, self.config.window, self.config.stride, permute), None

    @abstractmethod
    def permute(self, query: str, window_docs: Sequence[Document]) -> list[int]:
        """Positions of ``window_docs`` (0-based), most relevant first: a permutation of the window."""

    # -- the RankGPT prompt, shared by the generating and the single-token variants -------------------

    def window_prompt_ids(
        self,
        query: str,
        window_docs: Sequence[Document],
        identifiers: Sequence[str],
        prefix: str,
        reserve: int,
    ) -> list[int]:
        """The chat prompt for one window, passages cut to fit the context with ``reserve`` tokens spare."""
        overhead = len(
            self.prompt_ids(
                ranking_prompt(query, [""] * len(window_docs), identifiers), LISTWISE_SYSTEM, prefix
            )
        )
        passages = self.fitted_passages(window_docs, overhead, reserve)
        return self.prompt_ids(ranking_prompt(query, passages, identifiers), LISTWISE_SYSTEM, prefix)
