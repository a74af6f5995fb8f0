"""JSON-lines corpora: one JSON object per line (the pyserini and BEIR document layout).

Each record needs an id (``id`` or ``_id``, a non-empty string) and a text (``text`` or ``contents``, a
string; it may be empty when the record has a non-empty ``title``). A ``metadata`` object is merged into the
document's metadata; every other field is kept there too::

    {"id": "d1", "title": "Aspirin", "text": "Aspirin inhibits COX-1.", "year": 1971}
    -> Document(id="d1", text="Aspirin inhibits COX-1.", title="Aspirin", metadata={"year": 1971})

Every bad record raises :class:`~rag.errors.CorpusError` naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag.errors import CorpusError
from rag.types import Document

_ID_FIELDS = ("id", "_id")
_TEXT_FIELDS = ("text", "contents")


def read_jsonl(path: str | Path) -> Iterator[Document]:
    """Yield one :class:`Document` per non-blank line of ``path``, in file order.

    >>> docs = list(read_jsonl("corpus.jsonl"))  # doctest: +SKIP
    """
    path = Path(path)
    seen = SeenIds(path)
    for lineno, record in iter_json_lines(path):
        doc = record_to_document(record, path, lineno)
        seen.add(doc.id, f"line {lineno}")
        yield doc


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line; bad JSON or bad UTF-8 raise CorpusError."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CorpusError(f"{path}:{lineno}: not valid UTF-8") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # tolerate a byte-order mark
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(record, dict):
                raise CorpusError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def record_to_document(record: dict[str, Any], path: Path, lineno: int) -> Document:
    """Validate one JSON record and turn it into a Document (see the module docstring for the fields)."""
    where = f"{path}:{lineno}"
    record = dict(record)
    id_key = next((k for k in _ID_FIELDS if k in record), None)
    if id_key is None:
        raise CorpusError(f"{where}: missing id (expected a field 'id' or '_id')")
    doc_id = record.pop(id_key)
    if not isinstance(doc_id, str):
        raise CorpusError(f"{where}: id must be a string, got {type(doc_id).__name__} {doc_id!r}")
    if not doc_id.strip():
        raise CorpusError(f"{where}: empty id")
    text_key = next((k for k in _TEXT_FIELDS if k in record), None)
    if text_key is None:
        raise CorpusError(f"{where}: document {doc_id!r} has no text (expected a field 'text' or 'contents')")
    text, title = record.pop(text_key), record.pop("title", "")
    if not isinstance(text, str):
        raise CorpusError(f"{where}: text of {doc_id!r} must be a string, got {type(text).__name__}")
    if not isinstance(title, str):
        raise CorpusError(f"{where}: title of {doc_id!r} must be a string, got {type(title).__name__}")
    if not text.strip() and not title.strip():
        raise CorpusError(f"{where}: document {doc_id!r} has neither text nor title")
    metadata = record.pop("metadata", None)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise CorpusError(f"{where}: metadata of {doc_id!r} must be an object, got {type(metadata).__name__}")
    return Document(id=doc_id, text=text, title=title, metadata={**metadata, **record})


class SeenIds:
    """Remembers where each id of one file was read, to report a duplicate with both places."""

    def __init__(self, path: Path, what: str = "document id") -> None:
        self._path, self._what = path, what
        self._first: dict[str, str] = {}

    def add(self, key: str, where: str) -> None:
        """Record ``key`` as read at ``where`` (e.g. ``"line 7"``); raise CorpusError if read before."""
        if key in self._first:
            raise CorpusError(
                f"{self._path}: duplicate {self._what} {key!r} at {where} (first at {self._first[key]})"
            )
        self._first[key] = where
