"""The few value types every stage shares: documents, hits and answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Document:
    """One retrievable unit: a passage, an abstract or a chunk of a file."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def contents(self) -> str:
        """Title and text as one string, the form encoders and BM25 read."""
        return f"{self.title} {self.text}" if self.title else self.text


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result; every retriever and reranker returns these."""

    doc_id: str
    score: float
    rank: int  # 1-based
    source: str  # name of the retriever or reranker that produced the score


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds spent per stage of one answer; decode speed in tokens per second."""

    retrieve_s: float = 0.0
    rerank_s: float = 0.0
    prefill_s: float = 0.0  # time to first token, from the start of generation
    decode_s: float = 0.0  # time of the tokens after the first
    new_tokens: int = 0  # the first token included
    decode_steps: int = 0  # model forwards after the prefill (verification steps when drafting)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second after the first (the first one's time is ``prefill_s``)."""
        return (self.new_tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens after the first per decoding forward: 1.0 if plain, the acceptance length if drafting."""
        return (self.new_tokens - 1) / self.decode_steps if self.decode_steps > 0 else 0.0

    @property
    def total_s(self) -> float:
        return self.retrieve_s + self.rerank_s + self.prefill_s + self.decode_s


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token's text and log-probability, and the most likely tokens at its place."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)  # (token, logprob), most likely first


@dataclass(frozen=True, slots=True)
class Answer:
    """A generated answer with the ids of the passages it cites."""

    text: str
    citations: list[str]
    passages: list[Document]
    timings: Timings = field(default_factory=Timings)
    logprobs: list[TokenLogprob] | None = None  # per generated token, when a chat asked for them
