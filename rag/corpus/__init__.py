"""Corpus readers: BEIR folders, JSON lines, SQuAD files and folders of text files, each as Documents.

    >>> from rag.corpus import read_corpus
    >>> for doc in read_corpus("data/scifact"):  # doctest: +SKIP
    ...     print(doc.id, doc.title)

Every reader is a generator and raises :class:`~rag.errors.CorpusError` for a bad record, naming the file and
line; ids are checked for duplicates as they are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from rag.corpus.beir import read_beir, read_beir_qrels, read_beir_queries
from rag.corpus.chunking import chunk_text
from rag.corpus.jsonl import read_jsonl
from rag.corpus.squad import SquadQuestion, read_squad, read_squad_questions
from rag.corpus.textdir import read_textdir
from rag.errors import CorpusError
from rag.types import Document

__all__ = [
    "FORMATS",
    "SquadQuestion",
    "chunk_text",
    "detect_format",
    "read_beir",
    "read_beir_qrels",
    "read_beir_queries",
    "read_corpus",
    "read_jsonl",
    "read_squad",
    "read_squad_questions",
    "read_textdir",
]

# format name -> reader(path, chunk_tokens, chunk_overlap); only the text reader chunks
FORMATS: dict[str, Callable[[Path, int, int], Iterator[Document]]] = {
    "beir": lambda path, _tokens, _overlap: read_beir(path),
    "jsonl": lambda path, _tokens, _overlap: read_jsonl(path),
    "squad": lambda path, _tokens, _overlap: read_squad(path),
    "text": read_textdir,
}


def detect_format(path: str | Path) -> str:
    """Name the format of ``path``: a folder with ``corpus.jsonl`` is "beir", any other folder "text",
    a ``.jsonl`` file "jsonl" and a ``.json`` file "squad" (its shape is checked when it is read)."""
    path = Path(path)
    if path.is_dir():
        return "beir" if (path / "corpus.jsonl").is_file() else "text"
    if path.suffix.lower() == ".jsonl":
        return "jsonl"
    if path.suffix.lower() == ".json":
        return "squad"
    raise CorpusError(
        f"cannot tell the corpus format of {path}: expected a folder, a .jsonl or a SQuAD .json file; "
        f"pass a format, one of: {', '.join(FORMATS)}"
    )


def read_corpus(
    path: str | Path, fmt: str | None = None, *, chunk_tokens: int = 256, chunk_overlap: int = 32
) -> Iterator[Document]:
    """Yield the documents of the corpus at ``path`` in format ``fmt`` (detected when None).

    ``chunk_tokens`` and ``chunk_overlap`` (whitespace tokens) apply to text folders only.
    """
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise CorpusError(f"unknown corpus format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if not path.exists():
        raise CorpusError(f"corpus not found: {path}")
    return FORMATS[fmt or detect_format(path)](path, chunk_tokens, chunk_overlap)
