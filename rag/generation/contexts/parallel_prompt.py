"""The RAG chat prompt cut into a shared prefix, one block per passage, and the question part.

The chat template is rendered as text and cut where the passages begin and end: the prefix (system prompt and
the template up to ``Passages:``), each numbered passage with the blank line after it, and the rest (the
question and the assistant turn). The whole prompt is tokenized once and its tokens are cut at those
character boundaries, so the pieces concatenated are exactly the sequential prompt
(:attr:`ParallelPrompt.input_ids`); tokenizing each piece alone can differ at the edges (SmolLM2 merges a
trailing ``\\n\\n`` that it splits before ``[``). A passage block includes its citation number, so a passage
is cached per rank it is shown at.

>>> pieces = split_text("<s>user\\nPassages:\\n\\n[1] a\\n\\n[2] b\\n\\nQuestion: q</s>", ["[1] a", "[2] b"])
>>> pieces
('<s>user\\nPassages:\\n\\n', ('[1] a\\n\\n', '[2] b\\n\\n'), 'Question: q</s>')
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from rag.errors import ConfigError
from rag.generation.prompt import build_messages, format_passage
from rag.types import Document

_PASSAGES_HEADER = "Passages:\n\n"  # how build_messages opens the user turn
_SEPARATOR = "\n\n"  # between passage blocks, and between the last block and the question


@dataclass(frozen=True)
class ParallelPrompt:
    """Token ids of the pieces; texts for the cache keys."""

    prefix_text: str
    passage_texts: tuple[str, ...]
    prefix_ids: torch.Tensor  # [prefix_len]
    passage_ids: tuple[torch.Tensor, ...]  # each [passage_len_i]
    question_ids: torch.Tensor  # [question_len]: the question and the assistant turn's opening
    # question_ids[a:b] are the tokens of the question's own text (None: not located in the template)
    question_span: tuple[int, int] | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        """The sequential prompt ``# [1, total_len]``: the pieces one after another."""
        return torch.cat([self.prefix_ids, *self.passage_ids, self.question_ids])[None]

    def keeping(self, passages: Sequence[int]) -> ParallelPrompt:
        """The prompt with only the passages at these indices, in this order (their citation numbers kept)."""
        return replace(
            self,
            passage_texts=tuple(self.passage_texts[i] for i in passages),
            passage_ids=tuple(self.passage_ids[i] for i in passages),
        )


def split_text(text: str, blocks: Sequence[str]) -> tuple[str, tuple[str, ...], str]:
    """Cut rendered prompt ``text`` into (prefix, passage pieces, rest); raise if the blocks are not in it."""
    first = _PASSAGES_HEADER + blocks[0]
    start = text.find(first)
    if start < 0 or text.find(first, start + 1) >= 0:
        raise ConfigError(
            "the chat template does not show the passages verbatim once; use sequential prefill"
        )
    position = start + len(_PASSAGES_HEADER)
    pieces = []
    for block in blocks:
        piece = block + _SEPARATOR
        if not text.startswith(piece, position):
            raise ConfigError("the chat template changed a passage's text; use sequential prefill")
        pieces.append(piece)
        position += len(piece)
    return text[: start + len(_PASSAGES_HEADER)], tuple(pieces), text[position:]


def split_prompt(
    tokenizer: Any,
    question: str,
    passages: Sequence[Document],
    system_prompt: str,
    device: torch.device,
    reminder: str = "",
) -> ParallelPrompt:
    """The chat prompt of ``build_messages`` cut into pieces and tokenized piece by piece."""
    if not passages:
        raise ValueError("parallel prefill needs at least one passage")
    messages = build_messages(question, passages, system_prompt, reminder)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    blocks = [format_passage(i, doc) for i, doc in enumerate(passages, start=1)]
    prefix, pieces, rest = split_text(text, blocks)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor(encoded["input_ids"], dtype=torch.long, device=device)  # [total]
    starts = torch.tensor([start for start, _ in encoded["offset_mapping"]])  # [total] first character
    ends = torch.tensor([end for _, end in encoded["offset_mapping"]])  # [total] end character of each token
    cuts, boundary = [0], 0
    for piece in (prefix, *pieces):
        boundary += len(piece)
        cut = int(torch.searchsorted(ends, boundary, right=True))  # tokens ending at or before the boundary
        if cut == 0 or int(ends[cut - 1]) != boundary:
            raise ConfigError("a token spans a passage boundary; use sequential prefill")
        cuts.append(cut)
    cuts.append(len(ids))
    chunks = [ids[a:b] for a, b in itertools.pairwise(cuts)]
    span = None
    asked = question.strip()  # as build_messages writes it
    first = text.find(asked, len(text) - len(rest))
    if first >= 0:  # the tokens overlapping the question's characters, counted from the question part
        last = first + len(asked)
        span = (
            int(torch.searchsorted(ends, first, right=True)) - cuts[-2],
            int(torch.searchsorted(starts, last)) - cuts[-2],
        )
    return ParallelPrompt(prefix, pieces, chunks[0], tuple(chunks[1:-1]), chunks[-1], span)
