"""``rag bench generate``'s measurement, and its baselines: transformers ``generate()``, as a user calls it.

Every mode, ragloom's or transformers', answers the same prompt token ids with the same model object and
returns a :class:`Measurement`: the new token ids (the final eos included), the time to the first of them
and the time to the last.

    >>> m = Measurement(tokens=[5, 6, 7, 2], first_token_s=0.5, total_s=0.8)
    >>> m.decode_s, round(m.decode_tokens_per_s, 6)
    (0.30000000000000004, 10.0)
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from rag.lm.attention import attention_implementation


@dataclass(frozen=True)
class Measurement:
    """One answer of one mode: its token ids and when they came out (seconds from the start of the call)."""

    tokens: list[int]
    first_token_s: float
    total_s: float
    decode_steps: int = 0  # model forwards after the prefill (verification steps when drafting)
    accepted_tokens: int = 0  # drafted tokens accepted (drafting modes)
    passages_encoded: int = 0  # passage blocks computed rather than loaded (parallel-context modes)

    @property
    def decode_s(self) -> float:
        return self.total_s - self.first_token_s

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first per second after the first (0 for a one-token answer)."""
        return (len(self.tokens) - 1) / self.decode_s if self.decode_s > 0 else 0.0


class _FirstTokenClock(BaseStreamer):
    """A streamer that only notes when ``generate()`` emitted its first new token."""

    def __init__(self) -> None:
        self.first: float | None = None
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() puts the prompt first
            self._prompt_seen = True
        elif self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


@dataclass(frozen=True)
class TransformersGenerate:
    """transformers ``model.generate()``, greedy, with optional extra generation options, as a user of
    transformers runs it: with transformers' own SDPA attention (ragloom's grouped SDPA is switched off for
    the call).

    ``options`` go into the ``GenerationConfig`` (e.g. ``{"prompt_lookup_num_tokens": 10}``);
    ``assistant`` is a smaller model with the same tokenizer for assisted generation, or None.
    """

    name: str
    model: Any
    eos_token_ids: Collection[int]
    options: tuple[tuple[str, Any], ...] = ()
    assistant: Any = None

    @torch.inference_mode()
    def run(
        self, input_ids: torch.Tensor, max_new_tokens: int, min_new_tokens: int = 0
    ) -> Measurement:  # input_ids: [1, prompt_len]
        eos = sorted(self.eos_token_ids)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos[0],
            **dict(self.options),
        )
        clock = _FirstTokenClock()
        extra = {} if self.assistant is None else {"assistant_model": self.assistant}
        with stock_model(self.model, self.assistant):
            start = time.perf_counter()
            output = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                streamer=clock,
                **extra,
            )  # [1, prompt_len + new]
            end = time.perf_counter()
        tokens = output[0, input_ids.shape[1] :].tolist()
        first = (clock.first or end) - start
        return Measurement(tokens, first, end - start)


@contextmanager
def stock_model(*models: Any) -> Iterator[None]:
    """Within the block, ``models`` (None skipped) run transformers' own SDPA."""
    with ExitStack() as stack:
        for model in models:
            if model is not None:
                stack.enter_context(attention_implementation(model, "sdpa"))
        yield
