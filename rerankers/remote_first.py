"""FIRST over any OpenAI-compatible server: the passages ranked by the log-probabilities the server gives for
the first identifier of its reply (``top_logprobs``), one request of one token per window.

The same prompt and windows as the local :mod:`~rag.rerankers.first`, with the reply started by ``"["`` (a
last assistant message the server continues: vLLM's ``continue_final_message``, llama.cpp's server and
``rag serve`` continue it as is), so that the next token is the letter whatever the tokenizer does with
brackets. The server lists at most 20 alternatives (OpenAI's limit), so a window holds at most 20 passages.
Given the server model's ``tokenizer``, each request adds +100 to the logit of every letter of the window
(``logit_bias``): the letters fill the list, in the order of their logits, and the ranking is the local
FIRST's on the same model. Without it, other tokens take places in the list, and letters missing from it rank
after those in it, in their current order.

>>> url, model = "http://127.0.0.1:8080/v1", "qwen2.5-coder-1.5b-instruct"
>>> server = OpenAICompatibleConfig(base_url=url, model=model)  # doctest: +SKIP
>>> reranker = build("reranker", "first-remote", RemoteFirstConfig(server=server))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rag.errors import ConfigError
from rag.generation.base import ChatParams, TokenLogprobs
from rag.registry import register
from rag.rerankers.base import DocumentSource
from rag.rerankers.listwise_base import LISTWISE_SYSTEM, ranking_prompt
from rag.rerankers.permutation import LETTERS
from rag.rerankers.remote import RemoteWindowReranker, RemoteWindowsConfig
from rag.types import Document

MAX_TOP_LOGPROBS = 20  # OpenAI's limit on top_logprobs


LETTER_BIAS = 100.0  # OpenAI's largest logit_bias: the letters outrank every other token, in their own order


@dataclass(frozen=True)
class RemoteFirstConfig(RemoteWindowsConfig):
    # the tokenizer of the server's model (bundled name, folder or hub id): with it the letters are biased
    # into the server's list of alternatives; None: ranked from whatever the list holds
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window > MAX_TOP_LOGPROBS:
            limit = f"{MAX_TOP_LOGPROBS} (the alternatives a server lists)"
            raise ConfigError(f"window must be at most {limit}, got {self.window}")


@register("reranker", "first-remote", RemoteFirstConfig)
class RemoteFirstReranker(RemoteWindowReranker):
    name = "first-remote"

    def __init__(self, config: RemoteFirstConfig, *, docstore: DocumentSource | None = None) -> None:
        super().__init__(config, docstore=docstore)
        self.letter_ids: list[int] = []  # the token id of each letter after "[", with a tokenizer
        if config.tokenizer is not None:
            from rag.lm import load_tokenizer

            tokenizer = load_tokenizer(config.tokenizer)
            ids = [tokenizer.encode(c, add_special_tokens=False) for c in LETTERS[: config.window]]
            if any(len(i) != 1 for i in ids):
                raise ConfigError(f"FIRST needs single-token letters; {config.tokenizer!r} gives {ids}")
            self.letter_ids = [i[0] for i in ids]

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
        bias = tuple((token, LETTER_BIAS) for token in self.letter_ids[: len(letters)])
        one_token = ChatParams(max_new_tokens=1, logit_bias=bias, steps=TokenLogprobs(MAX_TOP_LOGPROBS))
        answer = self.server.chat(messages, one_token).read_to_end()
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
