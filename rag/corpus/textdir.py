"""A folder of text files (``.txt``, ``.md``, ``.markdown``, ``.rst``), read recursively and chunked.

Files are read in sorted order of their relative path; hidden files and folders (``.git``…) are skipped.
Each file becomes one or more chunks with ids ``relative/path.md#0``, ``#1``… (see
:mod:`rag.corpus.chunking`).

    >>> docs = list(read_textdir("docs/", chunk_tokens=256, chunk_overlap=32))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rag.corpus.chunking import check_chunking, chunk_file
from rag.errors import CorpusError
from rag.types import Document

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")


def read_textdir(folder: str | Path, chunk_tokens: int = 256, chunk_overlap: int = 32) -> Iterator[Document]:
    """Yield the chunks of every text file under ``folder``; a folder without text files is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CorpusError(f"corpus not found: {folder}")
    check_chunking(chunk_tokens, chunk_overlap)
    files = sorted(
        (p.relative_to(folder).as_posix(), p)
        for p in folder.rglob("*")
        if p.suffix.lower() in TEXT_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise CorpusError(f"{folder}: no text files ({', '.join(TEXT_SUFFIXES)}) found")
    return _chunks(files, chunk_tokens, chunk_overlap)


def _chunks(files: list[tuple[str, Path]], chunk_tokens: int, chunk_overlap: int) -> Iterator[Document]:
    for rel_path, path in files:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise CorpusError(f"{path}:{line}: not valid UTF-8") from None
        yield from chunk_file(text, rel_path, chunk_tokens, chunk_overlap)
