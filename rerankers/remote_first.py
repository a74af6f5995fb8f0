"""FIRST over any OpenAI-compatible server: the passages ranked by the log-probabilities the server gives for
the first identifier of its reply (``top_logprobs``), one request of one token per window.

The same prompt and windows as the local :mod:`~rag.rerankers.first`, with the reply started by ``"["`` (a
last assistant message the server continues: vLLM's ``continue_final_message``, llama.cpp's server and
``rag serve`` continue it as is), so that the next token is the letter whatever the tokenizer does with
brackets. The server lists at most 20 alternatives (OpenAI's limit), so a window holds at most 20 passages;
letters missing from the list rank after those in it, in their current order.

>>> url, model = "http://127.0.0.1:8080/v1", "qwen2.5-coder-1.5b-instruct"
>>> server = OpenAICompatibleConfig(base_url=url, model=model)  # doctest: +SKIP
>>> reranker = build("reranker", "first-remote", RemoteFirstConfig(server=server))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rag.errors import ConfigError
from rag.generation.base import GenerationParams
from rag.registry import register
from rag.rerankers.listwise_base import LISTWISE_SYSTEM, ranking_prompt
from rag.rerankers.permutation import LETTERS
from rag.rerankers.remote import RemoteWindowReranker, RemoteWindowsConfig
from rag.types import Document

MAX_TOP_LOGPROBS = 20  # OpenAI's limit on top_logprobs


@dataclass(frozen=True)
class RemoteFirstConfig(RemoteWindowsConfig):
    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window > MAX_TOP_LOGPROBS:
            limit = f"{MAX_TOP_LOGPROBS} (the alternatives a server lists)"
            raise ConfigError(f"window must be at most {limit}, got {self.window}")


@register("reranker", "first-remote", RemoteFirstConfig)
class RemoteFirstReranker(RemoteWindowReranker):
    name = "first-remote"

    def permute(self, query: str, window_docs: Sequence[Document]) -> list[int]:
        """Positions of ``window_docs`` by the server's log-probability of their letter, best first."""
        letters = LETTERS[: len(window_docs)]
        passages = [self.passage_text(d) for d in window_docs]
        messages = [
            {"role": "system", "content": LISTWISE_SYSTEM},
            {"role": "user", "content": ranking_prompt(query, passages, letters)},
            {"role": "assistant", "content": "["},  # continued: the next token is the letter
        ]
        self.requests += 1
        one_token = GenerationParams(max_new_tokens=1, keep_passages=0)
        answer = self.server.chat(messages, one_token, top_logprobs=MAX_TOP_LOGPROBS).read_to_end()
        logprobs = answer.logprobs or []
        return rank_letters(logprobs[0].top if logprobs else [], letters)


def rank_letters(alternatives: Sequence[tuple[str, float]], letters: str) -> list[int]:
    """Positions of ``letters`` by the log-probability of their token among ``alternatives``, best first;
    letters not among them follow in their order.

    >>> rank_letters([("B", -0.1), (" A", -2.0), ("[C", -3.0), ("x", -0.5)], "ABCD")
    [1, 0, 2, 3]
    """
    best: dict[int, float] = {}
    for token, logprob in alternatives:
        letter = token.strip().lstrip("[").rstrip("]").strip()
        if len(letter) == 1 and letter in letters:
            position = letters.index(letter)
            best[position] = max(logprob, best.get(position, float("-inf")))
    return sorted(range(len(letters)), key=lambda i: (i not in best, -best.get(i, 0.0), i))
