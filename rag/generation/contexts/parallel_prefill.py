"""Parallel prefill (the APE idea): passages encoded once, independently, reused from a KV store.

Layout of the cache, for a prompt cut by :func:`~rag.generation.contexts.parallel_prompt.split_prompt`::

    columns   [ prefix (P) | passage 1 | passage 2 | ... | question + answer ... ]
    positions   0 .. P-1     P .. P+L1-1  P .. P+L2-1        P+max(L) ...

The prefix is encoded once; each passage is encoded after the prefix alone (not after the other passages),
all passages starting at position P. Keys are cached after RoPE, so a block is valid wherever it is loaded.
Blocks missing from the store are encoded together in one forward with a block-diagonal mask, then stored.
The question and every answer token then attend over all columns with APE attention
(:mod:`rag.lm.ape_attention`): the passages form one segment with APE's temperature and scale.

With context-aware decoding, the context-free prompt is a second row whose cached columns are all masked:
its passage segment is empty, so its attention is the ordinary one over its own tokens.

With ``blend_ratio > 0`` (:class:`~rag.generation.base.BlendedContexts`) the passages are moved to the
sequential prompt's positions and a share of their tokens is recomputed across passages
(:mod:`~rag.generation.contexts.kv_blend`); the question then attends with plain attention.

With ``keep_passages = k`` the question first reads each passage apart, and only the ``k`` passages under
which it is most likely stay in the cache (:mod:`~rag.generation.contexts.passage_pruning`). With ``k = 1``
the answer goes on from the question's copy over the kept passage, with plain attention: the cache is then
the sequential prompt's of that passage alone (APE's temperature and scale, and blending, do not apply).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from rag.errors import ConfigError
from rag.generation.base import DecodeStats
from rag.generation.contexts.kv_blend import deviating_columns, recompute, shift_block
from rag.generation.contexts.parallel_prompt import ParallelPrompt
from rag.generation.contexts.passage_kv_store import PassageKey, PassageKV, PassageKVStore
from rag.generation.contexts.passage_pruning import most_likely_passages, read_question, stacked_cache
from rag.generation.decode.kv_batch import KVBatch, additive_mask, packed_causal_mask
from rag.lm.ape_attention import ApeSegments, ape_segments, enable_ape_attention
from rag.lm.kv_cache import new_cache

_PREFIX_BLOCK = ""  # the passage text under which the prefix's own block is stored


def model_identity(model: Any, tokenizer: Any) -> str:
    """A fingerprint of the weights and config: a cached block is reused only by the model that made it.

    Hashes the config, the tokenizer's vocabulary size and class, and every parameter's and stored buffer's
    name, shape, dtype and first and last 256 values (cheap for any model size; fine-tuning and another
    precision of the weights, e.g. int4 against float32, change them).
    """
    digest = hashlib.sha256()
    digest.update(model.config.to_json_string(use_diff=False).encode())
    digest.update(f"{type(tokenizer).__name__}:{len(tokenizer)}".encode())
    for name, parameter in model.state_dict().items():
        flat = parameter.detach().reshape(-1)
        sample = torch.cat([flat[:256], flat[-256:]]).float().cpu().contiguous()
        digest.update(f"{name}:{tuple(parameter.shape)}:{parameter.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


class ParallelKVBatch(KVBatch):
    """A :class:`KVBatch` whose cache starts with the prefix and passage blocks.

    ``cached_valid`` ``# [rows, cached]`` says which cached columns each row sees; ``start`` ``# [rows]`` is
    the position of each row's first uncached token; ``prompts`` are the uncached tails (the question part,
    and the context-free prompt for CAD). ``lengths`` holds each row's next position, which is what
    :meth:`KVBatch.extend` needs (positions here are not the count of cached tokens).
    """

    def __init__(
        self,
        model: Any,
        cache: DynamicCache,
        cached_valid: torch.Tensor,  # [rows, cached] bool
        start: torch.Tensor,  # [rows] long
        prompts: Sequence[torch.Tensor],  # each [tail_len_r]
        segments: ApeSegments | None,  # None: plain attention (blended passages)
        ready: torch.Tensor | None = None,  # [vocab] row 0's next-token logits when its tail is empty
        sequential: bool = False,  # every row's cached columns are its prompt's first tokens, in order
    ) -> None:
        super().__init__(model, prompts)
        self.cache = cache
        self.segments = segments
        self.sequential = sequential
        self._cached_valid = cached_valid
        self._start = start
        self._ready = ready
        self._prefilled = False

    def _prompt_kv(self) -> list[torch.Tensor]:
        if not self.sequential:  # APE's attention or blended positions: llama.cpp's attention has neither
            raise ConfigError("parallel and blended contexts decode in torch only (--decoder torch)")
        return super()._prompt_kv()

    def _prefill(self) -> torch.Tensor:
        """Run the tails over the cached blocks; next-token logits ``# [rows, vocab]``."""
        if self._prefilled:
            raise RuntimeError("prefill() runs once")
        self._prefilled = True
        width = self._ids.shape[1]
        self.lengths = self._start + self._valid.sum(dim=1)
        if width == 0:  # nothing left to run: row 0 alone, its logits ready
            self._valid = self._cached_valid
            return self._ready[None]  # type: ignore[index]
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()  # [width, width]
        tail = causal[None, None] & self._valid[:, None, None, :]  # [rows, 1, width, width]
        past = self._cached_valid[:, None, None, :].expand(-1, 1, width, -1)  # [rows, 1, width, cached]
        allowed = torch.cat([past, tail], dim=-1)  # [rows, 1, width, cached + width]
        positions = self._start[:, None] + (self._valid.cumsum(dim=1) - 1).clamp(min=0)  # [rows, width]
        logits = self._run(self._ids, allowed, positions, logits_to_keep=1)[:, -1]  # [rows, vocab]
        self._valid = torch.cat([self._cached_valid, self._valid], dim=1)  # [rows, cached + width]
        if self._ready is not None:  # row 0 ran padding only
            logits[0] = self._ready
        return logits

    def _run(
        self,
        ids: torch.Tensor,
        allowed: torch.Tensor,
        positions: torch.Tensor,
        logits_to_keep: int | torch.Tensor,
    ) -> torch.Tensor:
        if self.segments is None:
            return super()._run(ids, allowed, positions, logits_to_keep)
        with ape_segments(self.segments):
            return super()._run(ids, allowed, positions, logits_to_keep)


@dataclass
class ParallelPrefill:
    """Loads or encodes the prefix and passage blocks of a prompt and builds its :class:`ParallelKVBatch`."""

    model: Any
    store: PassageKVStore
    model_id: str  # see model_identity
    temperature: float = 1.0  # APE attention temperature on the passage segment
    scale: float = 1.0  # APE scaling factor of the passage segment's log-sum-exp
    int8: bool = False  # store blocks as int8 (contexts.kv_int8); cold runs use the int8 blocks too
    # share of passage tokens recomputed across passages (contexts.kv_blend); 0 = off. When on, the passages
    # sit at the sequential prompt's positions and the question attends with plain attention
    blend_ratio: float = 0.0
    # answer from this many passages, those under which the question is most likely
    # (rag.generation.contexts.passage_pruning); 0 = all
    keep_passages: int = 0

    def __post_init__(self) -> None:
        enable_ape_attention(self.model)

    def reads_one_passage(self, passages: int) -> bool:
        """Whether the batch of ``passages`` passages goes on from one passage's sequential prompt (keeping 1
        of several): its cache is then a plain prompt's, with no APE attention or blended positions."""
        return self.keep_passages == 1 and passages > 1

    def batch(
        self,
        prompt: ParallelPrompt,
        extra_rows: Sequence[torch.Tensor] = (),  # each [len]: whole prompts with no passages (CAD)
        stats: DecodeStats | None = None,
    ) -> ParallelKVBatch:
        stats = stats if stats is not None else DecodeStats()
        prefix, passages = self.blocks(prompt, stats)
        if 0 < self.keep_passages < len(passages):
            # keeping one, the rest of the question part is read after the first passage's copy too: when
            # the retriever's first passage is the one kept, the answer's first token is then ready
            one = self.reads_one_passage(len(passages))
            question = prompt.question_ids
            reading = read_question(
                self.model,
                prefix,
                passages,
                question,
                prompt.question_span,
                answer_after=0 if one else None,
            )
            kept = most_likely_passages(reading.scores, self.keep_passages)
            stats.passages_pruned += len(passages) - len(kept)
            if one:  # go on from the chosen copy: the sequential prompt of that passage alone
                cache = reading.path(self.model, prefix, passages[kept[0]], kept[0])
                valid = torch.ones(cache.get_seq_length(), dtype=torch.bool, device=question.device)
                ready = reading.first_logits if kept[0] == reading.answered else None
                tail = question[len(question) if ready is not None else reading.read :]
                prefix_ids = prompt.prefix_ids
                return self._rows(cache, valid, len(valid), tail, prefix_ids, extra_rows, None, ready, True)
            prompt, passages = prompt.keeping(kept), [passages[i] for i in kept]
        lengths = [b.tokens for b in passages]
        if self.blend_ratio > 0:  # the sequential prompt's positions (rag.generation.contexts.kv_blend)
            offsets = [sum(lengths[:i]) for i in range(len(passages))]
            passages = [shift_block(self.model, b, d) for b, d in zip(passages, offsets, strict=True)]
        blocks = [prefix, *passages]
        cache = stacked_cache(self.model, blocks)
        device = prompt.prefix_ids.device
        valid = torch.ones(sum(b.tokens for b in blocks), dtype=torch.bool, device=device)  # [cached]
        segments: ApeSegments | None = ApeSegments(prefix.tokens, len(valid), self.temperature, self.scale)
        start = prefix.tokens + max(lengths)
        if self.blend_ratio > 0:
            valid = self._blend(cache, prompt, prefix.tokens, valid)
            stats.blended_tokens += int((~valid).sum())
            segments, start = None, prefix.tokens + sum(lengths)
        return self._rows(cache, valid, start, prompt.question_ids, prompt.prefix_ids, extra_rows, segments)

    def _rows(
        self,
        cache: DynamicCache,  # one row
        valid: torch.Tensor,  # [cached] the cached columns the question sees
        start: int,  # the position of the question part's first uncached token
        tail: torch.Tensor,  # [tail_len] the question part's uncached tokens
        prefix_ids: torch.Tensor,  # [prefix_len] the tokens of the cache's first columns (positions from 0)
        extra_rows: Sequence[torch.Tensor],
        segments: ApeSegments | None,
        ready: torch.Tensor | None = None,  # [vocab] the question row's logits when its tail is empty
        sequential: bool = False,  # the cache is the sequential prompt's first tokens (keeping one passage)
    ) -> ParallelKVBatch:
        """The batch of the question row over ``cache`` and the context-free rows (CAD), which see only the
        cached prefix tokens they begin with (the system prompt): their own tails are the rest."""
        rows = 1 + len(extra_rows)
        for layer in cache.layers:
            layer.keys = layer.keys.expand(rows, -1, -1, -1).contiguous()
            layer.values = layer.values.expand(rows, -1, -1, -1).contiguous()
        cached_valid = torch.zeros(rows, len(valid), dtype=torch.bool, device=valid.device)  # [rows, cached]
        cached_valid[0] = valid
        starts = torch.zeros(rows, dtype=torch.long, device=valid.device)  # [rows]
        starts[0] = start
        tails = [tail]
        for row, ids in enumerate(extra_rows, start=1):
            shared = min(shared_prefix_length(ids, prefix_ids), len(ids) - 1)  # its last token runs
            cached_valid[row, :shared] = True
            starts[row] = shared
            tails.append(ids[shared:])
        return ParallelKVBatch(self.model, cache, cached_valid, starts, tails, segments, ready, sequential)

    @torch.inference_mode()
    def _blend(
        self, cache: DynamicCache, prompt: ParallelPrompt, first: int, valid: torch.Tensor
    ) -> torch.Tensor:
        """Recompute the most deviating passage tokens (:mod:`rag.generation.contexts.kv_blend`).

        Returns the cached columns the question may see ``# [cached]``: stale ones hidden, new ones appended.
        """
        context = torch.cat([prompt.prefix_ids, *prompt.passage_ids])  # [n]
        columns = deviating_columns(self.model, cache, context, first, self.blend_ratio)  # [k]
        recompute(self.model, cache, context, columns)
        return torch.cat([valid.index_fill(0, columns, False), valid.new_ones(len(columns))])

    @torch.inference_mode()
    def blocks(
        self, prompt: ParallelPrompt, stats: DecodeStats | None = None
    ) -> tuple[PassageKV, list[PassageKV]]:
        """The prefix block and one block per passage, from the store or encoded (and then stored)."""
        stats = stats if stats is not None else DecodeStats()
        prefix_text = _with_ids(prompt.prefix_text, prompt.prefix_ids)
        mode = "\x00int8" if self.int8 else ""
        prefix_key = PassageKey.of(self.model_id, prefix_text, _PREFIX_BLOCK + mode)
        prefix, _ = self.store.get(prefix_key)
        if prefix is None:
            prefix = self._keep(
                prefix_key, self._encode(prompt.prefix_ids, None, [len(prompt.prefix_ids)])[0]
            )
        prefix = self._ready(prefix)
        keys = [
            PassageKey.of(self.model_id, prefix_text, _with_ids(text, ids) + mode)
            for text, ids in zip(prompt.passage_texts, prompt.passage_ids, strict=True)
        ]
        found: list[PassageKV | None] = []
        for key in keys:
            block, source = self.store.get(key)
            found.append(None if block is None else self._ready(block))
            if source == "memory":
                stats.passages_from_memory += 1
            elif source == "disk":
                stats.passages_from_disk += 1
        missing = [i for i, block in enumerate(found) if block is None]
        if missing:
            ids = torch.cat([prompt.passage_ids[i] for i in missing])  # [sum of missing lengths]
            lengths = [len(prompt.passage_ids[i]) for i in missing]
            for i, block in zip(missing, self._encode(ids, prefix, lengths), strict=True):
                found[i] = self._ready(self._keep(keys[i], block))
            stats.passages_encoded += len(missing)
        return prefix, [block for block in found if block is not None]

    def _ready(self, block: PassageKV) -> PassageKV:
        """The float block the model attends over, on the model's device."""
        return block.to(self.model.device).dequantized(self.model.dtype)

    def _keep(self, key: PassageKey, block: PassageKV) -> PassageKV:
        """Store ``block`` (as int8 if so configured) and return what was stored."""
        stored = block.quantized() if self.int8 else block
        self.store.put(key, stored)
        return stored

    def _encode(self, ids: torch.Tensor, prefix: PassageKV | None, lengths: list[int]) -> list[PassageKV]:
        """Encode ``ids`` ``# [n]``, pieces of ``lengths`` each attending to ``prefix`` and itself only.

        Every piece starts at the position right after the prefix. One forward; returns one block per piece.
        """
        device = ids.device
        cache = new_cache(self.model)
        past = 0
        if prefix is not None:
            past = prefix.tokens
            for layer, (k, v) in enumerate(zip(prefix.keys, prefix.values, strict=True)):
                cache.update(k[None], v[None], layer)
        sizes = torch.tensor(lengths, device=device)  # [pieces]
        starts = sizes.cumsum(0) - sizes  # [pieces]
        offset, allowed_new = packed_causal_mask(sizes)  # [n] position within the piece, [n, n]
        allowed = torch.cat([torch.ones(len(ids), past, dtype=torch.bool, device=device), allowed_new], dim=1)
        self.model(
            input_ids=ids[None],
            attention_mask=additive_mask(allowed[None, None], self.model.dtype),  # [1, 1, n, past + n]
            position_ids=(past + offset)[None],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        blocks = []
        for start, length in zip(starts.tolist(), lengths, strict=True):
            columns = slice(past + start, past + start + length)
            blocks.append(
                PassageKV(
                    tuple(
                        layer.keys[0, :, columns].clone() for layer in cache.layers
                    ),  # [kv_heads, len, dim]
                    tuple(layer.values[0, :, columns].clone() for layer in cache.layers),
                )
            )
        return blocks


def _with_ids(text: str, ids: torch.Tensor) -> str:
    """What a block's key hashes: its text and its token ids (a block is valid only for those tokens)."""
    return f"{text}\x00{ids.tolist()}"


def shared_prefix_length(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens ``a`` and ``b`` ``# [len]`` have in common.

    >>> shared_prefix_length(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4, 5]))
    2
    """
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n
