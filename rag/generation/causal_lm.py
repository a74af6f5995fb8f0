"""The baseline generator: a transformers causal LM driven by our own KV-cached decoding loop.

>>> from rag.types import Document
>>> config = CausalLMConfig(model="smollm2-135m-instruct", max_new_tokens=32)
>>> gen = CausalLMGenerator(config)  # doctest: +SKIP
>>> docs = [Document("d1", "Paris is the capital of France.", title="France")]
>>> answer = gen.answer("What is the capital of France?", docs)  # doctest: +SKIP
>>> answer.text, answer.citations  # doctest: +SKIP
('The capital of France is Paris [1].', ['d1'])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rag.errors import ConfigError, EmptyQueryError
from rag.generation.base import DecodeStats, GenerationParams, Generator
from rag.generation.cad import ContextAwareDecoding, context_free_messages
from rag.generation.drafting import RetrievalDrafter
from rag.generation.kv_batch import KVBatch
from rag.generation.prompt import SYSTEM_PROMPT, build_messages, parse_citations
from rag.generation.sampling import next_token
from rag.generation.speculative import DraftProposer, speculative_decode
from rag.registry import register
from rag.types import Answer, Document, Timings

# (input_ids [1, seq], scores [1, vocab]) -> scores [1, vocab], as transformers' LogitsProcessor.
LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_REPLACEMENT_CHAR = "\ufffd"  # what a partial UTF-8 sequence decodes to


@dataclass(frozen=True)
class CausalLMConfig:
    """Which model to load and the default decoding parameters of every request."""

    model: str = "qwen2.5-0.5b-instruct"  # a bundled model name, a local folder or a hub id
    device: str | None = None  # None: the loader's choice
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    cad_alpha: float = 0.0  # context-aware decoding; 0 = off
    draft_tokens: int = 0  # retrieval-augmented drafting: longest draft per step; 0 = off
    draft_max_ngram: int = 3  # the drafter matches the answer's last 3, 2, then 1 tokens
    draft_min_ngram: int = 1
    draft_branches: int = 3  # distinct drafts merged into the tree verified per step
    threads: int | None = None  # torch intra-op threads; None leaves torch's setting alone
    system_prompt: str = SYSTEM_PROMPT  # the instruction before the numbered passages

    def __post_init__(self) -> None:
        self.default_params()  # validates the decoding fields
        self.drafter()  # and the drafter's
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")

    def default_params(self) -> GenerationParams:
        return GenerationParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            cad_alpha=self.cad_alpha,
            draft_tokens=self.draft_tokens,
        )

    def drafter(self) -> RetrievalDrafter:
        return RetrievalDrafter(self.draft_max_ngram, self.draft_min_ngram, self.draft_branches)


@register("generator", "causal-lm", CausalLMConfig)
class CausalLMGenerator(Generator):
    """Answers with a chat-templated causal LM: one prefill forward, then one forward per new token.

    Pass ``model`` and ``tokenizer`` to share an already-loaded model; otherwise ``config.model`` is loaded.
    ``processors`` are applied in order to the next-token scores before a token is picked. ``drafter``
    proposes the drafts when ``params.draft_tokens > 0`` (default: ``config.drafter()``).
    """

    def __init__(
        self,
        config: CausalLMConfig | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        processors: Sequence[LogitsProcessor] = (),
        drafter: DraftProposer | None = None,
    ) -> None:
        self.config = config or CausalLMConfig()
        if (model is None) != (tokenizer is None):
            raise ConfigError("pass both model and tokenizer, or neither")
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        if model is None:
            from rag.models import load_causal_lm

            model, tokenizer = load_causal_lm(self.config.model, device=self.config.device)
        self.model = model
        self.tokenizer = tokenizer
        self.processors = tuple(processors)
        self.drafter = drafter or self.config.drafter()
        self.eos_token_ids = _eos_token_ids(model, tokenizer)

    # -- public API ---------------------------------------------------------------------------------

    def answer(
        self, question: str, passages: Sequence[Document], params: GenerationParams | None = None
    ) -> Answer:
        params = params or self.config.default_params()
        start = time.perf_counter()
        input_ids = self._encode_prompt(question, passages, params)
        context_free_ids = self._encode_context_free(question, params)
        ids: list[int] = []
        first_token_at = start
        stats = DecodeStats()
        for token in self._decode(input_ids, params, context_free_ids, stats):
            if not ids:
                first_token_at = time.perf_counter()
            ids.append(token)
        end = time.perf_counter()
        text = self._detokenize(ids).strip()
        timings = Timings(
            prefill_s=first_token_at - start,
            decode_s=end - first_token_at,
            new_tokens=len(ids),
            decode_steps=stats.decode_steps,
        )
        return Answer(
            text, citations=parse_citations(text, passages), passages=list(passages), timings=timings
        )

    def stream(
        self, question: str, passages: Sequence[Document], params: GenerationParams | None = None
    ) -> Iterator[str]:
        """Yield text pieces whose concatenation is the answer's text (leading whitespace dropped).

        Each step decodes all generated ids and yields the new suffix, so that tokens which only make
        sense together (multi-byte characters split across tokens) come out whole.
        """
        params = params or self.config.default_params()
        input_ids = self._encode_prompt(question, passages, params)  # raises before the first next()
        return self._stream_text(input_ids, params, self._encode_context_free(question, params))

    # -- internals ----------------------------------------------------------------------------------

    def _stream_text(
        self, input_ids: torch.Tensor, params: GenerationParams, context_free_ids: torch.Tensor | None = None
    ) -> Iterator[str]:
        ids: list[int] = []
        emitted = 0  # characters of the (left-stripped) text already yielded
        text = ""
        for token in self._decode(input_ids, params, context_free_ids):
            ids.append(token)
            text = self._detokenize(ids).lstrip()
            if text.endswith(_REPLACEMENT_CHAR):
                continue  # the next token may complete the character
            if len(text) > emitted:
                yield text[emitted:]
                emitted = len(text)
        if len(text) > emitted:
            yield text[emitted:]

    def _encode_prompt(
        self, question: str, passages: Sequence[Document], params: GenerationParams
    ) -> torch.Tensor:
        """Chat-templated prompt ids ``# [1, prompt_len]`` on the model's device."""
        if not question or not question.strip():
            raise EmptyQueryError("the question is empty")
        input_ids = self._apply_template(build_messages(question, passages, self.config.system_prompt))
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and input_ids.shape[1] > limit - params.max_new_tokens:
            raise ConfigError(
                f"the prompt has {input_ids.shape[1]} tokens, more than the model's context of {limit} "
                f"minus max_new_tokens={params.max_new_tokens}; pass fewer or shorter passages"
            )
        return input_ids

    def _encode_context_free(self, question: str, params: GenerationParams) -> torch.Tensor | None:
        """The prompt without passages ``# [1, len]`` when CAD is on, else None."""
        if params.cad_alpha == 0:
            return None
        return self._apply_template(context_free_messages(question, self.config.system_prompt))

    def _apply_template(self, messages: list[dict[str, str]]) -> torch.Tensor:
        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        return encoded["input_ids"].to(self.model.device)  # [1, len]

    @torch.inference_mode()
    def _decode(
        self,
        input_ids: torch.Tensor,  # [1, prompt_len]
        params: GenerationParams,
        context_free_ids: torch.Tensor | None = None,  # [1, len], the prompt without passages (CAD)
        stats: DecodeStats | None = None,
    ) -> Iterator[int]:
        """Yield new token ids for the prompt ``input_ids``, the final eos included.

        One forward for the prompt(s), then one per token. Given ``context_free_ids`` (``answer`` and
        ``stream`` pass them when ``params.cad_alpha > 0``), that prompt is a second row of the same batch and
        the two rows' logits are combined by context-aware decoding before the logits processors. With
        ``params.draft_tokens > 0`` the speculative loop takes over (:mod:`rag.generation.speculative`).
        """
        stats = stats if stats is not None else DecodeStats()
        rng = None
        if params.seed is not None and params.temperature > 0:
            rng = torch.Generator(device=self.model.device).manual_seed(params.seed)
        if params.cad_alpha > 0 and context_free_ids is None:
            raise ConfigError("context-aware decoding needs the prompt without passages")
        prompts = [input_ids[0]]
        cad = None
        if context_free_ids is not None:
            cad = ContextAwareDecoding(params.cad_alpha)
            prompts.append(context_free_ids[0])
        batch = KVBatch(self.model, prompts)

        def score(generated: list[int], logits: torch.Tensor) -> torch.Tensor:  # [rows, vocab] -> [vocab]
            combined = logits[0] if cad is None else cad(logits[0], logits[1])
            return self._process_logits(input_ids, generated, combined)

        if params.draft_tokens > 0:
            prompt = input_ids[0].tolist()
            eos = self.eos_token_ids
            yield from speculative_decode(batch, score, self.drafter, prompt, params, eos, rng, stats)
            return
        generated: list[int] = []
        logits = batch.prefill()  # [rows, vocab]: the whole prompt in one forward
        while True:
            token = next_token(score(generated, logits), params, rng)
            generated.append(token)
            yield token
            if token in self.eos_token_ids or len(generated) >= params.max_new_tokens:
                return
            logits = batch.extend([token])[:, -1]  # [rows, vocab]
            stats.decode_steps += 1

    def _process_logits(
        self,
        prompt_ids: torch.Tensor,  # [1, prompt_len]
        generated: list[int],
        logits: torch.Tensor,  # [vocab]
    ) -> torch.Tensor:
        """Apply the logits processors to the next-token logits; returns ``# [vocab]``."""
        if not self.processors:
            return logits
        new = torch.tensor([generated], dtype=prompt_ids.dtype, device=prompt_ids.device)  # [1, n_generated]
        ids = torch.cat([prompt_ids, new], dim=1)  # [1, seq]
        scores = logits[None]  # [1, vocab]
        for processor in self.processors:
            scores = processor(ids, scores)
        return scores[0]

    def _detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Ids that end an answer: the tokenizer's eos and the model's generation-config eos (e.g. <|im_end|>)."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(value)
    if not ids:
        raise ConfigError("the model and tokenizer define no end-of-sequence token")
    return frozenset(ids)
