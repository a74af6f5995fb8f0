"""A small causal LM as the drafter: greedy continuations from a model that shares the target's tokenizer.

The draft model (e.g. Qwen2.5-0.5B drafting for Qwen2.5-1.5B) keeps its own KV cache across calls. Successive
contexts of one answer share almost everything (prompt + answer so far, now a few tokens longer), so each
:meth:`DraftModelProposer.propose` crops the cache back to the longest common prefix with the tokens it
holds, feeds only the new tokens, then decodes greedily. Greedy drafts are a deterministic function of the
context, so the speculative-sampling acceptance rule (:func:`rag.generation.decode.speculative.choose`) stays
exact.

The drafted tokens stay in the cache: when the target accepts them, the next call finds them already there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import DynamicCache

from rag.errors import ConfigError
from rag.lm.kv_cache import new_cache

# () -> (model, tokenizer): loads the draft model on first use
Loader = Callable[[], tuple[Any, Any]]


def check_vocabulary(draft_tokenizer: Any, target_tokenizer: Any, name: str = "the draft model") -> None:
    """Raise ConfigError unless both tokenizers map the same strings to the same ids."""
    draft, target = draft_tokenizer.get_vocab(), target_tokenizer.get_vocab()
    if draft == target:
        return
    differing = sorted(
        token for token in draft.keys() | target.keys() if draft.get(token) != target.get(token)
    )
    example = ", ".join(repr(token) for token in differing[:3])
    raise ConfigError(
        f"{name} cannot draft for this generator: its vocabulary ({len(draft)} tokens) differs from the "
        f"target's ({len(target)} tokens) in {len(differing)} entries (e.g. {example}); a draft model must "
        "use the target's tokenizer (e.g. a smaller model of the same family)"
    )


class DraftModelProposer:
    """Greedy drafts from a causal LM with its own KV cache, reused across calls.

    Pass ``model`` (already loaded, on any device), or ``loader`` to load it on the first call; ``loader``
    returns ``(model, tokenizer)`` and given ``target_tokenizer`` the vocabularies are checked after loading.
    ``max_tokens_cap`` bounds the draft length below what the generator asks for: every drafted token costs
    one forward of the draft model. ``tokens_fed`` counts the tokens run through the draft model so far.
    """

    def __init__(
        self,
        model: Any = None,
        *,
        loader: Loader | None = None,
        target_tokenizer: Any = None,
        max_tokens_cap: int | None = None,
        name: str = "the draft model",
    ) -> None:
        if (model is None) == (loader is None):
            raise ConfigError("pass a draft model or a loader, not both and not neither")
        if max_tokens_cap is not None and max_tokens_cap < 1:
            raise ConfigError(f"max_tokens_cap must be at least 1, got {max_tokens_cap}")
        self._model = model
        self._loader = loader
        self._target_tokenizer = target_tokenizer
        self.max_tokens_cap = max_tokens_cap
        self.name = name
        self._ids: list[int] = []  # the tokens whose KV is in the cache, in order
        self._cache: DynamicCache | None = None
        self._logits: torch.Tensor | None = None  # [vocab] next-token logits after self._ids
        self.tokens_fed = 0

    @property
    def model(self) -> Any:
        """The draft model, loaded (and its vocabulary checked) on first access when a loader was given."""
        if self._model is None:
            assert self._loader is not None
            model, tokenizer = self._loader()
            if self._target_tokenizer is not None:
                check_vocabulary(tokenizer, self._target_tokenizer, self.name)
            self._model = model
        return self._model

    def next_token_probs(self, context: Sequence[int]) -> torch.Tensor:
        """The draft model's next-token distribution after ``context`` ``# [vocab]`` (float32)."""
        return self._advance(context).softmax(dim=-1)

    def propose(self, context: Sequence[int], max_tokens: int) -> list[list[int]]:
        """The greedy continuation of ``context``, ``max_tokens`` long (capped): one draft, or none."""
        if self.max_tokens_cap is not None:
            max_tokens = min(max_tokens, self.max_tokens_cap)
        if max_tokens < 1 or not context:
            return []
        logits = self._advance(context)  # [vocab]
        draft = [int(logits.argmax())]
        while len(draft) < max_tokens:
            logits = self._feed(draft[-1:])
            draft.append(int(logits.argmax()))
        return [draft]

    def _advance(self, context: Sequence[int]) -> torch.Tensor:
        """Bring the cache to exactly ``context``; next-token logits after it ``# [vocab]``."""
        if not context:
            raise ValueError("the draft model needs at least one context token")
        context = list(context)
        if context == self._ids and self._logits is not None:
            return self._logits
        common = 0
        for held, wanted in zip(self._ids, context, strict=False):
            if held != wanted:
                break
            common += 1
        # At least one token must run to get the logits after the context: when the context is a prefix of
        # the cached tokens, its last token is cropped and fed again.
        keep = min(common, len(context) - 1)
        if keep == 0 or self._cache is None:
            self._cache = new_cache(self.model)
            self._ids, keep = [], 0
        elif keep < len(self._ids):
            self._cache.crop(keep - len(self._ids))  # a negative count: the tokens removed from the end
            self._ids = self._ids[:keep]
        return self._feed(context[keep:])

    @torch.inference_mode()
    def _feed(self, tokens: list[int]) -> torch.Tensor:
        """Run ``tokens`` after the cached ones and cache their KV; logits after the last ``# [vocab]``."""
        model = self.model
        assert self._cache is not None
        ids = torch.tensor([tokens], dtype=torch.long, device=model.device)  # [1, n]
        out = model(input_ids=ids, cache=self._cache, use_cache=True, logits_to_keep=1)
        self._ids.extend(tokens)
        self.tokens_fed += len(tokens)
        self._logits = out.logits[0, -1].float()  # [vocab]
        return self._logits
