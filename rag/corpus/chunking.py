"""Split long texts into overlapping chunks of whitespace tokens.

A *token* here is a whitespace-separated word (``str.split()``), not a model token: cheap, deterministic and
the same for every encoder. A chunk holds at most ``chunk_tokens`` tokens and repeats the last
``chunk_overlap`` tokens of the chunk before it. When a paragraph (text after a blank line) starts in the
second half of a window, the chunk ends there instead, so chunks tend to follow paragraphs. Chunks are
slices of the original text, so line breaks and Markdown survive.

    >>> chunk_text("a b c d e f g", chunk_tokens=4, chunk_overlap=1)
    ['a b c d', 'd e f g']
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

from rag.errors import ConfigError
from rag.types import Document

_TOKEN = re.compile(r"\S+")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
MARKDOWN_SUFFIXES = (".md", ".markdown")


def check_chunking(chunk_tokens: int, chunk_overlap: int) -> None:
    """Raise ConfigError unless ``0 <= chunk_overlap < chunk_tokens``."""
    if chunk_tokens < 1:
        raise ConfigError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if not 0 <= chunk_overlap < chunk_tokens:
        raise ConfigError(
            f"chunk_overlap must be >= 0 and smaller than chunk_tokens ({chunk_tokens}), got {chunk_overlap}"
        )


def chunk_text(text: str, chunk_tokens: int = 256, chunk_overlap: int = 32) -> list[str]:
    """Split ``text`` into chunks of at most ``chunk_tokens`` whitespace tokens (see the module docstring).

    A text without tokens gives no chunks.
    """
    check_chunking(chunk_tokens, chunk_overlap)
    spans = [m.span() for m in _TOKEN.finditer(text)]
    # paragraph_start[i]: a blank line separates token i from token i - 1
    paragraph_start = [False] + [
        _BLANK_LINE.search(text, prev_end, next_start) is not None
        for (_, prev_end), (next_start, _) in pairwise(spans)
    ]
    chunks, start, n = [], 0, len(spans)
    while start < n:
        end = min(start + chunk_tokens, n)
        if end < n:
            # Prefer to end before the last paragraph start in the second half of the window; ending there
            # must still leave progress after the overlap (end - overlap > start).
            earliest = start + max(chunk_overlap + 1, chunk_tokens // 2)
            end = next((i for i in range(end, earliest - 1, -1) if paragraph_start[i]), end)
        chunks.append(text[spans[start][0] : spans[end - 1][1]])
        if end == n:
            break
        start = end - chunk_overlap
    return chunks


def chunk_file(
    text: str, rel_path: str, chunk_tokens: int = 256, chunk_overlap: int = 32
) -> Iterator[Document]:
    """Yield the chunks of one file as Documents ``{rel_path}#0``, ``#1``…

    The title is the file's first Markdown heading (Markdown files only), else the file stem; metadata holds
    ``path`` (relative, with ``/``) and ``chunk`` (the chunk number).
    """
    path = Path(rel_path)
    heading = _HEADING.search(text) if path.suffix.lower() in MARKDOWN_SUFFIXES else None
    title = heading.group(1) if heading else path.stem
    for i, chunk in enumerate(chunk_text(text, chunk_tokens, chunk_overlap)):
        yield Document(id=f"{rel_path}#{i}", text=chunk, title=title, metadata={"path": rel_path, "chunk": i})
