"""The generator contract and the per-request decoding parameters."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields

from rag.errors import ConfigError
from rag.generation.answer_stream import AnswerStream
from rag.generation.decode.cad import ContextAwareDecoding
from rag.generation.drafting.retrieval import MATCH_SCALED_DRAFT_TOKENS
from rag.types import Answer, Document


@dataclass(frozen=True)
class ParallelContexts:
    """Passages encoded apart and cached, reused by every later question that retrieves them
    (:mod:`rag.generation.contexts.parallel_prefill`); the question reads them with APE's attention."""

    # APE attention temperature on the passages and scaling factor of their log-sum-exp; 1 and 1 = plain
    # attention over the concatenation; 0.8 and 0.8 scored best on XQuAD, Qwen2.5-0.5B
    # (docs/design/2026-11-27-generation-notebook.md)
    ape_temperature: float = 0.8
    ape_scale: float = 0.8

    def __post_init__(self) -> None:
        if not 0 < self.ape_temperature <= 1:
            raise ConfigError(f"ape_temperature must be in (0, 1], got {self.ape_temperature}")
        if not 0 < self.ape_scale <= 1:
            raise ConfigError(f"ape_scale must be in (0, 1], got {self.ape_scale}")


@dataclass(frozen=True)
class BlendedContexts:
    """Passages encoded apart and cached as with :class:`ParallelContexts`, then placed at the sequential
    prompt's positions with the share ``ratio`` of their tokens whose KV deviates most recomputed across
    passages (CacheBlend, :mod:`rag.generation.contexts.kv_blend`); the question reads them with plain
    attention. ``ratio = 1`` recomputes every passage token: the sequential prompt's cache."""

    ratio: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ConfigError(
                f"blending needs a ratio in (0, 1], got {self.ratio} (ParallelContexts for none)"
            )


@dataclass(frozen=True)
class Drafting:
    """Speculative decoding: each step verifies drafted continuations of the answer in one forward
    (:mod:`rag.generation.drafting`: n-grams of the prompt and answer, and the generator's draft model if it
    has one). Greedy answers are token for token plain decoding's; sampled ones keep their distribution."""

    # longest drafted continuation verified per step; the retrieval drafter drafts at most 2L - 1 tokens
    # after an L-token match (CausalLMConfig.draft_match_scaled), so a high cap costs little
    tokens: int = MATCH_SCALED_DRAFT_TOKENS

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ConfigError(f"drafting needs tokens >= 1, got {self.tokens} (drafting=None turns it off)")


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen, for answers and chat replies alike. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None
    min_new_tokens: int = 0  # end-of-sequence is blocked before this many new tokens (as in transformers)
    # (token id, bias) pairs added to the final logits of every step, OpenAI's ``logit_bias``: -100 bans a
    # token, +100 all but forces it; a bias shared by several tokens keeps their order (remote FIRST)
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(
                f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_new_tokens}"
            )
        if not 0 <= self.temperature < math.inf:  # also refuses nan
            raise ConfigError(f"temperature must be finite and >= 0, got {self.temperature}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise ConfigError(f"seed must be in [-2**63, 2**64), got {self.seed}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        for token, bias in self.logit_bias:
            if token < 0 or not -100 <= bias <= 100:
                raise ConfigError(f"logit_bias: ids >= 0 and biases in [-100, 100], got {token}: {bias}")


@dataclass(frozen=True)
class GenerationParams(SamplingParams):
    """How to decode one answer from passages: the sampling, and the techniques that read the passages."""

    cad: ContextAwareDecoding | None = None  # context-aware decoding (decode.cad); None = off
    drafting: Drafting | None = None  # speculative decoding with drafts; None = one forward per token
    # passages encoded apart and cached, read with APE's attention or blended; None: one sequential prompt
    parallel: ParallelContexts | BlendedContexts | None = None
    # answer from the k passages under which the question is most likely, each read apart first (superposition
    # prompting's path pruning, rag.generation.contexts.passage_pruning): the passages are then encoded apart
    # whether or not ``parallel`` is set; with k = 1 the answer is the sequential prompt's of the chosen
    # passage. 0, or at least as many as the passages: all passages. Default 1: on XQuAD it answers as well as
    # the gold paragraph alone and far better than all five passages in one prompt (docs/answers.md)
    keep_passages: int = 1
    # an answer may not end before it cites a passage (rag.generation.citation_constraint)
    require_citation: bool = False

    def prunes(self, passages: int) -> bool:
        """Whether an answer over ``passages`` passages keeps only some of them."""
        return 0 < self.keep_passages < passages

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep_passages < 0:
            raise ConfigError(f"keep_passages must be >= 0, got {self.keep_passages}")


@dataclass(frozen=True)
class TokenLogprobs:
    """Report each generated token's log-probability and the ``top`` most likely tokens at its place (OpenAI's
    ``logprobs``): one forward per token, whose scores are the ones reported."""

    top: int = 0

    def __post_init__(self) -> None:
        if self.top < 0:
            raise ConfigError(f"top logprobs must be >= 0, got {self.top}")


@dataclass(frozen=True)
class ChatParams(SamplingParams):
    """How to decode a chat reply: no passages, so nothing to cite, contrast or cache; each step either
    drafts (several tokens verified per forward) or reports the tokens' logprobs, never both."""

    steps: Drafting | TokenLogprobs | None = None  # None: one forward per token, nothing reported

    @classmethod
    def like(cls, params: SamplingParams, logprobs: TokenLogprobs | None = None) -> ChatParams:
        """The sampling of ``params`` (e.g. a generator's defaults) for a chat; it drafts when ``params``
        drafts, unless ``logprobs`` are asked (greedy replies are the same token for token)."""
        sampling = {f.name: getattr(params, f.name) for f in fields(SamplingParams)}
        drafting = params.drafting if isinstance(params, GenerationParams) else None
        return cls(**sampling, steps=logprobs or drafting)

    @property
    def drafting(self) -> Drafting | None:
        return self.steps if isinstance(self.steps, Drafting) else None

    @property
    def logprobs(self) -> TokenLogprobs | None:
        return self.steps if isinstance(self.steps, TokenLogprobs) else None


@dataclass
class DecodeStats:
    """Counters one decoding run fills in."""

    decode_steps: int = 0  # model forwards after the prefill (verification steps when drafting)
    drafted_tokens: int = 0  # tree nodes verified, the roots not counted
    accepted_tokens: int = 0  # drafted tokens accepted
    passages_encoded: int = 0  # parallel contexts: passage blocks computed (cold)
    passages_from_memory: int = 0  # loaded from the store's memory tier
    passages_from_disk: int = 0  # loaded from the store's directory
    blended_tokens: int = 0  # passage tokens recomputed across passages (BlendedContexts)
    passages_pruned: int = 0  # passages left out of the answer's cache (keep_passages > 0)


class Generator(ABC):
    @abstractmethod
    def default_params(self) -> GenerationParams:
        """How a request that passes no parameters is decoded (the generator's config)."""

    @abstractmethod
    def answer(
        self, question: str, passages: Sequence[Document], params: GenerationParams | None = None
    ) -> Answer:
        """Answer ``question`` from ``passages``, citing them by number."""

    @abstractmethod
    def stream(
        self, question: str, passages: Sequence[Document], params: GenerationParams | None = None
    ) -> AnswerStream:
        """The answer's text piece by piece as tokens are accepted; then, as ``answer``, the whole Answer."""

    @abstractmethod
    def chat(self, messages: Sequence[dict[str, str]], params: ChatParams | None = None) -> AnswerStream:
        """The model's reply to chat ``messages`` (``role`` and ``content``), with no passages and no
        citations; as ``stream``, piece by piece, then the whole Answer. A last ``assistant`` message is
        continued rather than answered. With ``params.steps`` a :class:`TokenLogprobs`, the Answer's
        ``logprobs`` give each token's log-probability and the most likely tokens at its place. Default
        params: ``ChatParams.like(self.default_params())``."""
