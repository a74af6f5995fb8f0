"""What every local LLM reranker shares: the model, passage truncation, chat prompts, next-token logits.

A variant subclasses :class:`LMReranker` and implements ``order(query, docs)``
(:class:`~rag.rerankers.base.DocumentReranker`: the documents behind the hits, new hits)::

    >>> from rag.types import Document, Hit
    >>> docs = MemoryDocs([Document("a", "Cats purr."), Document("b", "Stocks fell.")])
    >>> reranker = build("reranker", "pointwise", {"model": "smollm2-135m-instruct"})  # doctest: +SKIP
    >>> reranker.docstore = docs                                                        # doctest: +SKIP
    >>> hits = [Hit("b", 0.9, 1, "dense"), Hit("a", 0.8, 2, "dense")]
    >>> [h.doc_id for h in reranker.rerank("kitten sounds", hits)]                    # doctest: +SKIP
    ['a', 'b']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rag.errors import ConfigError
from rag.rerankers.base import DocumentReranker, DocumentSource
from rag.types import Document

CONTENT_SENTINEL = "\x00CONTENT\x00"  # stands for the user message when splitting a chat template


class MemoryDocs:
    """Documents held in memory, looked up by id like a :class:`~rag.docstore.Docstore`."""

    def __init__(self, docs: Iterable[Document]) -> None:
        self._docs = {d.id: d for d in docs}

    def get(self, ids: Sequence[str]) -> list[Document]:
        missing = [i for i in ids if i not in self._docs]
        if missing:
            raise KeyError(f"{len(missing)} document id(s) not found: {missing[:5]}")
        return [self._docs[i] for i in ids]


@dataclass(frozen=True)
class LMRerankerConfig:
    """Options shared by the LLM rerankers."""

    model: str = "qwen2.5-coder-0.5b-instruct"  # a bundled model name, a local folder or a hub id
    device: str | None = None  # None: the loader's choice
    passage_tokens: int = 128  # each passage is cut to this many tokens
    max_prompt_tokens: int = 4096  # a prompt never exceeds this (nor the model's context)
    threads: int | None = None  # torch intra-op threads; None leaves torch's setting alone

    def __post_init__(self) -> None:
        if self.passage_tokens < 8:
            raise ConfigError(f"passage_tokens must be at least 8, got {self.passage_tokens}")
        if self.max_prompt_tokens < 256:
            raise ConfigError(f"max_prompt_tokens must be at least 256, got {self.max_prompt_tokens}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")


class LMReranker(DocumentReranker):
    """Base of the LLM rerankers: subclasses implement :meth:`order`.

    Pass ``model`` and ``tokenizer`` to share an already-loaded causal LM; ``docstore`` supplies the text of
    the hits (the pipeline sets it when it is None). ``forward_passes`` counts model calls since creation.
    """

    name = "lm"  # the registered name, written as the ``source`` of the returned hits

    def __init__(
        self,
        config: LMRerankerConfig | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        docstore: DocumentSource | None = None,
    ) -> None:
        self.config = config or self.default_config()
        if (model is None) != (tokenizer is None):
            raise ConfigError("pass both model and tokenizer, or neither")
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        if model is None:
            from rag.lm import load_causal_lm

            # SDPA prefills ~1.8x faster than eager on a CPU; ICR switches to eager for its query rows.
            model, tokenizer = load_causal_lm(
                self.config.model, device=self.config.device, attn_implementation="sdpa"
            )
        super().__init__(docstore)
        self.model = model
        self.tokenizer = tokenizer
        self.forward_passes = 0

    @classmethod
    def default_config(cls) -> LMRerankerConfig:
        return LMRerankerConfig()

    # -- helpers for variants -----------------------------------------------------------------------

    @property
    def context_limit(self) -> int:
        """The most tokens one prompt may hold: the config's limit, within the model's context."""
        model_limit = (
            getattr(self.model.config, "max_position_embeddings", None) or self.config.max_prompt_tokens
        )
        return min(self.config.max_prompt_tokens, model_limit)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def passage_text(self, doc: Document, tokens: int | None = None) -> str:
        """Title and text on one line, cut to ``tokens`` tokens (default: ``config.passage_tokens``)."""
        text = " ".join(doc.contents.split())
        ids = self.encode(text)
        limit = tokens or self.config.passage_tokens
        return text if len(ids) <= limit else self.tokenizer.decode(ids[:limit]).strip()

    def chat_parts(self, system: str | None = None) -> tuple[str, str]:
        """The chat template's text before and after one user message, generation prompt included."""
        messages = [{"role": "user", "content": CONTENT_SENTINEL}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        if getattr(self.tokenizer, "chat_template", None):
            rendered = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            head, sentinel, tail = rendered.partition(CONTENT_SENTINEL)
            if sentinel:
                return head, tail
        return (f"{system}\n\n" if system else ""), "\n"  # a base model: plain text

    def prompt_ids(self, user: str, system: str | None = None, response_prefix: str = "") -> list[int]:
        """Ids of a chat prompt with one user message, ready for the reply (``response_prefix`` added)."""
        head, tail = self.chat_parts(system)
        return self.encode(head + user + tail + response_prefix)

    def fitted_passages(self, docs: Sequence[Document], overhead: int, reserve: int = 0) -> list[str]:
        """Passage texts cut so that ``overhead`` + passages + ``reserve`` tokens fit the context."""
        room = self.context_limit - overhead - reserve
        per_passage = min(self.config.passage_tokens, room // max(len(docs), 1) - 4)  # 4: "[n] " and newlines
        if per_passage < 8:
            raise ConfigError(
                f"{len(docs)} passages do not fit a {self.context_limit}-token prompt; "
                "lower the window size or raise max_prompt_tokens"
            )
        return [self.passage_text(d, per_passage) for d in docs]

    @torch.inference_mode()
    def next_token_logits(self, ids: list[int]) -> torch.Tensor:
        """One forward pass over ``ids``; the next-token logits ``# [vocab]``."""
        input_ids = torch.tensor([ids], device=self.model.device)  # [1, seq]
        self.forward_passes += 1
        out = self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
        return out.logits[0, -1].float()  # [1, 1, vocab] -> [vocab]

    @torch.inference_mode()
    def batch_next_token_logits(self, prompts: Sequence[list[int]]) -> torch.Tensor:
        """One forward pass over prompts of mixed lengths, left-padded: next-token logits ``# [B, vocab]``.

        On the quantized CPU runtime a pass of more than 64 tokens expands every weight to bf16 first, so a
        batch pays that once instead of once per prompt (the 1.5B's pointwise reranking: 37 s a query of 20
        passages one by one).
        """
        longest = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (longest - len(p)) + list(p) for p in prompts])  # [B, seq]
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])  # [B, seq]
        positions = (mask.cumsum(-1) - 1).clamp_min(0)  # each prompt starts at position 0
        self.forward_passes += 1
        out = self.model(
            input_ids=ids.to(self.model.device),
            attention_mask=mask.to(self.model.device),
            position_ids=positions.to(self.model.device),
            use_cache=False,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float()  # [B, 1, vocab] -> [B, vocab]


def single_token(reranker: LMReranker, text: str) -> int:
    """The id of ``text`` if the tokenizer encodes it as one token; ConfigError otherwise."""
    ids = reranker.encode(text)
    if len(ids) != 1:
        pieces = reranker.tokenizer.convert_ids_to_tokens(ids)
        raise ConfigError(f"{text!r} is {len(ids)} tokens {pieces} for this tokenizer, not one")
    return ids[0]
