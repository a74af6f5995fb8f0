"""In-context reranking (ICR): score passages by how much the query's tokens attend to each of them.

All candidates go into one prompt, followed by the query (Chen et al., 2025, "Attention in Large Language
Models Yields Efficient Zero-Shot Re-Rankers"). A passage's score is the attention mass from the query tokens
to its token span, averaged over query tokens and summed over the chosen layers and heads, minus the same
mass under a content-free query ("N/A"), which removes the model's bias toward positions and passages::

    score(d) = sum_{layer, head} mean_{q in query} sum_{t in span(d)} A[q, t]   -   (same with "N/A")

Two forward passes per prompt whatever the number of candidates: the passages alone (SDPA attention, which
returns no weights but prefills fastest), then the calibration and the real query as two batch rows on top of
the passages' KV cache with eager attention, whose weights forward hooks on the attention modules read (just
the query rows). The model's own attention setting is restored after each pass, so ICR can share a model
loaded with any of them. Lists larger than
``docs_per_prompt`` are split into prompts scored independently (two passes each).

>>> reranker = InContextReranker(ICRConfig(model="qwen2.5-coder-0.5b-instruct"))  # doctest: +SKIP
>>> reranker.score("what do cats say?", docs)  # doctest: +SKIP
[0.41, -0.02, 0.13]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from rag.errors import ConfigError
from rag.lm.attention import attention_implementation
from rag.registry import register
from rag.rerankers.lm import LMReranker, LMRerankerConfig
from rag.types import Document

INTRO = "Here are some paragraphs:"
OUTRO = "Please find information that is relevant to the following query in the paragraphs above.\n\nQuery:"
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class ICRConfig(LMRerankerConfig):
    docs_per_prompt: int = 20  # longer candidate lists are scored in chunks of this many
    layers: tuple[int, ...] | None = None  # layer indices to read (negative from the end); None: all
    heads: tuple[int, ...] | None = None  # attention heads to read; None: all
    calibration_query: str = "N/A"  # the content-free query whose attention is subtracted

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.docs_per_prompt < 1:
            raise ConfigError(f"docs_per_prompt must be at least 1, got {self.docs_per_prompt}")
        for field in ("layers", "heads"):  # JSON gives lists
            value = getattr(self, field)
            if value is not None:
                if not value:
                    raise ConfigError(f"{field} must name at least one index, or be null for all")
                object.__setattr__(self, field, tuple(int(v) for v in value))
        if not self.calibration_query.strip():
            raise ConfigError("calibration_query must not be empty")


@dataclass(frozen=True)
class ICRPrompt:
    """Token ids of one ICR prompt and where each passage sits in them."""

    prefix: list[int]  # instruction and passages, up to "Query:"; shared by both passes
    spans: list[tuple[int, int]]  # [start, end) of each passage in ``prefix``
    query: list[int]  # the query and the end of the chat turn
    calibration: list[int]  # the content-free query and the end of the chat turn


@register("reranker", "icr", ICRConfig)
class InContextReranker(LMReranker):
    name = "icr"
    config: ICRConfig

    @classmethod
    def default_config(cls) -> ICRConfig:
        return ICRConfig()

    def order(self, query: str, docs: list[Document]) -> tuple[list[int], list[float]]:
        scores = self.score(query, docs)
        return sorted(range(len(docs)), key=lambda i: (-scores[i], i)), scores

    def score(self, query: str, docs: list[Document]) -> list[float]:
        """Calibrated attention score of each document, in input order; two passes per chunk."""
        size = self.config.docs_per_prompt
        scores: list[float] = []
        for start in range(0, len(docs), size):
            prompt = self.build_prompt(query, docs[start : start + size])
            mass = self.query_attention(prompt)  # [len(prefix)]
            scores += [float(mass[a:b].sum()) for a, b in prompt.spans]
        return scores

    def build_prompt(self, query: str, docs: Sequence[Document]) -> ICRPrompt:
        """Pieces tokenized separately and concatenated, so that every passage span is exact."""
        head, tail = self.chat_parts()
        intro = self.encode(head + INTRO)
        separator = self.encode(SEPARATOR)
        outro = separator + self.encode(OUTRO)
        query_ids = self.encode(f" {query}{tail}")
        calibration_ids = self.encode(f" {self.config.calibration_query}{tail}")
        overhead = len(intro) + len(outro) + max(len(query_ids), len(calibration_ids))
        overhead += len(docs) * (len(separator) + 4)  # separators and "[n] " labels
        passages = self.fitted_passages(docs, overhead)
        prefix, spans = list(intro), []
        for number, passage in enumerate(passages, start=1):
            prefix += separator
            piece = self.encode(f"[{number}] {passage}")
            spans.append((len(prefix), len(prefix) + len(piece)))
            prefix += piece
        prefix += outro
        return ICRPrompt(prefix, spans, query_ids, calibration_ids)

    @torch.inference_mode()
    def query_attention(self, prompt: ICRPrompt) -> torch.Tensor:
        """Query-minus-calibration attention mass on each prefix position ``# [len(prefix)]``.

        Pass 1 encodes the prefix alone with SDPA (no attention weights are needed there, and SDPA prefills
        ~1.8x faster than eager on a CPU). Pass 2 runs the calibration and the real query as a batch of two
        rows on the prefix's cache with eager attention, so only their rows of attention weights are made.
        """
        device = self.model.device
        cache = DynamicCache(config=self.model.config)
        n = len(prompt.prefix)
        with attention_implementation(self.model, "sdpa"):
            self.forward_passes += 1
            self.model(
                input_ids=torch.tensor([prompt.prefix], device=device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        cache.batch_repeat_interleave(2)
        rows = [prompt.calibration, prompt.query]
        width = max(map(len, rows))
        pad = rows[1][-1]  # right padding: causal attention keeps it out of the real rows
        batch = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)  # [2, width]
        with (
            attention_implementation(self.model, "eager"),
            self._attention_rows([len(r) for r in rows], n) as mass,
        ):
            self.forward_passes += 1
            self.model(input_ids=batch, cache=cache, use_cache=True, logits_to_keep=1)
        return mass[0][1] - mass[0][0]

    @contextmanager
    def _attention_rows(self, rows: list[int], keys: int) -> Iterator[list[torch.Tensor]]:
        """Collect, over the chosen layers and heads, the mean attention of the first ``rows[b]`` new tokens
        of batch row ``b`` on the first ``keys`` positions; the yielded list holds one ``# [batch, keys]``
        tensor once the block ends."""
        heads = list(self.config.heads) if self.config.heads is not None else slice(None)
        total: list[torch.Tensor] = []

        def hook(module: torch.nn.Module, args: object, output: object) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise ConfigError(
                    "ICR reads attention weights, which this model's eager attention does not return"
                )
            weights = weights[:, heads, :, :keys].float()  # [batch, H, new, keys]
            mass = torch.stack(
                [weights[b, :, :r].mean(1).sum(0) for b, r in enumerate(rows)]
            )  # [batch, keys]
            if total:
                total[0] += mass
            else:
                total.append(mass)

        handles = [module.register_forward_hook(hook) for module in self._attention_modules()]
        try:
            yield total
        finally:
            for handle in handles:
                handle.remove()

    def _attention_modules(self) -> list[torch.nn.Module]:
        layers = self.model.get_decoder().layers
        chosen = self.config.layers if self.config.layers is not None else range(len(layers))
        try:
            return [layers[i].self_attn for i in chosen]
        except IndexError:
            raise ConfigError(
                f"layers {self.config.layers} out of range: the model has {len(layers)}"
            ) from None
