"""The RAG chat prompt and the citation markers read back from an answer.

>>> from rag.types import Document
>>> docs = [Document("d1", "Paris is the capital of France.", title="France")]
>>> print(build_messages("What is the capital of France?", docs)[1]["content"])
Passages:
<BLANKLINE>
[1] France
Paris is the capital of France.
<BLANKLINE>
Question: What is the capital of France?
<BLANKLINE>
Answer the question in one or two sentences, citing the passage numbers.
>>> parse_citations("Paris [1][7].", docs)
['d1']
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rag.types import Document

SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages provided. "
    "Answer briefly, in at most three sentences of your own words; do not copy whole passages. "
    "Cite the passages that support each statement with their numbers in square brackets, "
    "like [1] or [2][3]. If the passages do not contain the answer, say that you do not know."
)

# Repeated after the question, where a small model reads it last: without it Qwen2.5-Coder-0.5B given one
# passage (keep_passages=1) copied the passage out from its "[1] Title" line (docs/answers.md).
ANSWER_REMINDER = "Answer the question in one or two sentences, citing the passage numbers."

# "[3]" or "[1, 2]" (commas, optional spaces); ranges like "[1-2]" are not recognised.
_CITATION = re.compile(r"\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")


def format_passage(number: int, doc: Document) -> str:
    """``[n] Title`` on its own line, then the text; no title line break when the title is empty."""
    return f"[{number}] {doc.title}\n{doc.text}" if doc.title else f"[{number}] {doc.text}"


def build_messages(
    question: str,
    passages: Sequence[Document],
    system_prompt: str = SYSTEM_PROMPT,
    reminder: str = ANSWER_REMINDER,
) -> list[dict[str, str]]:
    """Chat messages for one RAG answer: the instruction, then passages numbered from 1, then the question and
    the ``reminder`` of how to answer ("" for none)."""
    blocks = [format_passage(i, doc) for i, doc in enumerate(passages, start=1)]
    context = "\n\n".join(blocks) if blocks else "(no passages)"
    user = f"Passages:\n\n{context}\n\n{question_turn(question, reminder)}"
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


def question_turn(question: str, reminder: str = ANSWER_REMINDER) -> str:
    """The end of the user turn: the question, then the reminder of how to answer."""
    asked = f"Question: {question.strip()}"
    return f"{asked}\n\n{reminder}" if reminder else asked


def has_citation(text: str) -> bool:
    """Whether ``text`` holds a citation marker such as ``[2]`` or ``[1, 3]``."""
    return _CITATION.search(text) is not None


def parse_citations(text: str, passages: Sequence[Document]) -> list[str]:
    """Doc ids cited by ``[n]`` / ``[n, m]`` markers (1-based), in order of first appearance.

    Duplicates are dropped and numbers outside ``1..len(passages)`` are ignored.

    >>> docs = [Document("a", ""), Document("b", ""), Document("c", "")]
    >>> parse_citations("x [3] y [1, 3] z [9] [2]", docs)
    ['c', 'a', 'b']
    """
    cited: dict[str, None] = {}  # insertion-ordered set
    for match in _CITATION.finditer(text):
        for number in match.group(1).split(","):
            n = int(number)
            if 1 <= n <= len(passages):
                cited.setdefault(passages[n - 1].id)
    return list(cited)
