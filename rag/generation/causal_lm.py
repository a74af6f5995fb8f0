"""The baseline generator: a transformers causal LM driven by our own KV-cached decoding loop.

>>> from rag.types import Document
>>> config = CausalLMConfig(model="smollm2-135m-instruct", defaults=GenerationParams(max_new_tokens=32))
>>> gen = CausalLMGenerator(config)  # doctest: +SKIP
>>> docs = [Document("d1", "Paris is the capital of France.", title="France")]
>>> answer = gen.answer("What is the capital of France?", docs)  # doctest: +SKIP
>>> answer.text, answer.citations  # doctest: +SKIP
('The capital of France is Paris [1].', ['d1'])
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rag.errors import ConfigError, EmptyQueryError
from rag.generation.answer_stream import AnswerPieces, AnswerStream
from rag.generation.attribution import attribute
from rag.generation.base import (
    BlendedContexts,
    ChatParams,
    DecodeStats,
    Drafting,
    GenerationParams,
    Generator,
    ParallelContexts,
    SamplingParams,
)
from rag.generation.citation_constraint import CitationConstraint
from rag.generation.contexts.parallel_prefill import ParallelPrefill, model_identity
from rag.generation.contexts.parallel_prompt import ParallelPrompt, split_prompt
from rag.generation.contexts.passage_kv_store import PassageKVStore
from rag.generation.decode.cad import ContextAwareDecoding, context_free_messages
from rag.generation.decode.kv_batch import KVBatch
from rag.generation.decode.sampling import logit_bias, next_token
from rag.generation.decode.speculative import DraftProposer, speculative_decode
from rag.generation.drafting.draft_model import DraftModelProposer
from rag.generation.drafting.fused import FusedDrafter
from rag.generation.drafting.retrieval import RetrievalDrafter
from rag.generation.prompt import ANSWER_REMINDER, SYSTEM_PROMPT, build_messages
from rag.lm import token_decoder
from rag.lm.policy import Decoder, Precision
from rag.models import DEFAULT_GENERATOR
from rag.registry import register
from rag.types import Answer, Document, Timings, TokenLogprob

# (input_ids [1, seq], scores [1, vocab]) -> scores [1, vocab], as transformers' LogitsProcessor.
LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (scores [vocab], token): what the plain loop chose from (logprobs for a chat)
Observer = Callable[[torch.Tensor, int], None]
# the prompt cut into passages read apart, and the prefill that reads them from the passage KV store
ParallelRead = tuple[ParallelPrompt, ParallelPrefill]

_REPLACEMENT_CHAR = "\ufffd"  # what a partial UTF-8 sequence decodes to


@dataclass(frozen=True)
class Contrast:
    """Context-aware decoding's second row: the prompt without passages ``# [1, len]``, and how the two
    rows' logits combine."""

    cad: ContextAwareDecoding
    context_free_ids: torch.Tensor


@dataclass(frozen=True)
class CausalLMConfig:
    """Which model to load, how it drafts and caches passages, and ``defaults``: how a request that passes
    no parameters is decoded."""

    model: str = DEFAULT_GENERATOR  # a bundled model name, a local folder or a hub id
    device: str | None = None  # None: the loader's choice
    # int4/int8 weights from the GGUF file ("mixed", the CPU default, or "int4") or dequantized ("bf16", the
    # CUDA default; "exact": float32); see rag.lm.policy
    precision: Precision | None = None
    # the engine of the answer's tokens: "torch", or "llama.cpp" (the prompt runs in torch); rag.lm.policy
    decoder: Decoder = "torch"
    defaults: GenerationParams = field(default_factory=GenerationParams)
    draft_max_ngram: int = 3  # the drafter matches the answer's last 3, 2, then 1 tokens
    draft_min_ngram: int = 1
    draft_branches: int = 1  # distinct drafts merged into the tree verified per step
    draft_match_scaled: bool = True  # a draft after an L-token match is at most 2L - 1 tokens (drafting.py)
    # a small LLM with the target's tokenizer drafting with retrieval (RASD, rag.generation.drafting.fused):
    # a bundled name or a folder, loaded on the first drafted request; None = retrieval drafts only
    draft_model: str | None = None
    # the draft model's share of each step's draft: one draft-model forward per token; None = drafting.tokens
    draft_model_tokens: int | None = None
    draft_model_below: int | None = 3  # the draft model drafts only after retrieval matches shorter than this
    passage_cache_mb: int = 512  # in-memory LRU of passage KV blocks; 0 = no memory tier
    passage_cache_dir: str | None = None  # on-disk passage KV blocks; None = memory only
    passage_cache_disk_mb: int = 4096  # size limit of passage_cache_dir
    passage_cache_int8: bool = False  # keep passage KV blocks as int8: 4x smaller, answers change slightly
    threads: int | None = None  # torch intra-op threads; None leaves torch's setting alone
    system_prompt: str = SYSTEM_PROMPT  # the instruction before the numbered passages
    reminder: str = ANSWER_REMINDER  # how to answer, after the question ("" for none)

    def __post_init__(self) -> None:
        if self.draft_model_tokens is not None and self.draft_model_tokens < 1:
            raise ConfigError(f"draft_model_tokens must be at least 1 or None, got {self.draft_model_tokens}")
        RetrievalDrafter(  # refuses bad n-gram options; a drafter is built by build_drafter, per generator
            self.draft_max_ngram, self.draft_min_ngram, self.draft_branches, self.draft_match_scaled
        )
        if self.draft_model is not None and not self.draft_model.strip():
            raise ConfigError("draft_model is empty; pass a model name or folder, or None")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if self.passage_cache_mb < 0 or self.passage_cache_disk_mb < 0:
            raise ConfigError("passage_cache_mb and passage_cache_disk_mb must be >= 0")


def build_passage_store(config: CausalLMConfig) -> PassageKVStore:
    """The passage KV store ``config`` sizes: an LRU in memory, and on disk with ``passage_cache_dir``."""
    return PassageKVStore(
        config.passage_cache_mb << 20, config.passage_cache_dir, config.passage_cache_disk_mb << 20
    )


def build_drafter(
    config: CausalLMConfig, target_tokenizer: Any = None, draft_lm: Any = None
) -> RetrievalDrafter | FusedDrafter:
    """The retrieval drafter ``config`` describes, fused with its ``draft_model`` when one is set.

    The draft model is not loaded here but on its first proposal; given ``target_tokenizer``, its
    vocabulary is then checked against the target's (ConfigError on a mismatch). ``draft_lm`` is
    ``draft_model`` already loaded (e.g. shared with other generators): used as is, nothing is loaded."""
    retrieval = RetrievalDrafter(
        config.draft_max_ngram, config.draft_min_ngram, config.draft_branches, config.draft_match_scaled
    )
    if config.draft_model is None:
        return retrieval
    name, device, precision = config.draft_model, config.device, config.precision

    def load() -> tuple[Any, Any]:
        from rag.lm import load_causal_lm

        return load_causal_lm(name, device=device, precision=precision)

    proposer = DraftModelProposer(
        draft_lm,
        loader=None if draft_lm is not None else load,
        target_tokenizer=target_tokenizer,
        max_tokens_cap=config.draft_model_tokens,
        name=f"draft model {name!r}",
    )
    return FusedDrafter(retrieval, proposer, model_below=config.draft_model_below)


@register("generator", "causal-lm", CausalLMConfig)
class CausalLMGenerator(Generator):
    """Answers with a chat-templated causal LM: one prefill forward, then one forward per new token.

    Pass ``model`` and ``tokenizer`` to share an already-loaded model; otherwise ``config.model`` is loaded.
    ``processors`` are applied in order to the next-token scores before a token is picked. ``drafter``
    proposes the drafts when ``params.drafting`` is set (default: ``build_drafter(config)``).
    ``passage_store`` keeps the passage KV blocks of parallel-context requests (default:
    ``build_passage_store(config)``); the first such request switches the model to the APE attention wrapper
    (:mod:`rag.lm.ape_attention`), which computes exactly as before for every other forward.
    """

    def __init__(
        self,
        config: CausalLMConfig | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        processors: Sequence[LogitsProcessor] = (),
        drafter: DraftProposer | None = None,
        passage_store: PassageKVStore | None = None,
    ) -> None:
        self.config = config or CausalLMConfig()
        if (model is None) != (tokenizer is None):
            raise ConfigError("pass both model and tokenizer, or neither")
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        if model is None:
            from rag.lm import load_causal_lm

            model, tokenizer = load_causal_lm(
                self.config.model,
                device=self.config.device,
                precision=self.config.precision,
                decoder=self.config.decoder,
            )
        self.model = model
        self.tokenizer = tokenizer
        self.processors = tuple(processors)
        self.drafter = drafter or build_drafter(self.config, tokenizer)
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        self.passage_store = passage_store or build_passage_store(self.config)
        self._model_id: str | None = None  # model_identity(), computed on the first parallel request

    # -- public API ---------------------------------------------------------------------------------

    def default_params(self) -> GenerationParams:
        return self.config.defaults

    def answer(
        self, question: str, passages: Sequence[Document], params: GenerationParams | None = None
    ) -> Answer:
        params = params or self.default_params()
        start = time.perf_counter()
        input_ids = self._encode_prompt(question, passages, params)
        parallel = self._split_prompt(question, passages, params)
        context_free_ids = self._encode_context_free(question, params)
        citations = self._citation_constraint(passages, params)
        ids: list[int] = []
        first_token_at = start
        stats = DecodeStats()
        for token in self._answer_tokens(input_ids, params, context_free_ids, stats, parallel, citations):
            if not ids:
                first_token_at = time.perf_counter()
            ids.append(token)
        return self._finish(question, passages, ids, start, first_token_at, stats)

    def stream(
        self, question: str, passages: Sequence[Document], params: GenerationParams | None = None
    ) -> AnswerStream:
        """Text pieces whose concatenation is the answer's text (leading whitespace dropped), then the
        stream's ``answer``: the same Answer as ``answer`` gives.

        Each step decodes all generated ids and yields the new suffix, so that tokens which only make
        sense together (multi-byte characters split across tokens) come out whole.
        """
        params = params or self.default_params()
        start = time.perf_counter()
        input_ids = self._encode_prompt(question, passages, params)  # raises before the first next()
        parallel = self._split_prompt(question, passages, params)
        context_free_ids = self._encode_context_free(question, params)
        citations = self._citation_constraint(passages, params)
        stats = DecodeStats()
        decoded = self._answer_tokens(input_ids, params, context_free_ids, stats, parallel, citations)
        return AnswerStream(self._stream_text(question, passages, start, decoded, stats))

    def chat(self, messages: Sequence[dict[str, str]], params: ChatParams | None = None) -> AnswerStream:
        """The model's reply to ``messages`` under its chat template: plain decoding, drafting from the
        messages' own text (``params.steps`` a :class:`Drafting`), or plain decoding reporting each token's
        logprobs (a :class:`TokenLogprobs`). A last ``assistant`` message is continued (its text follows the
        template's reply header)."""
        params = params or ChatParams.like(self.default_params())
        if not any(str(m.get("content", "")).strip() for m in messages):
            raise EmptyQueryError("the messages hold no text")
        start = time.perf_counter()
        messages = list(messages)
        reply_start = messages.pop()["content"] if messages[-1].get("role") == "assistant" else ""
        input_ids = self._apply_template(messages, reply_start)
        self._check_context(input_ids, params)
        logit_bias(params, self.model.config.vocab_size)  # refuses unknown token ids before streaming
        entries: list[TokenLogprob] = []
        observe: Observer | None = None
        if params.logprobs is not None:
            top = params.logprobs.top

            def observe(scores: torch.Tensor, token: int) -> None:  # scores [vocab], as the token was chosen
                logprobs = torch.log_softmax(scores.float(), dim=-1)
                best = torch.topk(logprobs, top)
                alternatives = [(self._detokenize([int(i)]), float(v)) for v, i in zip(*best, strict=True)]
                entries.append(TokenLogprob(self._detokenize([token]), float(logprobs[token]), alternatives))

        stats = DecodeStats()
        decoded = self._decode(input_ids, params, params.drafting, stats, observe=observe)
        stream = AnswerStream(self._stream_text("", [], start, decoded, stats))
        if params.logprobs is None:
            return stream
        return stream.then(lambda answer: dataclasses.replace(answer, logprobs=entries))

    # -- internals ----------------------------------------------------------------------------------

    def _finish(
        self,
        question: str,
        passages: Sequence[Document],
        ids: list[int],
        start: float,
        first_token_at: float,
        stats: DecodeStats,
    ) -> Answer:
        """The Answer of the generated ``ids``, with its citations and timings (``answer`` and ``stream``)."""
        end = time.perf_counter()
        text = self._detokenize(ids).strip()
        timings = Timings(
            prefill_s=first_token_at - start,
            decode_s=end - first_token_at,
            new_tokens=len(ids),
            decode_steps=stats.decode_steps,
        )
        cited = attribute(text, passages, question).citations  # by span overlap, not by the [n] markers
        return Answer(text, citations=cited, passages=list(passages), timings=timings)

    def _stream_text(
        self,
        question: str,
        passages: Sequence[Document],
        start: float,  # time.perf_counter() when the request began
        decoded: Iterator[int],
        stats: DecodeStats,  # filled in by the decoding run of ``decoded``
    ) -> AnswerPieces:
        """The text of the ``decoded`` tokens piece by piece, then their Answer."""
        ids: list[int] = []
        emitted = 0  # characters of the (left-stripped) text already yielded
        text = ""
        first_token_at = start
        for token in decoded:
            if not ids:
                first_token_at = time.perf_counter()
            ids.append(token)
            text = self._detokenize(ids).lstrip()
            if text.endswith(_REPLACEMENT_CHAR):
                continue  # the next token may complete the character
            if len(text) > emitted:
                yield text[emitted:]
                emitted = len(text)
        if len(text) > emitted:
            yield text[emitted:]
        return self._finish(question, passages, ids, start, first_token_at, stats)

    def _encode_prompt(
        self, question: str, passages: Sequence[Document], params: GenerationParams
    ) -> torch.Tensor:
        """Chat-templated prompt ids ``# [1, prompt_len]`` on the model's device."""
        if not question or not question.strip():
            raise EmptyQueryError("the question is empty")
        messages = build_messages(question, passages, self.config.system_prompt, self.config.reminder)
        input_ids = self._apply_template(messages)
        self._check_context(input_ids, params)
        return input_ids

    def _check_context(self, input_ids: torch.Tensor, params: GenerationParams) -> None:
        """ConfigError when the prompt ``# [1, len]`` and the answer would not fit the model's context."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and input_ids.shape[1] > limit - params.max_new_tokens:
            raise ConfigError(
                f"the prompt has {input_ids.shape[1]} tokens, more than the model's context of {limit} "
                f"minus max_new_tokens={params.max_new_tokens}; pass fewer or shorter passages"
            )

    def _split_prompt(
        self, question: str, passages: Sequence[Document], params: GenerationParams
    ) -> ParallelPrompt | None:
        """The prompt cut for parallel prefill if ``params.parallel`` is set, or if ``params.keep_passages``
        prunes the passages (they are read apart to choose), else None (sequential)."""
        if not passages or not (params.parallel is not None or params.prunes(len(passages))):
            return None
        system, reminder = self.config.system_prompt, self.config.reminder
        return split_prompt(self.tokenizer, question, passages, system, self.model.device, reminder)

    def _citation_constraint(
        self, passages: Sequence[Document], params: GenerationParams
    ) -> CitationConstraint | None:
        """The rule that makes the answer cite before it ends, if ``params.require_citation`` and passages."""
        if not params.require_citation or not passages:
            return None
        return CitationConstraint(self.tokenizer, len(passages), self.eos_token_ids)

    def _encode_context_free(self, question: str, params: GenerationParams) -> torch.Tensor | None:
        """The prompt without passages ``# [1, len]`` when CAD is on, else None."""
        if params.cad is None:
            return None
        messages = context_free_messages(question, self.config.system_prompt, self.config.reminder)
        return self._apply_template(messages)

    def _apply_template(self, messages: list[dict[str, str]], reply_start: str = "") -> torch.Tensor:
        """Prompt ids ``# [1, len]`` ready for the reply, whose first text is ``reply_start`` when given."""
        if reply_start:  # the whole text tokenized at once, as the local rerankers build their prompts
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text + reply_start, add_special_tokens=False, return_tensors="pt")
            return ids["input_ids"].to(self.model.device)
        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        return encoded["input_ids"].to(self.model.device)  # [1, len]

    def _answer_tokens(
        self,
        input_ids: torch.Tensor,  # [1, prompt_len]
        params: GenerationParams,
        context_free_ids: torch.Tensor | None = None,  # [1, len] the prompt without passages, when params.cad
        stats: DecodeStats | None = None,
        parallel: ParallelPrompt | None = None,  # the prompt cut for parallel prefill, or None: sequential
        citations: CitationConstraint | None = None,  # applied to the final scores when given
    ) -> Iterator[int]:
        """The answer's new token ids: :meth:`_decode` with the parts ``params`` turns on."""
        contrast = None
        if params.cad is not None:
            if context_free_ids is None:
                raise ValueError("context-aware decoding needs the prompt without passages")
            contrast = Contrast(params.cad, context_free_ids)
        read = None
        if parallel is not None:
            prefill = self._parallel_prefill(params)
            one = prefill.reads_one_passage(len(parallel.passage_ids))
            if not one and token_decoder(self.model) is not None:
                raise ConfigError(
                    "parallel and blended contexts (and keeping more than one passage) decode in torch only: "
                    "this generator decodes in llama.cpp (decoder='llama.cpp')"
                )
            read = (parallel, prefill)
        stats = stats if stats is not None else DecodeStats()
        return self._decode(input_ids, params, params.drafting, stats, contrast, read, citations)

    @torch.inference_mode()
    def _decode(
        self,
        input_ids: torch.Tensor,  # [1, prompt_len]
        params: SamplingParams,
        drafting: Drafting | None,  # the speculative loop's drafts, or None: one forward per token
        stats: DecodeStats,
        contrast: Contrast | None = None,  # CAD: a second row, the prompt without passages
        parallel: ParallelRead | None = None,  # the prompt cut for parallel prefill, or None: sequential
        citations: CitationConstraint | None = None,  # applied to the final scores when given
        observe: Observer | None = None,  # shown each plain step's final scores and the token chosen
    ) -> Iterator[int]:
        """Yield new token ids for the prompt ``input_ids``, the final eos included.

        One forward for the prompt(s), then one per token. Given ``contrast``, its prompt is a second row of
        the same batch and the two rows' logits are combined by context-aware decoding before the logits
        processors. With ``drafting`` the speculative loop takes over
        (:mod:`rag.generation.decode.speculative`); ``observe`` is for plain decoding (chat logprobs).
        Given ``parallel``, the passages come from the passage KV store
        (:mod:`rag.generation.contexts.parallel_prefill`) and ``input_ids`` is replaced by its pieces,
        concatenated.
        """
        rng = None
        if params.seed is not None and params.temperature > 0:
            rng = torch.Generator(device=self.model.device).manual_seed(params.seed)
        prompts = [input_ids[0]] if contrast is None else [input_ids[0], contrast.context_free_ids[0]]
        if parallel is None:
            batch = KVBatch(self.model, prompts)
        else:
            cut, prefill = parallel
            input_ids = cut.input_ids
            batch = prefill.batch(cut, prompts[1:], stats)

        eos_ids = torch.tensor(sorted(self.eos_token_ids), device=self.model.device)
        bias = logit_bias(params, self.model.config.vocab_size, self.model.device)

        def score(generated: list[int], logits: torch.Tensor) -> torch.Tensor:  # [rows, vocab] -> [vocab]
            combined = logits[0] if contrast is None else contrast.cad(logits[0], logits[1])
            scores = self._process_logits(input_ids, generated, combined)
            if bias is not None:  # a function of the tokens only: drafting agrees
                scores = scores.index_add(0, bias[0], bias[1].to(scores.dtype))
            if len(generated) < params.min_new_tokens:  # a function of the tokens only: drafting agrees
                scores = scores.index_fill(0, eos_ids, float("-inf"))
            return scores if citations is None else citations(generated, scores)

        if drafting is not None:
            prompt, eos = input_ids[0].tolist(), self.eos_token_ids
            yield from speculative_decode(
                batch, score, self.drafter, prompt, params, drafting, eos, rng, stats
            )
            return
        generated: list[int] = []
        logits = batch.prefill(params.max_new_tokens)  # [rows, vocab]: the whole prompt in one forward
        while True:
            scores = score(generated, logits)  # [vocab]
            token = next_token(scores, params, rng)
            if observe is not None:
                observe(scores, token)
            generated.append(token)
            yield token
            if token in self.eos_token_ids or len(generated) >= params.max_new_tokens:
                return
            logits = batch.extend([token])[:, -1]  # [rows, vocab]
            stats.decode_steps += 1

    def _parallel_prefill(self, params: GenerationParams) -> ParallelPrefill:
        if self._model_id is None:
            self._model_id = model_identity(self.model, self.tokenizer)
        store, model_id = self.passage_store, self._model_id
        # keep_passages alone reads the passages apart with the default APE attention, as parallel contexts do
        parallel = params.parallel if isinstance(params.parallel, ParallelContexts) else ParallelContexts()
        blended = params.parallel.ratio if isinstance(params.parallel, BlendedContexts) else 0.0
        return ParallelPrefill(
            self.model,
            store,
            model_id,
            parallel.ape_temperature,
            parallel.ape_scale,
            self.config.passage_cache_int8,
            blended,
            params.keep_passages,
        )

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
